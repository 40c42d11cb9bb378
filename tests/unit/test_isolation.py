# SPDX-License-Identifier: GPL-2.0-or-later
"""Tests never touch the machine's own instances: conftest.py points the pin
root, run and config directories at this session's own paths, and no test
names the real ones."""
import glob
import os

from wgbpf import cli, instance, maps

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_session_paths_are_not_the_machines():
    assert maps.PIN_ROOT == os.environ["WGBPF_PIN_ROOT"] != "/sys/fs/bpf/wgbpf"
    assert maps.PIN_ROOT.startswith("/sys/fs/bpf/")  # pins need bpffs
    assert instance.RUN_DIR == os.environ["WGBPF_RUN_DIR"] != "/run/wgbpf"
    assert cli.config.config_dir() == os.environ["WGBPF_CONFIG_DIR"] != "/etc/wgbpf"


def test_no_test_names_the_real_directories():
    real = ("/run/wgbpf/", "/sys/fs/bpf/wgbpf/", '"/run/wgbpf"', '"/sys/fs/bpf/wgbpf"')
    for path in glob.glob(os.path.join(TESTS, "**", "*.py"), recursive=True):
        if path == os.path.abspath(__file__) or "/bench/" in path:
            continue  # benchmarks run outside pytest, on the real paths
        with open(path) as f:
            text = f.read()
        for r in real:
            assert r not in text, f"{path} names {r}"

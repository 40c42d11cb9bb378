# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: wgbpf as an operator runs it from a package, one config file
for attach and the daemon, and the version it reports everywhere.

        alice ----\\                 /---- bob
                   wg-alice  wg0  wg-bob        (hub: front wg0, one member per peer)
                          \\_ hub _/
                          wg-carol ---- carol

`make deb-test` runs this module in a fresh Debian root against the
installed /usr/bin/wgbpf (WGBPF_CLI), on Debian's BCC, pyroute2 and click;
`make test` runs it on the checkout.
"""
import json
import os
import time
import tomllib

import pytest

from wgbtest import RUN_ID
from labutil import ROOT, TIME_SCALE, WGBPF, DaemonProc, lab_session, run

pytestmark = [pytest.mark.root, pytest.mark.e2e]

with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    VERSION = tomllib.load(f)["project"]["version"]


def config_text(lab):
    """The lab hub's configuration in the format of /etc/wgbpf/wg0.toml.example."""
    out = [f'front = "{lab.front}"', 'lookup = "lpm"', 'source = "strict"']
    for name, p in lab.peers.items():
        out += ["", "[[peer]]", f'name = "{name}"', f'member = "{p["member"]}"',
                f'tags = ["{p["tag4"]}", "{p["tag6"]}"]']
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_session(f"i{RUN_ID}", "ping") as lab:
        lab.route_by_tag()
        lab.config = tmp_path_factory.mktemp("etc") / f"{lab.front}.toml"
        lab.config.write_text(config_text(lab))
        yield lab


def test_version_is_pyprojects():
    r = run(*WGBPF, "--version")
    assert r.returncode == 0 and r.stdout == f"wgbpf {VERSION}\n", r.stdout + r.stderr


def test_attach_help_shows_its_options():
    r = run(*WGBPF, "attach", "--help")
    assert r.returncode == 0 and "--config" in r.stdout and "--peer" in r.stdout


def test_attach_and_daemon_from_one_config_steer_traffic(lab, tmp_path):
    lab.wgbpf("attach", lab.front, "--config", str(lab.config))
    metrics = tmp_path / "wgbpf.prom"
    d = DaemonProc(lab.hub, "daemon", lab.front, "--config", str(lab.config),
                   "--metrics-file", str(metrics))
    try:
        bob, carol = lab.peers["bob"], lab.peers["carol"]
        assert lab.ping("alice", bob["host4"], count=2)
        assert lab.ping("alice", carol["host6"], count=2)
        deadline = time.monotonic() + 5 * TIME_SCALE
        while not metrics.exists() and time.monotonic() < deadline:  # written just after the sync line
            time.sleep(0.05)
        assert f'wgbpf_build_info{{front="{lab.front}",version="{VERSION}"}} 1' in metrics.read_text()
        st = json.loads(lab.wgbpf("status", "--json").stdout)
        assert st["version"] == VERSION
        assert st["daemon"]["state"] == "running" and st["daemon"]["version"] == VERSION
    finally:
        d.stop()
    # the daemon gone, the data plane keeps steering
    assert lab.ping("alice", bob["host4"], count=2)

# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end, refused input must do no damage: a refused
reload leaves the daemon running on its old config (it used to keep the
rejected one and die at the next full resync), a tag list too long for the
tags map is refused before anything is written, and the metrics file is
written without following a link planted at its name.
"""
import glob
import json
import os
import signal
import tempfile
import time

import pytest

from wgbtest import RUN_ID
from labutil import TIME_SCALE, WGBPF, DaemonProc, lab_session, run
from wgbpf import abi
from wgbpf.instance import RUN_DIR

pytestmark = [pytest.mark.root, pytest.mark.e2e]


@pytest.fixture(scope="module")
def lab():
    with lab_session(f"i{RUN_ID}", "ping") as lab:
        lab.attach()
        yield lab
        for p in glob.glob(f"{RUN_DIR}/**/{lab.front}.*", recursive=True):
            os.unlink(p)


def tags_of(lab):
    return {p["name"]: p["tags"] for p in lab.dump()["peers"]}


def test_too_many_tags_refused_before_any_write(lab, tmp_path):
    before = tags_of(lab)
    name, p = next(iter(lab.peers.items()))
    tags = [f"10.{200 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(abi.MAX_TAGS + 810)]
    cfg = tmp_path / "many.toml"
    cfg.write_text(f'front = "{lab.front}"\n[[peer]]\nname = "{name}"\nmember = "{p["member"]}"\n'
                   f"tags = {json.dumps(tags)}\n")
    r = lab.wgbpf("attach", "--config", str(cfg), check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("wgbpf: error:") and r.stderr.count("\n") == 1, r.stderr
    assert f"peer '{name}'" in r.stderr and f"{abi.MAX_TAGS + 810} tags" in r.stderr
    assert str(abi.MAX_TAGS) in r.stderr
    assert tags_of(lab) == before  # not one tag written


def test_refused_reload_keeps_the_old_config_and_the_daemon(lab, tmp_path):
    # a link planted where the metrics go: root must not write through it
    victim = tmp_path / "victim"
    victim.write_text("not yours\n")
    metrics = tmp_path / "wgbpf.prom"
    metrics.symlink_to(victim)
    cfg = tmp_path / "wg.toml"
    cfg.write_text(f'front = "{lab.front}"\n')
    d = DaemonProc(lab.hub, "daemon", lab.front, "--config", str(cfg), *lab.peer_args(),
                   "--metrics-file", str(metrics))
    try:
        # the sync's log line comes just before its status and metrics are
        # written: wait for the file (slowly, under the vm tier's emulation)
        deadline = time.monotonic() + 5 * TIME_SCALE
        while metrics.is_symlink() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert victim.read_text() == "not yours\n"
        assert not metrics.is_symlink() and "wgbpf_prefixes" in metrics.read_text()

        # a reload naming a member that does not exist is refused ...
        cfg.write_text(f'front = "{lab.front}"\n[[peer]]\nname = "ghost"\nmember = "nodev{RUN_ID}"\n')
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("reload refused, keeping the running config")
        assert f"nodev{RUN_ID}" in d.text()

        # ... and the next full resync runs on the old config (it died with
        # a KeyError here when the refused config was kept)
        alice = lab.peers["alice"]
        r = run("ip", "-n", lab.hub, "addr", "add", "10.254.99.1", "peer", "10.254.99.2",
                "dev", alice["member"])
        assert r.returncode == 0, r.stderr
        d.wait_for("sync (overrun or tag change)")
        r = run("ip", "-n", lab.hub, "route", "add", "10.77.0.0/16", "via", alice["tag4"],
                "dev", lab.front, "onlink")
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 10 * TIME_SCALE
        while True:
            res = json.loads(lab.wgbpf("lookup", "10.77.0.1", "--json").stdout)
            if res["peers"] == ["alice"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert res["peers"] == ["alice"], res
        assert d.proc.poll() is None, d.text()
        assert "Traceback" not in d.text()
        assert lab.status()["daemon"]["state"] == "running"
    finally:
        d.stop()
        run("ip", "-n", lab.hub, "route", "del", "10.77.0.0/16")
        run("ip", "-n", lab.hub, "addr", "del", "10.254.99.1", "peer", "10.254.99.2",
            "dev", lab.peers["alice"]["member"])
    assert victim.read_text() == "not yours\n"


def test_metrics_file_in_a_missing_directory_is_refused_before_attach(lab):
    missing = os.path.join(tempfile.gettempdir(), f"wgbpf-nodir-{RUN_ID}", "m.prom")
    r = run(*WGBPF, "--netns", lab.hub, "daemon", lab.front, *lab.peer_args(), "--metrics-file", missing)
    assert r.returncode == 1 and r.stderr.startswith("wgbpf: error:"), r.stderr
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr
    st = lab.status()["daemon"]
    assert not st or st["state"] != "running"

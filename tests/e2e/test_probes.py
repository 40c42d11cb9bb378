# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: `wgbpf daemon --probe S` measures each peer's path (issue
24, part 2): ICMP echoes out of each member to the peer's tag, answered
by the spoke's kernel through WireGuard; RTT and loss in `status --json`,
the status text and the metrics; a spoke gone silent shows its loss."""
import json
import time

import pytest

from wgbtest import RUN_ID
from labutil import TIME_SCALE, DaemonProc, lab_session

pytestmark = [pytest.mark.root, pytest.mark.e2e]
# kernel_wg: none here. A probe is an ICMP echo through any WireGuard.


@pytest.fixture(scope="module")
def lab():
    with lab_session(f"j{RUN_ID}", "ping") as lab:
        yield lab


def probes(lab):
    return json.loads(lab.wgbpf("status", "--json").stdout)["daemon"].get("probes") or {}


def wait(lab, ok, what, timeout=10.0):
    deadline = time.monotonic() + timeout * TIME_SCALE
    while True:
        got = probes(lab)
        if ok(got):
            return got
        assert time.monotonic() < deadline, f"{what}: {got}"
        time.sleep(0.2)


def test_probes_show_each_peers_rtt_and_a_silent_peers_loss(lab, tmp_path):
    metrics = tmp_path / "metrics.prom"
    d = DaemonProc(lab.hub, "daemon", lab.front, *lab.peer_args(), "--probe", "0.1",
                   "--metrics-file", str(metrics))
    try:
        got = wait(lab, lambda p: len(p) == 3 and all(x["answered"] >= 5 for x in p.values()),
                   "every peer answered")
        assert all(0 < x["rtt"] < 1.0 and x["loss"] == 0.0 for x in got.values()), got
        text = lab.wgbpf("status").stdout
        assert "probes: alice rtt" in text and "loss 0%" in text, text
        time.sleep(1.2)  # the metrics file is written every second
        prom = metrics.read_text()
        assert 'wgbpf_peer_rtt_seconds{front="%s",peer="bob"}' % lab.front in prom
        assert 'wgbpf_peer_loss_ratio{front="%s",peer="bob"} 0.0' % lab.front in prom
        bob = lab.peers["bob"]
        lab.spoke("bob", "ip", "link", "set", bob["spoke_dev"], "down")  # bob's kernel answers no more
        try:
            got = wait(lab, lambda p: p["bob"]["loss"] >= 0.5, "bob's probes lost")
            assert got["alice"]["loss"] == 0.0, got
        finally:
            lab.spoke("bob", "ip", "link", "set", bob["spoke_dev"], "up")
    finally:
        d.stop()
    assert d.proc.returncode == 0

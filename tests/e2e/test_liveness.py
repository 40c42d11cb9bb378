# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: a spoke whose WireGuard dies leaves ECMP within seconds
(`wgbpf daemon --dead-after 2`, persistent-keepalive 1 s on the spokes),
and comes back when it is restarted. The scenario and its drawing:
tests/e2e/failover.py; the figures over ten kills: tests/bench/bench_failover.py.
The allowedips backend (the lab reshaped as in test_allowedips.py: the
front a WireGuard device with the spokes as peers): a dead peer's ECMP
prefix goes to its live sibling, and back.
"""
import subprocess
import tempfile
import time

import pytest

from wgbtest import RUN_ID
from labutil import TIME_SCALE, DaemonProc, lab_session, run, wg_pubkey
from failover import Failover

pytestmark = [pytest.mark.root, pytest.mark.e2e]
# kernel_wg (one test, marked): liveness reads WireGuard's own counters and
# handshake times, which kernel WireGuard and wireguard-go keep differently:
# a spoke killed under an ECMP stream, and back. The allowedips backend
# reads the same counters through the same netlink call (one device, many
# peers), and a stopped daemon reviving peers is the daemon's own: host
# tier only (each is ~45 s under emulation).

BOUND = 3.0  # seconds: every flow of the dead peer on its sibling


@pytest.fixture(scope="module")
def scenario():
    with lab_session(f"l{RUN_ID}", env={"LAB_KEEPALIVE": "1"}) as lab:
        metrics = tempfile.NamedTemporaryFile(prefix="wgbpf-liveness-", suffix=".prom")
        f = Failover(lab, daemon_args=("--metrics-file", metrics.name))
        try:
            f.metrics = metrics.name
            f.settle()
            yield f
        finally:
            f.close()


def liveness(f, peer, state, timeout=3.0):
    """The peer's liveness in `wgbpf status --json` once it says `state`
    (the daemon writes its status file every second)."""
    deadline = time.monotonic() + timeout * TIME_SCALE
    while True:
        lv = f.lab.status()["daemon"]["liveness"][peer]
        if lv["state"] == state:
            return lv
        assert time.monotonic() < deadline, f"{peer} not {state} in the status: {lv}"
        time.sleep(0.1)


@pytest.mark.kernel_wg
def test_dead_spoke_leaves_ecmp_and_comes_back(scenario):
    f = scenario
    # both alive: no flow moves
    t0 = time.monotonic()
    time.sleep(2 * TIME_SCALE)
    assert f.moves(t0) == []
    where = f.where()
    victim = max(("alice", "bob"), key=lambda p: sum(1 for s in where.values() if s == p))
    took, flows = f.kill(victim, timeout=10 * TIME_SCALE)
    assert flows, "no flow on either peer"
    assert took is not None, f"{victim}'s flows did not move to its sibling within 10 s:\n{f.daemon.text()}"
    assert took <= BOUND * TIME_SCALE, f"failover took {took:.2f}s (bound {BOUND}s)"
    lv = liveness(f, victim, "dead")
    assert "nothing received" in lv["reason"], lv
    assert f"peer {victim}: dead (nothing received for" in f.daemon.text()
    peer = next(p for p in f.lab.dump()["peers"] if p["name"] == victim)
    assert not peer["up"]
    with open(f.metrics) as fh:
        text = fh.read()
    assert f'peer="{victim}",cause="silent"}} 0' in text and "wgbpf_peer_deaths_total" in text, text
    # restarted: heard again (a second of keepalives), the flows return
    back = f.revive(victim, flows, timeout=15 * TIME_SCALE)
    assert back is not None, f"{victim}'s flows did not come back:\n{f.daemon.text()}"
    lv = liveness(f, victim, "alive")
    # in its hold-down (10 s), unless emulation (the vm tier) took longer
    assert lv["deaths"] == 1 and (lv["hold_down"] > 0 or TIME_SCALE > 1), lv
    st = f.lab.status()["daemon"]
    assert st["peer_deaths"] == 1 and st["peer_revivals"] == 1
    text = f.lab.wgbpf("status").stdout
    assert f"{victim} alive (rx" in text and ("hold-down" in text or TIME_SCALE > 1), text


def test_a_stopped_daemon_leaves_no_peer_dead(scenario):
    """Nobody would bring a dead peer back once the daemon is gone."""
    f = scenario
    # the peer not in its hold-down (the other came back in the test above)
    victim = min(("alice", "bob"), key=lambda p: liveness(f, p, "alive")["hold_down"])
    time.sleep(liveness(f, victim, "alive")["hold_down"])
    took, _ = f.kill(victim, timeout=10 * TIME_SCALE)
    assert took is not None
    liveness(f, victim, "dead")
    f.daemon.stop()
    exiting = next((line for line in f.daemon.text().splitlines() if "exiting: " in line), "")
    assert victim in exiting and "up again" in exiting, f.daemon.text()
    assert next(p for p in f.lab.dump()["peers"] if p["name"] == victim)["up"]


def test_allowedips_backend_moves_a_dead_peers_ecmp_prefix():
    with lab_session(f"w{RUN_ID}", "ping", bpf=False) as lab:
        d = ping = None
        try:
            wg = ["ip", "netns", "exec"]
            front_pub = wg_pubkey(lab.hub, lab.front)
            assert run(*wg, lab.hub, "wg", "set", lab.front, "listen-port", "51800").returncode == 0
            args = []
            for name in ("alice", "bob"):
                p = lab.peers[name]
                p["pub"] = wg_pubkey(p["ns"], p["spoke_dev"])
                run(*wg, lab.hub, "wg", "set", lab.front, "peer", p["pub"], "endpoint", f"198.18.{p['index']}.2:51900")
                r = run(*wg, p["ns"], "wg", "set", p["spoke_dev"], "peer", wg_pubkey(lab.hub, p["member"]), "remove",
                        "peer", front_pub, "allowed-ips", "0.0.0.0/0", "endpoint", f"198.18.{p['index']}.1:51800",
                        "persistent-keepalive", "1")
                assert r.returncode == 0, r.stderr
                lab.spoke(name, "ip", "addr", "add", "10.9.0.1/32", "dev", "lan0")
                args += ["--peer", f"{name}={p['pub']},{p['tag4']}"]
            lab.ip("route", "add", "10.9.0.0/16", "nexthop", "via", lab.peers["alice"]["tag4"], "dev", lab.front,
                   "onlink", "nexthop", "via", lab.peers["bob"]["tag4"], "dev", lab.front, "onlink")
            d = DaemonProc(lab.hub, "daemon", "--backend", "allowedips", lab.front, *args, "--dead-after", "2")

            def owner():
                for line in run(*wg, lab.hub, "wg", "show", lab.front, "allowed-ips").stdout.splitlines():
                    key, _, ips = line.partition("\t")
                    if "10.9.0.0/16" in ips.split():
                        return next(n for n in ("alice", "bob") if lab.peers[n]["pub"] == key)

            def wait_owner(want, timeout):
                deadline = time.monotonic() + timeout * TIME_SCALE
                while owner() != want:
                    assert time.monotonic() < deadline, f"10.9.0.0/16 not {want}'s:\n{d.text()}"
                    time.sleep(0.05)
                return time.monotonic()
            first = owner()
            assert first in ("alice", "bob"), d.text()
            other = "bob" if first == "alice" else "alice"
            ping = subprocess.Popen([*wg, lab.hub, "ping", "-i", "0.05", "10.9.0.1"], stdout=subprocess.DEVNULL)
            time.sleep(1)
            t0 = time.monotonic()
            lab.spoke(first, "ip", "link", "set", lab.peers[first]["spoke_dev"], "down")  # its WireGuard stops
            assert wait_owner(other, 10) - t0 <= BOUND * TIME_SCALE, d.text()
            assert f"peer {first}: dead (nothing received for" in d.text()
            lab.spoke(first, "ip", "link", "set", lab.peers[first]["spoke_dev"], "up")
            wait_owner(first, 10)
            assert f"peer {first}: alive" in d.text()
        finally:
            if ping is not None:
                ping.kill()
                ping.wait()
            if d is not None:
                d.stop()

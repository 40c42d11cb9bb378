"""End to end: a spoke whose WireGuard dies leaves ECMP within seconds
(`wgbpf daemon --dead-after 2`, persistent-keepalive 1 s on the spokes),
and comes back when it is restarted. The scenario and its drawing:
tests/e2e/failover.py; the figures over ten kills: tests/bench/bench_failover.py.
"""
import tempfile
import time

import pytest

from wgbtest import RUN_ID, require_bcc, require_tools
from labutil import TIME_SCALE, WG_TOOLS, Lab, run
from failover import Failover

pytestmark = [pytest.mark.root, pytest.mark.e2e]

BOUND = 3.0  # seconds: every flow of the dead peer on its sibling


@pytest.fixture(scope="module")
def scenario():
    require_bcc()
    require_tools(*WG_TOOLS)
    lab = Lab(f"l{RUN_ID}")
    lab.env["LAB_KEEPALIVE"] = "1"
    lab.down()
    f = None
    try:
        lab.up()
        metrics = tempfile.NamedTemporaryFile(prefix="wgbpf-liveness-", suffix=".prom")
        f = Failover(lab, daemon_args=("--metrics-file", metrics.name))
        f.metrics = metrics.name
        f.settle()
        yield f
    finally:
        if f is not None:
            f.close()
        else:
            run("ip", "netns", "exec", lab.hub, "true")  # nothing started
        lab.down()
        run("rm", "-rf", lab.pin_dir(), *lab.run_files())


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
    assert lv["deaths"] == 1 and lv["hold_down"] > 0, lv
    st = f.lab.status()["daemon"]
    assert st["peer_deaths"] == 1 and st["peer_revivals"] == 1
    text = f.lab.wgbpf("status").stdout
    assert f"{victim} alive (rx" in text and "hold-down" in text, text


def test_a_stopped_daemon_leaves_no_peer_dead(scenario):
    """Nobody would bring a dead peer back once the daemon is gone."""
    f = scenario
    where = f.where()
    victim = next(p for p in ("bob", "alice") if p in where.values())
    if liveness(f, victim, "alive")["hold_down"] > 0:
        time.sleep(liveness(f, victim, "alive")["hold_down"] + 0.5)
    took, _ = f.kill(victim, timeout=10 * TIME_SCALE)
    assert took is not None
    liveness(f, victim, "dead")
    f.daemon.stop()
    assert f"exiting: {victim} up again" in f.daemon.text(), f.daemon.text()
    assert next(p for p in f.lab.dump()["peers"] if p["name"] == victim)["up"]

# SPDX-License-Identifier: GPL-2.0-or-later
"""Liveness rules on fake counter samples and a fake clock."""
import math

import pytest

from wgbpf import liveness
from wgbpf.config import ConfigError, build, parse_dead_after
from wgbpf.liveness import Liveness


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Far:
    """One peer's counters as WireGuard keeps them."""

    def __init__(self, live, name="alice", wall=None):
        self.live, self.name, self.wall = live, name, wall
        self.rx = self.tx = 0
        self.handshake = 5000.0

    def sample(self, sent=0, received=0):
        self.tx += sent
        self.rx += received
        return self.live.observe(self.name, self.rx, self.tx, self.handshake)


def setup(dead_after=2.0):
    clock, wall = Clock(), Clock()
    wall.t = 5000.0
    live = Liveness(clock=clock, wall=wall)
    live.configure({"alice": dead_after, "bob": None})
    return live, clock, wall, Far(live)


def run(live, clock, far, seconds, step=0.25, keepalive=None, send=True, wall=None):
    """Sample every `step` for `seconds`; the far side answers with a
    keepalive every `keepalive` seconds (None: it is dead). Returns the
    transitions with their times."""
    out = []
    t_end = clock.t + seconds
    next_ka = clock.t + (keepalive or 0)
    while clock.t < t_end - 1e-9:
        clock.t += step
        if wall is not None:
            wall.t += step
        got = 0
        if keepalive is not None and clock.t >= next_ka:
            got, next_ka = 32, next_ka + keepalive
        ev = far.sample(sent=100 if send else 0, received=got)
        if ev:
            out.append((round(clock.t, 2), ev))
    return out


def test_interval_is_an_eighth_of_the_shortest():
    live, *_ = setup(2.0)
    assert live.interval == 0.25
    live.configure({"alice": 30.0})
    assert live.interval == 1.0
    live.configure({"alice": 1.0})
    assert live.interval == 0.125
    live.configure({})
    assert live.interval == 1.0


def test_samples_keep_to_a_grid():
    live, clock, *_ = setup(2.0)
    assert live.due() and not live.due()
    assert live.timeout() == 0.25
    clock.t += 0.3  # a slow loop: the next sample is due 0.2 s later, not 0.25
    assert live.due() and live.timeout() == pytest.approx(0.2)
    clock.t += 5  # far behind: a new grid from now
    assert live.due() and live.timeout() == 0.25


def test_live_peer_with_keepalives_never_dies():
    live, clock, _, far = setup(2.0)
    far.sample()
    assert run(live, clock, far, 600, keepalive=1.0) == []
    assert live.alive("alice")


def test_silent_while_sending_dies_within_dead_after():
    live, clock, _, far = setup(2.0)
    far.sample()
    run(live, clock, far, 10, keepalive=1.0)
    t_kill = clock.t
    got = run(live, clock, far, 5, keepalive=None)
    assert got and got[0][1] == "dead"
    assert got[0][0] - t_kill <= 2.0 + 0.25
    assert not live.alive("alice")
    st = live.status()["alice"]
    assert st["state"] == "dead" and "nothing received" in st["reason"] and st["deaths"] == 1
    assert st["cause"] == "silent"


def test_idle_and_silent_is_not_dead():
    """Nothing sent, nothing received: no evidence either way."""
    live, clock, _, far = setup(2.0)
    far.sample()
    assert run(live, clock, far, 100, send=False) == []


def test_idle_peer_gets_dead_after_from_our_first_packet():
    live, clock, _, far = setup(2.0)
    far.sample()
    run(live, clock, far, 100, send=False)
    t_send = clock.t
    got = run(live, clock, far, 5)
    assert got[0][1] == "dead" and got[0][0] - t_send >= 2.0 - 0.25


def test_comes_back_after_confirm_and_holds_down():
    live, clock, _, far = setup(2.0)
    far.sample()
    run(live, clock, far, 5, keepalive=1.0)
    assert run(live, clock, far, 5)[0][1] == "dead"
    # a restarted far side: handshake, then keepalives every second
    t_back = clock.t
    got = run(live, clock, far, 3, keepalive=1.0)
    assert got and got[0][1] == "alive"
    assert 1.0 <= got[0][0] - t_back <= 2.5  # heard twice, a second apart
    assert "received again" in live.status()["alice"]["reason"]
    # dies again at once: hold-down (5 x 2 s) keeps it up until then
    t_revived = got[0][0]
    got = run(live, clock, far, 15)
    assert got[0][1] == "dead" and got[0][0] - t_revived >= 10.0
    assert live.status()["alice"]["deaths"] == 2


def test_one_stray_packet_does_not_revive():
    live, clock, _, far = setup(2.0)
    far.sample()
    run(live, clock, far, 5)
    assert not live.alive("alice")
    clock.t += 0.25
    far.sample(received=100)
    assert run(live, clock, far, 10) == []  # silence again: still dead
    clock.t += 0.25
    assert far.sample(received=100) is None  # the clock starts again
    assert not live.alive("alice")


def test_stale_handshake_while_sending():
    """rx moves (say, the far side's handshake initiations) but no session
    could have carried data for longer than REJECT_AFTER."""
    live, clock, wall, far = setup(30.0)
    far.sample()
    far.handshake = wall.t - liveness.REJECT_AFTER + 2
    got = run(live, clock, far, 60, step=1.0, keepalive=1.0, wall=wall)
    assert got and got[0][1] == "dead"
    # stale from 2 s on; then REKEY_TIMEOUT + dead_after for a new handshake
    assert 2 + 5 + 30 - 1 <= got[0][0] - 1000.0 <= 2 + 5 + 30 + 1
    assert "no handshake" in live.status()["alice"]["reason"]
    assert live.status()["alice"]["cause"] == "handshake"


def test_counters_restart_is_a_fresh_start():
    live, clock, _, far = setup(2.0)
    far.sample()
    run(live, clock, far, 1.5)
    far.rx = far.tx = 0  # the member device was re-created
    clock.t += 0.25
    assert far.sample(sent=10) is None
    assert run(live, clock, far, 1.5) == []  # its clock restarted


def test_unwatched_peer_is_always_alive():
    live, clock, _, _ = setup(2.0)
    bob = Far(live, "bob")
    for _ in range(100):
        clock.t += 1
        assert bob.sample(sent=100) is None
    assert live.alive("bob") and "bob" not in live.status()


def test_reload_keeps_state():
    live, clock, _, far = setup(2.0)
    far.sample()
    run(live, clock, far, 5)
    live.configure({"alice": 3.0})
    assert not live.alive("alice") and live.peers["alice"].dead_after == 3.0
    live.configure({})
    assert live.alive("alice")


@pytest.mark.parametrize("bad", [-1, 0, "0", math.nan, "nan", "inf", "soon", "", True, 0.5, 1e9, None])
def test_bad_dead_after(bad):
    with pytest.raises(ConfigError, match="--dead-after: .* is not a dead-after time"):
        parse_dead_after(bad, "--dead-after")


@pytest.mark.parametrize("good,want", [(2, 2.0), ("2", 2.0), ("1.5", 1.5), (30, 30.0)])
def test_good_dead_after(good, want):
    assert parse_dead_after(good, "--dead-after") == want


def test_stale_handshake_comes_back_with_a_new_one():
    live, clock, wall, far = setup(30.0)
    far.sample()
    far.handshake = wall.t - liveness.REJECT_AFTER + 2
    run(live, clock, far, 60, step=1.0, keepalive=1.0, wall=wall)
    assert not live.alive("alice")
    assert run(live, clock, far, 30, step=1.0, keepalive=1.0, wall=wall) == []  # rx alone: no
    far.handshake = wall.t
    got = run(live, clock, far, 3, step=1.0, keepalive=1.0, wall=wall)
    assert got and got[0][1] == "alive"


def test_dead_after_in_toml(tmp_path):
    f = tmp_path / "wg0.toml"
    f.write_text('front = "wg0"\ndead_after = 15\n'
                 '[[peer]]\nname = "alice"\nmember = "wg-a"\ndead_after = 2\n'
                 '[[peer]]\nname = "bob"\nmember = "wg-b"\ndead_after = "off"\n'
                 '[[peer]]\nname = "carol"\nmember = "wg-c"\n')
    from wgbpf.config import dead_after
    cfg = build(path=str(f))
    assert {p.name: dead_after(cfg, p) for p in cfg.peers} == {"alice": 2.0, "bob": None, "carol": 15.0}
    cfg = build(path=str(f), dead_after=3.0)  # the command line wins over the file's global
    assert {p.name: dead_after(cfg, p) for p in cfg.peers} == {"alice": 2.0, "bob": None, "carol": 3.0}
    f.write_text('front = "wg0"\n[[peer]]\nname = "alice"\nmember = "wg-a"\ndead_after = -1\n')
    with pytest.raises(ConfigError, match=r"peer\[0\].dead_after: -1 is not a dead-after time"):
        build(path=str(f))


def test_idle_for_hours_then_sending_gets_a_handshake_first():
    """The last handshake is hours old (nothing sent in either direction):
    the first packets we send start a handshake, which gets its time."""
    live, clock, wall, far = setup(2.0)
    far.handshake = wall.t - 3 * 3600
    far.sample()
    clock.t += 0.25
    assert far.sample(sent=100) is None
    clock.t += 0.25
    far.handshake = wall.t  # answered: a fresh session
    assert run(live, clock, far, 60, keepalive=1.0, wall=wall) == []


def test_expired_session_renewed_at_once_is_no_death():
    """A responder that only sends handshakes when its session expires
    (180 s): the handshake age passes REJECT_AFTER for a moment."""
    live, clock, wall, far = setup(2.0)
    far.sample()
    far.handshake = wall.t - liveness.REJECT_AFTER + 1
    got = run(live, clock, far, 1.5, keepalive=0.1, wall=wall)
    far.handshake = wall.t
    got += run(live, clock, far, 30, keepalive=0.1, wall=wall)
    assert got == []


def test_never_a_handshake_while_sending():
    live, clock, wall, far = setup(2.0)
    far.handshake = 0
    far.sample()
    got = run(live, clock, far, 10, keepalive=0.5, wall=wall)  # rx moves: initiations, say
    assert got and got[0][1] == "dead" and 7.0 <= got[0][0] - 1000.0 <= 7.5
    assert "no handshake in" in live.status()["alice"]["reason"]


@pytest.mark.parametrize("bad", ["-1", "0", "nan", "soon"])
def test_daemon_refuses_bad_dead_after_in_one_line(bad):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "wgbpf.cli", "daemon", "wg0", "--peer", "a=wg-a",
                        "--dead-after", bad], capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (f"wgbpf: error: --dead-after: {bad!r} is not a dead-after time: give seconds "
                        f"from 1 (WireGuard's shortest keepalive) to 86400\n")


def test_counters_from_generic_netlink_and_uapi():
    """Kernel WireGuard's dump (a peer split over two messages repeats
    only its key) and wireguard-go's `get=1` give the same numbers."""
    import struct
    from wgbpf import wireguard as wg
    key = bytes(range(32))
    peer = wg._nest(0, [wg._attr(wg.WGPEER_A_PUBLIC_KEY, key),
                        wg._attr(wg.WGPEER_A_LAST_HANDSHAKE_TIME, struct.pack("=qq", 1700000000, 500000000)),
                        wg._attr(wg.WGPEER_A_RX_BYTES, struct.pack("=Q", 1234)),
                        wg._attr(wg.WGPEER_A_TX_BYTES, struct.pack("=Q", 5678))])
    more = wg._nest(0, [wg._attr(wg.WGPEER_A_PUBLIC_KEY, key)])
    out = {}
    for msg in (wg._nest(wg.WGDEVICE_A_PEERS, [peer]), wg._nest(wg.WGDEVICE_A_PEERS, [more])):
        wg.parse_counters(msg, 0, len(msg), out)
    assert out == {key: [1234, 5678, 1700000000.5]}
    lines = ["private_key=00", f"public_key={key.hex()}", "rx_bytes=1234", "tx_bytes=5678",
             "last_handshake_time_sec=1700000000", "last_handshake_time_nsec=500000000", "errno=0"]
    assert wg.parse_uapi_counters(lines) == out


def test_dead_after_per_peer_on_the_command_line():
    from wgbpf.config import dead_after
    cfg = build("wg0", ["alice=wg-a,10.255.0.1,dead_after=2", "bob=wg-b,dead_after=off", "carol=wg-c"],
                dead_after=15.0)
    assert {p.name: dead_after(cfg, p) for p in cfg.peers} == {"alice": 2.0, "bob": None, "carol": 15.0}
    with pytest.raises(ConfigError, match="dead_after=0': '0' is not a dead-after time"):
        build("wg0", ["alice=wg-a,dead_after=0"])


def test_allowedips_plan_gives_a_dead_peers_ecmp_share_to_the_live_ones():
    from wgbpf.allowedips import Plan
    from wgbpf.config import PeerConfig
    a, b = b"a" * 32, b"b" * 32
    plan = Plan([PeerConfig("alice", public_key=a), PeerConfig("bob", public_key=b)], {a, b})

    class Table:
        def best(self, k):
            return [0, 1] if k[1] == 24 else [0]  # the /24s are ECMP, the rest alice's

        def best_weights(self, k):
            return (1, 3) if k[2:4] == bytes((10, 0)) else None  # 10.0.0.0/24 weighs bob
    ecmp = [bytes((2, 24, 10, i, 0, 0)) for i in range(32)]
    before = {k: plan.owner(Table(), k) for k in ecmp}
    # the heaviest, then (no tags here: equal) the first: bob's 1:3 prefix, alice the rest
    assert before == {k: b if k == ecmp[0] else a for k in ecmp}
    plan.dead = {a}
    after = {k: plan.owner(Table(), k) for k in ecmp}
    assert set(after.values()) == {b}  # bob's own stay his; alice's move to him
    assert plan.owner(Table(), bytes((2, 16, 10, 0, 0, 0))) == a  # routed to her alone: kept
    plan.dead = {a, b}
    assert {k: plan.owner(Table(), k) for k in ecmp} == before  # nobody alive: as if all were

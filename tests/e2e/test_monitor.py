# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: `wgbpf top` and `wgbpf monitor` on the demo lab, as a user
sees them, for traffic this test sends.

        alice ----\\                 /---- bob
                   wg-alice  wg0  wg-bob        (hub: front wg0, lpm)
                          \\_ hub _/
                          wg-carol ---- carol

- top --once --json: alice pings bob (100/s, 1000-byte payload) while
  alice also sends packets with a forged source (bob's prefix) to carol:
  alice and bob show up to 100 packets/s each way (as many as replies)
  at ~8.2 kbit per packet,
  carol ~0 and sorted last; alice's spoofed rate and the spoofed drops
  move.
- top live, under tmux: the table on the screen, `q` quits.
- monitor --json: each forged packet as one event (device wg-alice, peer
  alice, reason spoofed, the forged source and carol's address, udp and
  its ports); off again once the listener exits, by signal or SIGKILL
  (the lease runs out).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from wgbtest import RUN_ID, require

from labutil import TIME_SCALE, WGBPF, lab_session

pytestmark = [pytest.mark.root, pytest.mark.e2e]

FORGED4, FORGED6 = "10.2.0.77", "fd00:2::77"   # bob's prefixes, sent by alice

# Sends UDP from forged sources (argv[5:]) to argv[1] (v4) / argv[2] (v6),
# argv[3] rounds a second, argv[4] rounds of one packet per source, through
# raw sockets: the kernel routes by the destination, the source stays forged.
SENDER = textwrap.dedent("""
    import ipaddress, socket, struct, sys, time
    dst4, dst6, rate, rounds = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    pkts = []
    for src in sys.argv[5:]:
        a = ipaddress.ip_address(src)
        udp = struct.pack("!HHHH", 40000, 9, 8 + 5, 0) + b"forge"
        if a.version == 4:
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, a.packed,
                             ipaddress.ip_address(dst4).packed)
            pkts.append((socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW), ip + udp, (dst4, 0)))
        else:
            ip = struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, a.packed, ipaddress.ip_address(dst6).packed)
            pkts.append((socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW), ip + udp, (dst6, 0)))
    for i in range(rounds):
        for s, p, to in pkts:
            s.sendto(p, to)
        time.sleep(1 / rate)
""")


@pytest.fixture(scope="module")
def lab():
    with lab_session(f"m{RUN_ID}", "ping") as lab:
        lab.attach()
        lab.route_every_peer()
        yield lab


def forge(lab, rate, rounds, sources=(FORGED4,)):
    """alice sends forged packets to carol, in the background: `rounds`
    times one from each source, `rate` rounds a second."""
    carol = lab.peers["carol"]
    return subprocess.Popen(["ip", "netns", "exec", lab.peers["alice"]["ns"], sys.executable, "-c", SENDER,
                             carol["host4"], carol["host6"], str(rate), str(rounds), *sources])


def ping_flood(lab, secs):
    """alice pings bob 100 times a second, 1000-byte payloads (1028-byte packets)."""
    return subprocess.Popen(["ip", "netns", "exec", lab.peers["alice"]["ns"], "ping", "-q", "-i", "0.01",
                             "-s", "1000", "-w", str(secs), lab.peers["bob"]["host4"]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_top_once_json_shows_rates_and_spoofed_drops(lab):
    assert lab.ping("alice", lab.peers["bob"]["host4"], count=1)  # handshakes done before we measure
    # the traffic outlasts top's start (seconds of imports under emulation)
    # and its 2 s sample; stopped once top has printed
    secs = round(4 + 8 * TIME_SCALE)
    ping, forged = ping_flood(lab, secs), forge(lab, 50, 50 * secs)
    try:
        time.sleep(1)
        r = lab.wgbpf("top", "--front", lab.front, "--once", "--json", "--interval", "2")
    finally:
        for p in (forged, ping):
            p.terminate()
            p.wait(10)
    s = json.loads(r.stdout)
    peers = {p["name"]: p for p in s["peers"]}
    assert [p["name"] for p in s["peers"]][-1] == "carol", "sorted by rate: carol is idle"
    for name in ("alice", "bob"):
        p = peers[name]
        # ping's 100/s is a ceiling: a busy machine sends fewer
        assert 20 / TIME_SCALE <= p["tx_pps"] <= 140 and 20 / TIME_SCALE <= p["rx_pps"] <= 140, (name, p)
        # each request steered to bob is answered by one steered to alice
        assert abs(p["tx_pps"] - p["rx_pps"]) <= 0.2 * p["tx_pps"] + 2, (name, p)
        assert 1020 * 8 <= p["tx_bps"] / p["tx_pps"] <= 1100 * 8, (name, p)  # 1028-byte packets
        assert p["state"] == "up" and p["liveness"] is None and p["prefixes"] == 2
    assert peers["carol"]["tx_pps"] < 5 and peers["carol"]["rx_pps"] < 5
    # 50 a second at most (a busy machine sends fewer), all of them alice's
    assert 20 / TIME_SCALE <= peers["alice"]["spoofed_ps"] <= 55, peers["alice"]
    assert abs(s["drops"]["spoofed"]["per_second"] - peers["alice"]["spoofed_ps"]) <= 1  # read a moment apart
    assert s["drops"]["spoofed"]["total"] >= 2 * 20 / TIME_SCALE
    assert s["front"] == lab.front and 1.9 <= s["interval"] <= 3 * TIME_SCALE


def test_top_once_text_and_bad_input(lab):
    r = lab.wgbpf("top", "--front", lab.front, "--once", "--interval", "0.2")
    assert "PEER" in r.stdout and "carol" in r.stdout and "drops/s:" in r.stdout
    r = lab.wgbpf("top", "--front", lab.front, "--json", check=False)
    assert r.returncode != 0 and r.stderr.strip().startswith("wgbpf: error: --json prints one sample")
    r = lab.wgbpf("top", "--front", "nosuchfront", "--once", check=False)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "nosuchfront" in r.stderr


def test_top_live_under_tmux_and_q_quits(lab):
    require(shutil.which("tmux") is not None, "needs tmux (scripts/setup.sh installs it)")
    session = f"wgbpf-top-{RUN_ID}"
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}
    cmd = " ".join([*WGBPF, "--netns", lab.hub, "top", "--front", lab.front, "--interval", "0.5"])
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "30", cmd],
                   check=True, env=env)
    ping = ping_flood(lab, 4)
    try:
        screen = ""
        deadline = time.monotonic() + 15 * TIME_SCALE
        while time.monotonic() < deadline:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True, env=env).stdout
            rows = [line.split() for line in screen.splitlines()]
            names = [r[0] for r in rows if r and r[0] in lab.peers]
            if len(names) == 3 and names[-1] == "carol" and "q quits" in screen:
                break
            time.sleep(0.3)
        assert "PEER" in screen and "TX_PPS" in screen, screen
        assert names[-1] == "carol" and set(names) == set(lab.peers), screen
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True, env=env)
        deadline = time.monotonic() + 5 * TIME_SCALE
        while subprocess.run(["tmux", "has-session", "-t", session], capture_output=True,
                             env=env).returncode == 0:
            assert time.monotonic() < deadline, "top did not quit on q"
            time.sleep(0.1)
    finally:
        ping.wait(10)
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, env=env)


class Monitor:
    """`wgbpf monitor --json` in the background; started means listening."""

    def __init__(self, lab, *args):
        self.proc = subprocess.Popen([*WGBPF, "--netns", lab.hub, "monitor", "--front", lab.front, "--json",
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        assert "watching" in line, line + self.proc.stderr.read()

    def stop(self, sig=signal.SIGINT):
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=10 * TIME_SCALE)
        return self.proc.returncode, [json.loads(x) for x in out.splitlines()], err


def test_monitor_json_names_each_forged_packet(lab):
    mon = Monitor(lab)
    try:
        assert lab.status()["monitor"]["mode"] == "drops"
        f = forge(lab, 20, 5, (FORGED4, FORGED6))
        f.wait(10 * TIME_SCALE)
        assert lab.ping("alice", lab.peers["bob"]["host4"], count=2)  # passed: not shown
        time.sleep(0.5 * TIME_SCALE)
    finally:
        rc, events, err = mon.stop()
    assert rc == 0, err
    carol = lab.peers["carol"]
    forged = [e for e in events if e["src"] in (FORGED4, FORGED6)]
    assert len(forged) == 10, events  # 5 rounds x 2 sources: far below the rate limit
    for e in forged:
        assert {k: e[k] for k in ("device", "hook", "peer", "reason", "dropped", "proto", "sport", "dport")} == {
            "device": lab.peers["alice"]["member"], "hook": "member_ingress", "peer": "alice", "reason": "spoofed",
            "dropped": True, "proto": "udp", "sport": 40000, "dport": 9}, e
        assert e["dst"] == (carol["host4"] if e["src"] == FORGED4 else carol["host6"])
        assert abs(e["time"] - time.time()) < 60
    assert {e["src"] for e in forged} == {FORGED4, FORGED6}
    assert all(e["dropped"] for e in events), "without --all only drops are shown"
    assert lab.status()["monitor"] is None, "the listener turned the events off on exit"


def test_monitor_all_shows_steered_packets(lab):
    mon = Monitor(lab, "--all", "--count", "4")
    try:
        assert lab.ping("alice", lab.peers["bob"]["host4"], count=2)
        mon.proc.wait(10 * TIME_SCALE)
    finally:
        rc, events, err = mon.stop()
    assert rc == 0, err
    assert len(events) == 4
    steered = [e for e in events if e["reason"] == "steered"]
    assert steered and all(e["device"] == lab.front and not e["dropped"] for e in steered)
    assert {e["peer"] for e in steered} <= {"alice", "bob"}


def test_monitor_killed_stops_by_its_lease(lab):
    from wgbpf.maps import Maps
    from wgbpf.monitor import watched

    def lease():  # read here, at once: a `wgbpf status` may take longer than the lease under emulation
        with Maps.open(lab.pin_dir(), readonly=True) as m:
            return watched(m)
    mon = Monitor(lab)
    mon.proc.kill()
    mon.proc.wait()
    assert lease() is not None  # nobody cleared it ...
    deadline = time.monotonic() + 6 * TIME_SCALE
    while lease() is not None:  # ... but the lease runs out
        assert time.monotonic() < deadline, "a SIGKILLed listener's lease never ran out"
        time.sleep(0.5)
    # and a new listener may start at once
    rc, _, err = Monitor(lab).stop(signal.SIGTERM)
    assert rc == 0, err


def test_monitor_bad_input(lab):
    r = lab.wgbpf("monitor", "--front", "nosuchfront", check=False)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("wgbpf: error: no wgbpf instance 'nosuchfront'")
    mon = Monitor(lab)
    try:
        r = lab.wgbpf("monitor", "--front", lab.front, check=False)
        assert r.returncode != 0 and "already watched" in r.stderr and "Traceback" not in r.stderr
    finally:
        mon.stop()

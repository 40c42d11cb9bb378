# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: `wgbpf daemon` follows the hub's routing table.

        alice ----\\                 /---- bob     (10.99.0.1 on bob and carol:
                   wg-alice  wg0  wg-bob          an anycast prefix for ECMP)
                          \\_ hub _/
                          wg-carol ---- carol

Routes in the hub name peers by their tags (`via 10.255.0.2`, `via inet6
fe80::2`): the daemon turns them into map entries, and traffic follows.
"""
import json
import os
import re
import signal
import subprocess
import tempfile
import time

import pytest

from wgbtest import RUN_ID
from labutil import LOOKUPS, TIME_SCALE, WGBPF, DaemonProc, kernel_view, lab_session, map_peers

pytestmark = [pytest.mark.root, pytest.mark.e2e]
# kernel_wg: none here. The daemon follows netlink, whatever the device;
# ECMP over kernel members is test_liveness's (a spoke killed under an
# ECMP stream), and a member's link events are any netdevice's.


def Daemon(lab, *extra):
    """`wgbpf daemon` for the lab's front in the lab's lookup mode."""
    return DaemonProc(lab.hub, "daemon", lab.front, *lab.peer_args(), "--lookup", lab.lookup, *extra)


@pytest.fixture(scope="module", params=[m for m in LOOKUPS if m != "fib"])
def lab(request):
    """LPM mode, and DIR-24-8, where the daemon also patches the IPv4
    arrays (traffic checks them; map checks read routes4, their source)."""
    with lab_session(f"d{RUN_ID}", "ping", lookup=request.param) as lab:
        lab.drop_front_routes()
        yield lab


@pytest.fixture
def daemon(lab):
    d = Daemon(lab)
    yield d
    d.stop()



def via(lab, peer, family=4):
    p = lab.peers[peer]
    if family == 4:
        return ["via", p["tag4"], "dev", lab.front, "onlink"]
    return ["via", p["tag6"], "dev", lab.front]


def wait_map(lab, prefix, want, timeout=1.0):
    """Seconds until the map holds `want` for prefix; fails after timeout."""
    timeout *= TIME_SCALE
    t0 = time.monotonic()
    while True:
        got = map_peers(lab, prefix)
        if got == want:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"{prefix}: map has {got}, want {want} after {timeout}s"
        time.sleep(0.005)


def test_routes_by_tag_steer_live_traffic_within_a_second(lab, daemon):
    alice, bob, carol = (lab.peers[n] for n in ("alice", "bob", "carol"))
    lab.ip("route", "add", alice["prefix4"], *via(lab, "alice"))
    # IPv4 via an IPv6 link-local nexthop (RFC 5549), as babeld and BIRD write it
    lab.ip("route", "add", bob["prefix4"], "via", "inet6", bob["tag6"], "dev", lab.front)
    lab.ip("-6", "route", "add", carol["prefix6"], *via(lab, "carol", 6))
    lab.ip("-6", "route", "add", alice["prefix6"], *via(lab, "alice", 6))
    for prefix, peer in ((alice["prefix4"], "alice"), (bob["prefix4"], "bob"), (carol["prefix6"], "carol")):
        assert wait_map(lab, prefix, [peer]) < 1.0 * TIME_SCALE
    assert lab.ping("alice", bob["host4"], count=2)
    assert lab.ping("alice", carol["host6"], count=2)


def test_replace_and_delete_follow_the_kernel(lab, daemon):
    prefix = "10.77.0.0/16"
    lab.ip("route", "add", prefix, *via(lab, "alice"))
    wait_map(lab, prefix, ["alice"])
    lab.ip("route", "replace", prefix, *via(lab, "carol"))
    wait_map(lab, prefix, ["carol"])
    # a multipath route names every peer among its nexthops
    lab.ip("route", "replace", prefix, "nexthop", *via(lab, "alice"), "nexthop", *via(lab, "bob"))
    wait_map(lab, prefix, ["alice", "bob"])
    lab.ip("route", "del", prefix)
    wait_map(lab, prefix, None)
    # a route that names no peer is ignored
    lab.ip("route", "add", prefix, "dev", lab.front)
    time.sleep(0.3 * TIME_SCALE)
    assert map_peers(lab, prefix) is None
    lab.ip("route", "del", prefix)


def test_member_down_moves_traffic_to_the_ecmp_sibling(lab, daemon):
    anycast = "10.99.0.1"
    # alice's way back, whatever ran before (the test may run alone)
    lab.ip("route", "replace", lab.peers["alice"]["prefix4"], *via(lab, "alice"))
    wait_map(lab, lab.peers["alice"]["prefix4"], ["alice"])
    for peer in ("bob", "carol"):
        lab.spoke(peer, "ip", "addr", "add", f"{anycast}/32", "dev", "lan0")
        lab.spoke(peer, "ip", "route", "add", "10.0.0.0/8", "dev", lab.peers[peer]["spoke_dev"],
                  "src", lab.peers[peer]["host4"])
    lab.ip("route", "add", "10.99.0.0/24", "nexthop", *via(lab, "bob"), "nexthop", *via(lab, "carol"))
    wait_map(lab, "10.99.0.0/24", ["bob", "carol"])
    assert lab.ping("alice", anycast, count=3)
    tx = {n: lab.peer(n)["tx_packets"] for n in ("bob", "carol")}
    assert lab.ping("alice", anycast, count=5)
    moved = {n: lab.peer(n)["tx_packets"] - tx[n] for n in tx}
    active = max(moved, key=moved.get)
    other = "carol" if active == "bob" else "bob"
    lab.ip("link", "set", lab.peers[active]["member"], "down")
    try:
        deadline = time.monotonic() + 2 * TIME_SCALE
        while lab.peer(active)["up"]:
            assert time.monotonic() < deadline, "daemon did not mark the member down"
            time.sleep(0.05)
        before = lab.peer(other)["tx_packets"]
        assert lab.ping("alice", anycast, count=3)
        assert lab.peer(other)["tx_packets"] - before >= 3
    finally:
        lab.ip("link", "set", lab.peers[active]["member"], "up")
    deadline = time.monotonic() + 2 * TIME_SCALE
    while not lab.peer(active)["up"]:
        assert time.monotonic() < deadline, "daemon did not mark the member up again"
        time.sleep(0.05)


# 200 UDP flows, one datagram each from its own source port
FLOWS = """import socket, sys
for port in range(40000, 40200):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", port))
    s.sendto(b"x", (sys.argv[1], 9))
    s.close()
"""


def flows_to(lab, dst):
    """{peer: datagrams of 200 flows from alice to dst that the hub steered to it}."""
    tx = {n: lab.peer(n)["tx_packets"] for n in ("bob", "carol")}
    r = lab.spoke("alice", "python3", "-c", FLOWS, dst)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 5 * TIME_SCALE
    while True:
        got = {n: lab.peer(n)["tx_packets"] - tx[n] for n in tx}
        if sum(got.values()) >= 200 or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_weights_split_flows_and_a_replaced_group_reverses_them(lab, daemon):
    """Issue 31: `nexthop via bob weight 3 nexthop via carol weight 1` puts
    about 3/4 of 200 flows on bob; the same through a weighted group (a
    nexthop object); `ip nexthop replace` of the group to 1:3 reverses it,
    with no route rewritten."""
    anycast, prefix = "10.98.0.1", "10.98.0.0/24"
    lab.ip("route", "replace", lab.peers["alice"]["prefix4"], *via(lab, "alice"))
    for peer in ("bob", "carol"):
        lab.spoke(peer, "ip", "addr", "add", f"{anycast}/32", "dev", "lan0")
    ids = {"bob": 9801, "carol": 9802, "group": 9810}
    try:
        lab.ip("route", "add", prefix, "nexthop", *via(lab, "bob"), "weight", "3",
               "nexthop", *via(lab, "carol"), "weight", "1")
        wait_map(lab, prefix, ["bob", "carol"])
        got = flows_to(lab, anycast)
        assert sum(got.values()) == 200 and 130 <= got["bob"] <= 170, got
        for peer in ("bob", "carol"):
            lab.ip("nexthop", "add", "id", str(ids[peer]), *via(lab, peer))
        lab.ip("nexthop", "add", "id", str(ids["group"]), "group", f"{ids['bob']},3/{ids['carol']},1")
        lab.ip("route", "replace", prefix, "nhid", str(ids["group"]))
        time.sleep(0.3 * TIME_SCALE)
        got = flows_to(lab, anycast)
        assert sum(got.values()) == 200 and 130 <= got["bob"] <= 170, got
        writes = lab.status()["daemon"]["map_writes"]
        lab.ip("nexthop", "replace", "id", str(ids["group"]), "group", f"{ids['bob']},1/{ids['carol']},3")
        time.sleep(0.3 * TIME_SCALE)
        got = flows_to(lab, anycast)
        assert sum(got.values()) == 200 and 130 <= got["carol"] <= 170, got
        assert lab.status()["daemon"]["map_writes"] == writes  # the group's set rewritten, not the route
        lookup = lab.wgbpf("lookup", anycast).stdout
        assert "bob 1, carol 3" in lookup, lookup
    finally:
        lab.ip("route", "del", prefix, check=False)
        for nhid in (ids["group"], ids["bob"], ids["carol"]):
            lab.ip("nexthop", "del", "id", str(nhid), check=False)
        for peer in ("bob", "carol"):
            lab.spoke(peer, "ip", "addr", "del", f"{anycast}/32", "dev", "lan0")


def test_overrun_ends_in_a_resync_with_maps_equal_to_the_kernel(lab):
    d = Daemon(lab, "--rcvbuf", "4096")  # a tiny socket buffer: a burst overruns it
    try:
        # stopped while the burst arrives, so the overrun does not depend on
        # who is faster on a busy machine
        d.proc.send_signal(signal.SIGSTOP)
        try:
            with tempfile.NamedTemporaryFile("w", suffix=".batch") as f:
                peers = list(lab.peers)
                for i in range(3000):
                    f.write(f"route add 10.{200 + i // 250}.{i % 250}.0/24 {' '.join(via(lab, peers[i % 3]))}\n")
                f.flush()
                lab.ip("-batch", f.name)
        finally:
            d.proc.send_signal(signal.SIGCONT)
        d.wait_for("overrun", timeout=30)
        deadline = time.monotonic() + 30 * TIME_SCALE
        while True:
            want, have = kernel_view(lab)
            if want == have:
                break
            assert time.monotonic() < deadline, f"maps != kernel: {len(want)} vs {len(have)}"
            time.sleep(0.2)
        assert len(want) >= 3000
        # the maps may equal the kernel before the resync has written its
        # status (in dir24 mode it compiles the arrays first)
        while True:
            st = json.loads(lab.wgbpf("status", "--json").stdout)["daemon"]
            if st["overruns"] >= 1 and st["resyncs"] >= 2:
                break
            assert time.monotonic() < deadline, (st, d.text())
            time.sleep(0.2)
    finally:
        d.stop()
        lab.ip("route", "flush", "10.200.0.0/13", check=False)
        lab.ip("route", "flush", "10.208.0.0/16", check=False)


def test_kill9_and_restart_lose_no_packet_and_write_nothing(lab):
    bob = lab.peers["bob"]
    lab.ip("route", "replace", bob["prefix4"], *via(lab, "bob"))
    lab.ip("route", "replace", lab.peers["alice"]["prefix4"], *via(lab, "alice"))
    d = Daemon(lab)
    wait_map(lab, bob["prefix4"], ["bob"])
    started = []

    def kill_and_restart():
        d.proc.kill()  # SIGKILL: no cleanup at all
        d.proc.wait()
        started.append(Daemon(lab))
    try:
        last, lost, _ = lab.ping_during("alice", bob["host4"], kill_and_restart, interval="0.03")
        assert last >= 20 and lost == [], f"no reply to icmp_seq {lost} of {last}"
        assert " 0 map writes" in started[0].text(), started[0].text()
    finally:
        for d2 in started:
            d2.stop()


def test_a_restart_writes_what_changed_while_it_was_down(lab):
    """Bob's prefix steered to carol, the daemon stopped, the route fixed:
    the restart writes the difference and traffic reaches bob (in dir24
    mode through the arrays: compiled by a child while the dump is parsed,
    the difference patched in; tests/bpf/test_maps.py checks patches over a compile)."""
    bob = lab.peers["bob"]
    lab.ip("route", "replace", bob["prefix4"], *via(lab, "carol"))
    lab.ip("route", "replace", lab.peers["alice"]["prefix4"], *via(lab, "alice"))
    d = Daemon(lab)
    try:
        wait_map(lab, bob["prefix4"], ["carol"])
        assert not lab.ping("alice", bob["host4"], count=1)  # carol does not own bob's host
    finally:
        d.stop()
    lab.ip("route", "replace", bob["prefix4"], *via(lab, "bob"))
    d = Daemon(lab)
    try:
        assert map_peers(lab, bob["prefix4"]) == ["bob"]  # written before the sync line
        assert re.search(r" [1-9]\d* map writes \([1-9]\d* put", d.text()), d.text()
        assert lab.ping("alice", bob["host4"], count=2), d.text()
    finally:
        d.stop()


def test_second_daemon_bad_table_bad_config_refused_data_plane_untouched(lab, daemon):
    before = lab.dump()["routes"]
    r = lab.wgbpf("daemon", lab.front, *lab.peer_args(), check=False)
    assert r.returncode != 0 and "already running" in r.stderr
    r = lab.wgbpf("daemon", lab.front, *lab.peer_args(), "--table", "nosuchtable", check=False)
    assert r.returncode != 0 and "nosuchtable" in r.stderr
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write('front = "x"\n[[peer]]\nname = "alice"\nmember = "m"\ntags = ["not-an-ip"]\n')
        f.flush()
        r = lab.wgbpf("daemon", "--config", f.name, check=False)
    assert r.returncode != 0 and "not-an-ip" in r.stderr
    # another run dir, the same pins: the daemon lock is the run dir's, the pins' lock is not
    with tempfile.TemporaryDirectory(prefix="wgbpf-run-") as other:
        r = subprocess.run([*WGBPF, "--netns", lab.hub, "daemon", lab.front, *lab.peer_args()],
                           env=dict(os.environ, WGBPF_RUN_DIR=other), capture_output=True, text=True,
                           timeout=60 * TIME_SCALE)
    assert r.returncode != 0 and "another wgbpf daemon follows" in r.stderr, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert lab.dump()["routes"] == before
    st = lab.status()["daemon"]
    assert st["state"] == "running" and st["pid"] == daemon.proc.pid


def test_status_reports_the_daemon(lab, daemon):
    lab.ip("route", "replace", "10.88.0.0/16", *via(lab, "carol"))
    wait_map(lab, "10.88.0.0/16", ["carol"])
    time.sleep(1.2 * TIME_SCALE)  # the status file is rewritten every second
    st = lab.status()["daemon"]
    assert st["state"] == "running"
    assert st["routes_per_peer"].get("carol", 0) >= 1
    assert st["events"] >= 1 and st["last_sync"] is not None
    assert 0 <= st["lag_ms_p50"] <= st["lag_ms_p99"] <= st["lag_ms_max"]
    human = lab.wgbpf("status").stdout
    assert "daemon: running" in human and "event lag p50/p99/max" in human
    lab.ip("route", "del", "10.88.0.0/16")
    daemon.stop()
    st = lab.status()["daemon"]
    assert st["state"] in ("stopped", "not running")
    assert os.path.exists(lab.pin_dir())  # the data plane stays


def test_the_daemon_never_loads_bcc(lab, daemon):
    """The attach (BCC's compile, LLVM) runs in a child process: what stays
    in the daemon is its table, not a compiler."""
    lab.ip("route", "replace", "10.87.0.0/16", *via(lab, "bob"))
    wait_map(lab, "10.87.0.0/16", ["bob"])
    with open(f"/proc/{daemon.proc.pid}/maps") as f:
        mapped = f.read()
    assert "libbcc" not in mapped and "libLLVM" not in mapped and "libclang" not in mapped
    with open(f"/proc/{daemon.proc.pid}/status") as f:
        # the heap: not the DIR-24-8 arrays, which are the maps' memory mapped
        rss = next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
    assert rss < 100 * 1024, f"RssAnon {rss} KiB"  # BCC and LLVM alone were ~170 MiB
    lab.ip("route", "del", "10.87.0.0/16")

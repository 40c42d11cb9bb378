# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: routes as the kernel really keeps them.

    alice, bob, carol --- WireGuard --- hub (front + members, the daemon)
    hub: ip nexthop add id N via <tag> dev <front> onlink
         ip route add P nhid N          (FRR's zebra installs routes so)

- In both nexthop_compat_modes (1: route messages carry the expanded hops
  too; 0: the id alone), routes through objects and groups steer traffic,
  and a replaced object moves every route that uses it.
- What the kernel removes without a word is removed from the maps within
  2 s, and a source whose route went is dropped: an object deleted (its
  routes, and a group it empties), `ip nexthop flush`, the front set down
  and up (the IPv4 routes through it flushed).
"""
import json
import os
import subprocess
import time

import pytest

from wgbtest import RUN_ID
from labutil import TIME_SCALE, DaemonProc, forged, kernel_peer, lab_session, map_peers, maps_peers, run

pytestmark = [pytest.mark.root, pytest.mark.e2e]


@pytest.fixture(scope="module")
def lab():
    with lab_session(f"n{RUN_ID}", "ping") as lab:
        lab.drop_front_routes()
        yield lab


# the feasible-path source check's table: the daemon copies it into the
# accept maps (empty but in the accept test, so the others' source checks
# are strict ones)
ACCEPT = "250"


@pytest.fixture(scope="module")
def running(lab):
    """One daemon for the module (a start is dear under emulation, in the
    vm tier): the compat mode changes under it, as an operator may."""
    d = DaemonProc(lab.hub, "daemon", lab.front, *lab.peer_args(), "--source", "feasible",
                   "--accept-table", ACCEPT)
    yield d
    d.stop()


@pytest.fixture(params=[1, 0], ids=["compat1", "compat0"])
def daemon(lab, running, request):
    lab.ip("nexthop", "flush", check=False)
    # per namespace: the hub's own routes carry the expanded hops, or not
    r = run("ip", "netns", "exec", lab.hub, "sysctl", "-qw", f"net.ipv4.nexthop_compat_mode={request.param}")
    assert r.returncode == 0, r.stderr
    assert running.proc.poll() is None, running.text()
    yield running
    lab.ip("nexthop", "flush", check=False)


def nexthop(lab, nhid, peer):
    lab.ip("nexthop", "replace", "id", str(nhid), "via", lab.peers[peer]["tag4"], "dev", lab.front, "onlink")


def wait_map(lab, daemon, prefix, want, timeout=2.0, trie="routes"):
    deadline = time.monotonic() + timeout * TIME_SCALE
    while (got := map_peers(lab, prefix, trie)) != want:
        assert time.monotonic() < deadline, f"{prefix}: maps hold {got}, want {want}:\n{daemon.text()}"
        time.sleep(0.01)


def objects_and_group(lab):
    """alice's and bob's prefixes through objects 101 and 102, and
    10.94.0.0/16 through group 110 of both, as zebra installs them."""
    nexthop(lab, 101, "alice")
    nexthop(lab, 102, "bob")
    lab.ip("route", "replace", lab.peers["alice"]["prefix4"], "nhid", "101")
    lab.ip("route", "replace", lab.peers["bob"]["prefix4"], "nhid", "102")
    lab.ip("nexthop", "replace", "id", "110", "group", "101/102")
    lab.ip("route", "replace", "10.94.0.0/16", "nhid", "110")


def spoofed(lab):
    return lab.status()["counters"]["spoofed"]


def test_routes_through_objects_and_groups_steer_and_follow_them(lab, daemon):
    alice, bob = lab.peers["alice"], lab.peers["bob"]
    objects_and_group(lab)
    wait_map(lab, daemon, alice["prefix4"], ["alice"])
    wait_map(lab, daemon, bob["prefix4"], ["bob"])
    wait_map(lab, daemon, "10.94.0.0/16", ["alice", "bob"])
    assert lab.ping("alice", bob["host4"]), "alice -> bob through nexthop objects"
    r = json.loads(lab.wgbpf("lookup", "10.94.0.1", "--json").stdout)
    assert sorted(r["peers"]) == ["alice", "bob"], r
    # one object replaced: every route through it, directly or by the group, follows
    nexthop(lab, 101, "carol")
    wait_map(lab, daemon, alice["prefix4"], ["carol"])
    wait_map(lab, daemon, "10.94.0.0/16", ["bob", "carol"])
    nexthop(lab, 101, "alice")
    wait_map(lab, daemon, alice["prefix4"], ["alice"])


def test_a_deleted_object_takes_its_routes_and_an_emptied_group_with_it(lab, daemon):
    alice, bob = lab.peers["alice"], lab.peers["bob"]
    objects_and_group(lab)
    wait_map(lab, daemon, "10.94.0.0/16", ["alice", "bob"])
    assert lab.ping("alice", bob["host4"])
    lab.ip("nexthop", "del", "id", "101")  # the kernel drops alice's route without RTM_DELROUTE
    assert alice["prefix4"] not in lab.ip("route", "show").stdout
    wait_map(lab, daemon, alice["prefix4"], None)
    wait_map(lab, daemon, "10.94.0.0/16", ["bob"])  # the group lost a member
    before = spoofed(lab)
    assert not lab.ping("alice", bob["host4"], count=2), "alice's source has no route: dropped"
    assert spoofed(lab) > before, "the forged source was not counted as spoofed"
    lab.ip("nexthop", "flush")  # everything through an object goes
    wait_map(lab, daemon, bob["prefix4"], None)
    wait_map(lab, daemon, "10.94.0.0/16", None)


def test_an_object_replaced_under_the_accept_table_costs_no_failure(lab, daemon):
    """Issue 31, reproduced in the kernel: one prefix of the accept table,
    two routes through objects 1 and 2 (metrics 10 and 20); object 1
    replaced; the metric-20 route deleted. The accept table's counts broke
    (IndexError) and the daemon exited; now it lives on, with no failure
    counted, and the accept map holds what the kernel's table says."""
    net = "10.93.0.0/16"
    nexthop(lab, 1, "alice")
    nexthop(lab, 2, "bob")
    lab.ip("route", "add", net, "nhid", "1", "metric", "10", "table", ACCEPT)
    lab.ip("route", "add", net, "nhid", "2", "metric", "20", "table", ACCEPT)
    wait_map(lab, daemon, net, ["alice", "bob"], trie="accept")
    nexthop(lab, 1, "carol")
    wait_map(lab, daemon, net, ["bob", "carol"], trie="accept")
    lab.ip("route", "del", net, "nhid", "2", "metric", "20", "table", ACCEPT)
    wait_map(lab, daemon, net, ["carol"], trie="accept")
    lab.ip("route", "del", net, "nhid", "1", "metric", "10", "table", ACCEPT)
    wait_map(lab, daemon, net, None, trie="accept")
    assert daemon.proc.poll() is None, daemon.text()
    dmn = lab.status()["daemon"]
    assert dmn["failures"] == 0 and "error in" not in daemon.text(), daemon.text()


def test_the_front_down_and_up_flushes_the_maps_as_the_kernel(lab, daemon):
    """A device going down flushes the IPv4 routes through it, silently: the
    maps must not keep them, nor accept the sources they owned."""
    alice, bob = lab.peers["alice"], lab.peers["bob"]
    for name in ("alice", "bob"):
        p = lab.peers[name]
        lab.ip("route", "replace", p["prefix4"], "via", p["tag4"], "dev", lab.front, "onlink")
    wait_map(lab, daemon, alice["prefix4"], ["alice"])
    assert lab.ping("alice", bob["host4"])
    lab.ip("link", "set", lab.front, "down")
    lab.ip("link", "set", lab.front, "up")
    assert alice["prefix4"] not in lab.ip("route", "show").stdout  # the kernel's own flush
    wait_map(lab, daemon, alice["prefix4"], None)
    wait_map(lab, daemon, bob["prefix4"], None)
    assert "routes read again" in daemon.text()
    before = spoofed(lab)
    assert not lab.ping("alice", bob["host4"], count=2)
    assert spoofed(lab) > before, "alice's source, whose route went, was not dropped as spoofed"
    # the routing daemon puts them back: followed as ever
    lab.ip("route", "replace", alice["prefix4"], "via", alice["tag4"], "dev", lab.front, "onlink")
    wait_map(lab, daemon, alice["prefix4"], ["alice"])


# -- routes that name no peer, inside routes that do (issue 23) ----------------

def test_a_route_naming_no_peer_hides_the_covering_peer(lab, running):
    """bob is the upstream (default via bob); 10.50.0.0/16 is alice's, then
    blackholed, and 10.63.0.0/16 goes out a LAN device: neither is bob's,
    for steering or as a source (the kernel's rp_filter would drop them).
    The maps hold a "no peer" entry, and answer as `ip route get` does."""
    alice, bob, carol = (lab.peers[n] for n in ("alice", "bob", "carol"))
    front = ("dev", lab.front, "onlink")
    lab.ip("route", "replace", "default", "via", bob["tag4"], *front)
    lab.ip("route", "replace", "10.50.0.0/16", "via", alice["tag4"], *front)
    for p in (alice, carol):
        lab.ip("route", "replace", p["prefix4"], "via", p["tag4"], *front)
    try:
        wait_map(lab, running, "10.50.0.0/16", ["alice"])
        lab.ip("route", "replace", "blackhole", "10.50.0.0/16")
        lab.ip("route", "replace", "10.63.0.0/16", "dev", "vh-bob", "metric", "5")
        wait_map(lab, running, "10.50.0.0/16", [])  # "no peer", not gone
        wait_map(lab, running, "10.63.0.0/16", [])
        for addr in ("8.8.8.8", "10.50.0.5", "10.50.255.1", "10.63.0.5", alice["host4"], carol["host4"],
                     "10.94.1.1"):
            want = kernel_peer(lab, addr)
            assert maps_peers(lab, addr) == ([want] if want else []), addr
        r = lab.wgbpf("lookup", "10.50.0.5", "--from", "bob")
        assert "spoofed" in r.stdout and "no peer" in r.stdout, r.stdout
        r = lab.wgbpf("lookup", "10.63.0.5")
        assert "no peer" in r.stdout and "bob" not in r.stdout, r.stdout
        assert "(no peer)" in lab.wgbpf("dump").stdout
        for src in ("10.50.0.5", "10.63.0.5"):
            dropped, delivered = forged(lab, "bob", src, "carol")
            assert dropped >= 3 and delivered == 0, (src, dropped, delivered)
        # the blackhole goes: bob's default owns 10.50.0.5 again
        lab.ip("route", "del", "blackhole", "10.50.0.0/16")
        wait_map(lab, running, "10.50.0.0/16", None)
        assert maps_peers(lab, "10.50.0.5") == ["bob"] == [kernel_peer(lab, "10.50.0.5")]
        dropped, delivered = forged(lab, "bob", "10.50.0.5", "carol")
        assert dropped == 0 and delivered >= 3
    finally:
        for spec in (("default",), ("10.50.0.0/16",), ("10.63.0.0/16", "dev", "vh-bob", "metric", "5")):
            lab.ip("route", "del", *spec, check=False)


POOL = ["10.81.0.0/16", "10.81.4.0/24", "10.82.0.0/16", "10.83.0.0/16", "10.83.3.0/24", "10.80.0.0/12"]


def route_kinds(lab):
    """The ways a route to a prefix may be written, as `ip route` words
    after the prefix: by tag, ECMP, objects, no peer of every kind."""
    a, b, c = (lab.peers[n] for n in ("alice", "bob", "carol"))
    on = ("dev", lab.front, "onlink")
    return [
        ("via", a["tag4"], *on), ("via", b["tag4"], *on),
        ("nexthop", "via", a["tag4"], *on, "nexthop", "via", b["tag4"], *on),
        ("dev", c["member"]), ("via", a["tag4"], "dev", "vh-bob", "onlink"),
        ("dev", "vh-carol"), ("nhid", "201"), ("nhid", "210"),
        ("TYPE", "blackhole"), ("TYPE", "unreachable"), ("TYPE", "prohibit"),
    ]


# netlink to the maps only (no packet crosses WireGuard), 12 rounds of polls
# that each spawn `ip route get` nine times: dear under emulation
@pytest.mark.skipif(TIME_SCALE > 1 and os.environ.get("WGBPF_E2E_SLOW") != "1",
                    reason="host tier only: nothing here depends on the WireGuard implementation "
                           "(WGBPF_E2E_SLOW=1 runs it here)")
def test_random_route_sequences_leave_the_maps_answering_as_the_kernel(lab, daemon):
    """Seeded random adds, replaces and deletes over nested prefixes (a
    covering /12, routes of two metrics, every kind of route naming no
    peer, nexthop objects): after each round, for an address of every
    prefix, the maps' longest match names the peer `ip route get` sends
    it to, or no peer where the kernel uses none."""
    import random
    rnd = random.Random(23)
    a, b = lab.peers["alice"], lab.peers["bob"]
    on = ("dev", lab.front, "onlink")
    kinds = route_kinds(lab)
    lab.ip("nexthop", "replace", "id", "201", "via", a["tag4"], *on)
    lab.ip("nexthop", "replace", "id", "202", "via", b["tag4"], *on)
    lab.ip("nexthop", "replace", "id", "210", "group", "201/202")
    samples = [p.replace(".0/", ".9/").split("/")[0] for p in POOL] + ["10.80.200.1", "10.81.4.200", "10.83.3.3"]
    try:
        for rnd_no in range(6):
            lines = []
            for _ in range(12):
                prefix, metric = rnd.choice(POOL), rnd.choice(("0", "10"))
                kind = rnd.choice(kinds)
                if rnd.random() < 0.25:
                    lines.append(f"route del {prefix} metric {metric}")
                elif kind[0] == "TYPE":
                    lines.append(f"route replace {kind[1]} {prefix} metric {metric}")
                else:
                    lines.append(f"route replace {prefix} {' '.join(kind)} metric {metric}")
            r = subprocess.run(["ip", "-n", lab.hub, "-force", "-batch", "-"], input="\n".join(lines) + "\n",
                               capture_output=True, text=True)
            deadline = time.monotonic() + 2.0 * TIME_SCALE
            while True:
                wrong = []
                for addr in samples:
                    want, got = kernel_peer(lab, addr), maps_peers(lab, addr)
                    if (want is None and got) or (want is not None and want not in got):
                        wrong.append((addr, want, got))
                if not wrong:
                    break
                assert time.monotonic() < deadline, (f"round {rnd_no}: maps differ from ip route get: {wrong}\n"
                                                     f"{lines}\n{lab.ip('route', 'show').stdout}\n{r.stderr}")
                time.sleep(0.05)
    finally:
        for prefix in POOL:
            for metric in ("0", "10"):
                lab.ip("route", "del", prefix, "metric", metric, check=False)

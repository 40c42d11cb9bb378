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
import time

import pytest

from wgbtest import RUN_ID
from labutil import TIME_SCALE, DaemonProc, lab_session, map_peers, run

pytestmark = [pytest.mark.root, pytest.mark.e2e]


@pytest.fixture(scope="module")
def lab():
    with lab_session(f"n{RUN_ID}", "ping") as lab:
        lab.drop_front_routes()
        yield lab


@pytest.fixture(scope="module")
def running(lab):
    """One daemon for the module (a start is dear under emulation, in the
    vm tier): the compat mode changes under it, as an operator may."""
    d = DaemonProc(lab.hub, "daemon", lab.front, *lab.peer_args())
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


def wait_map(lab, daemon, prefix, want, timeout=2.0):
    deadline = time.monotonic() + timeout * TIME_SCALE
    while (got := map_peers(lab, prefix)) != want:
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

# SPDX-License-Identifier: GPL-2.0-or-later
"""A prefix whose best route names no peer, inside a route that does (issue
23): the kernel uses the better route (a blackhole, a LAN device), so no
peer may be steered to or accepted from it. The maps hold a "no peer"
entry (set 0) for it, and every lookup mode must treat it as no route for
steering and as no owner for the source check, never fall through to the
covering route's peer.

One namespace, three instances: lpm and dir24 read the maps (the daemon
writes the "no peer" entries, tests/e2e/test_nexthops.py (test_a_route_naming_no_peer_hides_the_covering_peer); here they are
written directly), fib reads the kernel's own routes, which the same
layout is installed as. The answers must be the same in all three.

  default           -> bob
  10.50.0.0/16      blackhole (inside bob's default)
  10.63.0.0/16      dev <a LAN device> (not a member)
  10.64.0.0/16      -> alice
  10.64.9.0/24      unreachable (inside alice's /16)
  10.70.0.0/16      via alice's tag, out bob's member: bob's (it leaves there)
  10.71.0.0/16      via alice's tag, out the LAN device: nobody's
"""
import ipaddress
import types

import pytest

from wgbpf import abi

import packets as P
from bpflab import NO_ROUTE, PeerSpec, passed, sh, spoofed, steered, unique

pytestmark = pytest.mark.root

FRONT, MEMBER = "front_egress", "member_ingress"
OK, SHOT, REDIRECT = P.TC_ACT_OK, P.TC_ACT_SHOT, P.TC_ACT_REDIRECT
PEERS = [PeerSpec("alice", ("10.255.0.1",)), PeerSpec("bob", ("10.255.0.2",))]
MODES = ["lpm", "dir24", "fib"]
u = P.udp_frame


def _sysctl(ns, key, value):
    sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}")


@pytest.fixture(scope="module")
def lab(bpf_lab):
    ns = bpf_lab.name
    for key in ("net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding", "net.ipv4.conf.default.forwarding",
                "net.ipv6.conf.all.forwarding", "net.ipv6.conf.default.forwarding"):
        _sysctl(ns, key, 1)  # bpf_fib_lookup refuses every lookup without
    lan = unique("wgbl")
    bpf_lab.tun(lan, up=True, carrier=True)
    insts = {}
    for mode, lookup in (("lpm", abi.Lookup.LPM), ("dir24", abi.Lookup.DIR24), ("fib", abi.Lookup.FIB)):
        insts[mode] = bpf_lab.attach(PEERS, front_carrier=True, lookup=lookup)
    for mode in ("lpm", "dir24"):
        inst = insts[mode]
        inst.set_route("0.0.0.0/0", ["bob"], origin=abi.Origin.KERNEL)
        inst.set_route("10.64.0.0/16", ["alice"], origin=abi.Origin.KERNEL)
        inst.set_route("10.70.0.0/16", ["bob"], origin=abi.Origin.KERNEL)  # as sync.Tags.hop_peer says
        for net in ("10.50.0.0/16", "10.63.0.0/16", "10.64.9.0/24", "10.71.0.0/16"):
            inst.set_route(net, [], origin=abi.Origin.KERNEL)  # "no peer"
    dir24 = insts["dir24"].maps.dir24.view()
    dir24.rebuild(insts["dir24"].maps.dir24.ipv4_prefixes())
    front = insts["fib"].front
    for spec in (f"default via 10.255.0.2 dev {front} onlink", "blackhole 10.50.0.0/16",
                 f"10.63.0.0/16 dev {lan}", f"10.64.0.0/16 via 10.255.0.1 dev {front} onlink",
                 "unreachable 10.64.9.0/24",
                 f"10.70.0.0/16 via 10.255.0.1 dev {insts['fib'].members['bob']} onlink",
                 f"10.71.0.0/16 via 10.255.0.1 dev {lan} onlink"):
        sh("ip", "-n", ns, "route", "add", *spec.split())
    return types.SimpleNamespace(net=bpf_lab, insts=insts)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dst,want", [
    ("8.8.8.8", steered("bob")),
    ("10.64.1.1", steered("alice")),
    ("10.50.0.5", NO_ROUTE),     # blackholed: not bob's, as the default would say
    ("10.63.0.5", NO_ROUTE),     # the LAN's: not bob's
    ("10.64.9.9", NO_ROUTE),     # unreachable: not alice's
    ("10.70.0.9", steered("bob")),  # out bob's member, whatever the gateway
    ("10.71.0.9", NO_ROUTE),     # a tag as gateway out of the LAN: nobody's
])
def test_front_egress(lab, mode, dst, want):
    inst = lab.insts[mode]
    assert inst.measure(FRONT, u("192.168.7.7", dst)) == (REDIRECT if "steered" in want else OK, want)
    with inst.policy(abi.Policy.DROP):
        if want == NO_ROUTE:
            assert inst.measure(FRONT, u("192.168.7.7", dst)) == (SHOT, NO_ROUTE)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("src,via,want", [
    ("8.8.8.8", "bob", "passed"),
    ("10.64.1.1", "alice", "passed"),
    ("10.50.0.5", "bob", "spoofed"),    # the covering default is bob's; the blackhole is nobody's
    ("10.50.0.5", "alice", "spoofed"),
    ("10.63.0.5", "bob", "spoofed"),    # the LAN's
    ("10.64.9.9", "alice", "spoofed"),  # unreachable inside alice's /16
    ("10.70.0.9", "bob", "passed"),
    ("10.70.0.9", "alice", "spoofed"),  # alice's tag is the gateway, but it leaves by bob
    ("10.71.0.9", "alice", "spoofed"),
])
def test_member_ingress(lab, mode, src, via, want):
    inst = lab.insts[mode]
    expect = passed(via) if want == "passed" else spoofed(via)
    frame = u(src, "192.168.8.8")
    assert inst.measure(MEMBER, frame, via=via) == (REDIRECT if want == "passed" else SHOT, expect)
    # loose: "routed via some peer"; a "no peer" entry is routed via none
    with inst.peer_source(via, abi.Source.LOOSE):
        got = inst.measure(MEMBER, frame, via=via)
    if want == "passed":
        assert got == (REDIRECT, passed(via))
    elif src == "10.70.0.9":  # bob's: routed via a peer, which is all loose asks
        assert got == (REDIRECT, passed(via, "passed_loose"))
    else:
        assert got == (SHOT, spoofed(via))


def test_a_no_peer_entry_is_listed_as_such(lab):
    """The maps hold the entries with no peer (set 0), kernel origin."""
    inst = lab.insts["lpm"]
    hit = inst.maps.tries.lookup(ipaddress.ip_address("10.50.0.5"))
    assert str(hit[0]) == "10.50.0.0/16" and hit[1].set == 0 and inst.maps.route_peers(hit[1]) == []

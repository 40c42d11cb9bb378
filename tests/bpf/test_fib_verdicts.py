# SPDX-License-Identifier: GPL-2.0-or-later
"""Verdicts of the two tc programs in FIB lookup mode (config.lookup =
abi.Lookup.FIB), as fixture tables in the style of test_verdicts.py: (id,
packet, expected return value, expected counter deltas).

In FIB mode the prefix maps are not read: front_egress asks the kernel
(bpf_fib_lookup, DIRECT|SKIP_NEIGH, |TBID when config.fib_table) for the
route to the destination as if the packet arrived on the front; a tag equal
to the destination or to the route's gateway names the peer, else the
route's output device if it is a member. The source check asks the same for
the source (from the front), and for the feasible check the accept table.

IPv4 only: bpflab disables IPv6 in its namespace (so the kernel sends no
router solicitations or MLD reports out of the front). IPv4 forwarding is
turned on in the namespace before the attach (bpf_fib_lookup refuses every
lookup otherwise, and dataplane.check_fib refuses the attach); the IPv6
forwarding sysctls are set too, since check_fib reads them.

The lab (module scope, its own namespace):
  alice  tag 100.64.0.1     bob  tag 100.64.0.2     carol  tag 100.64.0.3
  eve    tag 100.64.0.5, member device down at attach: WGBPF_PEER_UP clear
and the kernel routes of MAIN, TABLE100 (config.fib_table = 100) and
ACCEPT200 (config.accept_table = 200); a members-only FIB instance with one
peer, xray, and a route out of its member. Routes die with the namespace.
"""
import types

import pytest

from wgbpf import abi, bpfsys, nsenter

import packets as P
from bpflab import (NO_ROUTE, PEER_DOWN, Case, PeerSpec, ids, passed, sh,
                    spoofed, steered)

pytestmark = pytest.mark.root

FRONT, MEMBER = "front_egress", "member_ingress"
OK, SHOT, REDIRECT = P.TC_ACT_OK, P.TC_ACT_SHOT, P.TC_ACT_REDIRECT

PEERS = [
    PeerSpec("alice", ("100.64.0.1",)),
    PeerSpec("bob", ("100.64.0.2",)),
    PeerSpec("carol", ("100.64.0.3",)),
    PeerSpec("eve", ("100.64.0.5",), up=False),
]
TABLE, ACCEPT_TABLE = 100, 200

# Kernel routes; FRONT and member:NAME are replaced by the device names.
MAIN = [
    "10.1.0.0/16 via 100.64.0.1 dev FRONT onlink",        # gateway: alice's tag
    "10.1.7.0/24 via 100.64.0.3 dev FRONT onlink",        # longest match: carol
    "10.2.0.0/16 dev member:bob",                         # output device: bob
    "10.3.0.0/16 nexthop via 100.64.0.1 dev FRONT onlink nexthop via 100.64.0.2 dev FRONT onlink",
    "10.4.0.0/16 via 100.64.0.5 dev FRONT onlink",        # eve: down
    "10.6.0.0/16 dev member:carol",
    "10.9.0.0/16 dev FRONT",                              # names no peer
    "10.12.0.0/16 via 192.0.2.1 dev FRONT onlink",        # untagged gateway, front
    "10.13.0.0/16 via 192.0.2.1 dev member:carol onlink",  # untagged gateway, member
    "blackhole 10.10.0.0/16",
    "unreachable 10.11.0.0/16",
    "prohibit 10.14.0.0/16",
    "10.30.0.0/16 nhid 301",                              # through nexthop objects (FRR's way):
    "10.31.0.0/16 nhid 310",                              #   alice; a group of alice and bob;
    "10.32.0.0/16 nhid 303",                              #   a blackhole object
]
NEXTHOPS = [  # added before MAIN (its routes name them)
    "id 301 via 100.64.0.1 dev FRONT onlink",
    "id 302 via 100.64.0.2 dev FRONT onlink",
    "id 303 blackhole",
    "id 310 group 301/302",
]
TABLE100 = [
    "10.1.0.0/16 via 100.64.0.2 dev FRONT onlink",        # main: alice
    "10.2.0.0/16 dev member:carol",                       # main: bob
    "blackhole 10.6.0.0/16",                              # main: carol
]
ACCEPT200 = [
    "10.1.5.0/24 dev member:bob",                         # main: alice
    "10.9.0.0/16 via 100.64.0.3 dev FRONT onlink",        # main: nobody
]


def _sysctl(ns, key, value):
    sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}")


@pytest.fixture(scope="module")
def lab(bpf_lab):
    ns = bpf_lab.name
    for key in ("net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding",
                "net.ipv4.conf.default.forwarding", "net.ipv6.conf.all.forwarding",
                "net.ipv6.conf.default.forwarding"):
        _sysctl(ns, key, 1)
    inst = bpf_lab.attach(PEERS, front_carrier=True, lookup=abi.Lookup.FIB)
    mo = bpf_lab.attach([PeerSpec("xray", ("100.64.1.1",))], members_only=True,
                        lookup=abi.Lookup.FIB)

    def add(table, spec, inst=inst):
        words = []
        for w in spec.split():
            if w == "FRONT":
                w = inst.front
            elif w.startswith("member:"):
                w = inst.members[w[len("member:"):]]
            words.append(w)
        sh("ip", "-n", ns, "route", "add", *words, *(["table", str(table)] if table else []))

    for nh in NEXTHOPS:
        sh("ip", "-n", ns, "nexthop", "add", *[inst.front if w == "FRONT" else w for w in nh.split()])
    for r in MAIN:
        add(None, r)
    for r in TABLE100:
        add(TABLE, r)
    for r in ACCEPT200:
        add(ACCEPT_TABLE, r)
    add(None, "10.20.0.0/16 dev member:xray", inst=mo)
    return types.SimpleNamespace(net=bpf_lab, inst=inst, mo=mo, ns=ns)


def test_lab_is_as_described(lab):
    cfg = lab.inst.maps.config()
    assert cfg.lookup == abi.Lookup.FIB
    assert cfg.front_ifindex == lab.net.ifindex[lab.inst.front]
    assert cfg.fib_table == 0 and cfg.accept_table == 0
    assert cfg.no_route == abi.Policy.PASS
    assert lab.mo.maps.config().lookup == abi.Lookup.FIB
    assert lab.mo.maps.config().front_ifindex == 0
    peers = lab.inst.maps.peers()
    for p in PEERS:
        assert bool(peers[lab.inst.ids[p.name]].flags & abi.PEER_UP) == p.up, p.name


FIB_FAILED = {"fib_failed": 1}


u = P.udp_frame
SRC = "192.168.7.7"      # a source front_egress does not look at
DST = "192.168.8.8"      # a destination member_ingress does not look at


def egress(lab, frame, inst=None):
    """front_egress as on the real front: skb->ifindex is the front."""
    inst = inst or lab.inst
    return inst.measure(FRONT, frame, via=inst.front)


# -- front_egress ------------------------------------------------------------
FRONT_CASES = [
    Case("gateway-tag-alice", u(SRC, "10.1.2.3"), REDIRECT, steered("alice")),
    Case("gateway-tag-longest-match-carol", u(SRC, "10.1.7.9"), REDIRECT, steered("carol")),
    Case("gateway-tag-tcp", P.tcp_frame(SRC, "10.1.0.1"), REDIRECT, steered("alice")),
    Case("gateway-tag-fragment", P.eth4(P.ipv4(SRC, "10.1.0.1", P.IPPROTO_UDP, b"middle..",
                                               offset8=100)), REDIRECT, steered("alice")),
    Case("output-device-bob", u(SRC, "10.2.0.9"), REDIRECT, steered("bob")),
    Case("output-device-carol", u(SRC, "10.6.255.255"), REDIRECT, steered("carol")),
    Case("untagged-gateway-member-device", u(SRC, "10.13.1.1"), REDIRECT, steered("carol")),
    Case("dst-is-tag-no-kernel-route", u(SRC, "100.64.0.3"), REDIRECT, steered("carol")),
    Case("dst-is-tag-inside-other-route", u(SRC, "100.64.0.2"), REDIRECT, steered("bob")),
    Case("dst-is-down-peers-tag", u(SRC, "100.64.0.5"), OK, PEER_DOWN),
    Case("gateway-tag-of-down-peer", u(SRC, "10.4.0.1"), OK, PEER_DOWN),
    Case("route-out-of-front-names-nobody", u(SRC, "10.9.0.1"), OK, NO_ROUTE),
    Case("untagged-gateway-out-of-front", u(SRC, "10.12.0.1"), OK, NO_ROUTE),
    Case("blackhole", u(SRC, "10.10.0.1"), OK, NO_ROUTE),
    Case("nexthop-object-alice", u(SRC, "10.30.0.1"), REDIRECT, steered("alice")),
    Case("nexthop-blackhole-object", u(SRC, "10.32.0.1"), OK, NO_ROUTE),
    Case("unreachable", u(SRC, "10.11.0.1"), OK, NO_ROUTE),
    Case("prohibit", u(SRC, "10.14.0.1"), OK, NO_ROUTE),
    Case("no-kernel-route-at-all", u(SRC, "198.18.0.1"), OK, NO_ROUTE),
    Case("tag-of-other-instance-is-no-tag", u(SRC, "100.64.1.1"), OK, NO_ROUTE),
]


@pytest.mark.parametrize("case", FRONT_CASES, ids=ids(FRONT_CASES))
def test_front_egress(lab, case):
    assert egress(lab, case.packet) == (case.verdict, case.deltas)


NO_ROUTE_CASES = [c for c in FRONT_CASES if c.deltas in (NO_ROUTE, PEER_DOWN)]


@pytest.mark.parametrize("case", NO_ROUTE_CASES, ids=ids(NO_ROUTE_CASES))
def test_front_egress_drop_policy(lab, case):
    """With no_route = drop, every FIB answer that names no live peer is shot,
    counted the same."""
    with lab.inst.policy(abi.Policy.DROP):
        assert egress(lab, case.packet) == (SHOT, case.deltas)


def test_front_egress_peer_taken_down(lab):
    """A peer whose member route answers but that the daemon marked down: the
    kernel already chose, so there is no sibling to fall back to."""
    with lab.inst.peers_down("bob"):
        assert egress(lab, u(SRC, "10.2.0.9")) == (OK, PEER_DOWN)
        assert egress(lab, u(SRC, "100.64.0.2")) == (OK, PEER_DOWN)
        with lab.inst.policy(abi.Policy.DROP):
            assert egress(lab, u(SRC, "10.2.0.9")) == (SHOT, PEER_DOWN)
    assert egress(lab, u(SRC, "10.2.0.9")) == (REDIRECT, steered("bob"))


def test_front_egress_multipath(lab):
    """An ECMP route over two tagged gateways: the kernel's hash picks one per
    flow, the same one every time, and both are used."""
    seen = {}
    for i in range(64):
        frame = u(SRC, f"10.3.{i}.{i * 3 % 256}", sport=1000 + i)
        retval, d = egress(lab, frame)
        peers = [k[3:] for k in d if k.startswith("tx:")]
        assert retval == REDIRECT and len(peers) == 1 and d == steered(peers[0]), d
        assert egress(lab, frame) == (REDIRECT, d), "the same flow moved"
        seen[peers[0]] = seen.get(peers[0], 0) + 1
    assert set(seen) == {"alice", "bob"}, seen


TBID_CASES = [
    Case("table100-gateway-bob-main-alice", u(SRC, "10.1.2.3"), REDIRECT, steered("bob")),
    Case("table100-longer-main-route-not-seen", u(SRC, "10.1.7.9"), REDIRECT, steered("bob")),
    Case("table100-device-carol-main-bob", u(SRC, "10.2.0.9"), REDIRECT, steered("carol")),
    Case("table100-blackhole-main-carol", u(SRC, "10.6.0.1"), OK, NO_ROUTE),
    Case("table100-no-route-main-has-one", u(SRC, "10.13.1.1"), OK, NO_ROUTE),
    Case("table100-tag-still-wins", u(SRC, "100.64.0.1"), REDIRECT, steered("alice")),
]


@pytest.mark.parametrize("case", TBID_CASES, ids=ids(TBID_CASES))
def test_front_egress_fib_table(lab, case):
    """config.fib_table = 100: BPF_FIB_LOOKUP_TBID asks table 100, not main."""
    with lab.inst.settings(fib_table=TABLE):
        assert egress(lab, case.packet) == (case.verdict, case.deltas)


def test_fib_table_probe(lab):
    """This kernel has BPF_FIB_LOOKUP_TBID (the TBID cases rely on it)."""
    with nsenter.entered(lab.ns):
        rc = bpfsys.fib_probe(lab.net.ifindex[lab.inst.front], TABLE,
                              abi.FIB_LOOKUP_DIRECT | abi.FIB_LOOKUP_SKIP_NEIGH | abi.FIB_LOOKUP_TBID)
    assert rc >= 0, rc


@pytest.mark.parametrize("table", [1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1])
def test_fib_table_probe_range_edges(lab, table):
    """Every table `--fib-table` accepts (1 to 4294967295) can be probed: a
    tbid above 2**31 once packed as a signed immediate died in struct.error."""
    with nsenter.entered(lab.ns):
        rc = bpfsys.fib_probe(lab.net.ifindex[lab.inst.front], table,
                              abi.FIB_LOOKUP_DIRECT | abi.FIB_LOOKUP_SKIP_NEIGH | abi.FIB_LOOKUP_TBID)
    assert rc >= 0, rc


# -- member_ingress ----------------------------------------------------------
def arriving(src, via, dst=DST):
    return dict(packet=u(src, dst), via=via)


STRICT_CASES = [
    Case("output-device-own", **arriving("10.2.0.7", "bob"), verdict=REDIRECT, deltas=passed("bob")),
    Case("gateway-tag-own", **arriving("10.1.0.7", "alice"), verdict=REDIRECT, deltas=passed("alice")),
    Case("nexthop-object-own", **arriving("10.30.0.7", "alice"), verdict=REDIRECT, deltas=passed("alice")),
    Case("nexthop-object-other-peers", **arriving("10.30.0.7", "bob"), verdict=SHOT, deltas=spoofed("bob")),
    Case("nexthop-blackhole-object", **arriving("10.32.0.7", "bob"), verdict=SHOT, deltas=spoofed("bob")),
    Case("longest-match-own", **arriving("10.1.7.7", "carol"), verdict=REDIRECT, deltas=passed("carol")),
    Case("untagged-gateway-member-own", **arriving("10.13.0.7", "carol"), verdict=REDIRECT,
         deltas=passed("carol")),
    Case("own-tag", **arriving("100.64.0.2", "bob"), verdict=REDIRECT, deltas=passed("bob")),
    Case("other-peers-route", **arriving("10.1.0.7", "bob"), verdict=SHOT, deltas=spoofed("bob")),
    Case("shorter-route-own-longer-other", **arriving("10.1.7.7", "alice"), verdict=SHOT,
         deltas=spoofed("alice")),
    Case("other-peers-device", **arriving("10.2.0.7", "alice"), verdict=SHOT, deltas=spoofed("alice")),
    Case("other-peers-tag", **arriving("100.64.0.1", "bob"), verdict=SHOT, deltas=spoofed("bob")),
    Case("route-names-nobody", **arriving("10.9.0.7", "bob"), verdict=SHOT, deltas=spoofed("bob")),
    Case("blackhole", **arriving("10.10.0.7", "bob"), verdict=SHOT, deltas=spoofed("bob")),
    Case("no-kernel-route", **arriving("198.18.0.7", "bob"), verdict=SHOT, deltas=spoofed("bob")),
    Case("accept-table-unused-when-strict", **arriving("10.1.5.7", "bob"), verdict=SHOT,
         deltas=spoofed("bob")),
]


@pytest.mark.parametrize("case", STRICT_CASES, ids=ids(STRICT_CASES))
def test_member_ingress_strict(lab, case):
    with lab.inst.settings(accept_table=ACCEPT_TABLE):
        assert lab.inst.measure(MEMBER, case.packet, case.via) == (case.verdict, case.deltas)


FEASIBLE_CASES = [
    Case("accept-table-names-arrival", **arriving("10.1.5.7", "bob"), verdict=REDIRECT,
         deltas=passed("bob", "passed_feasible")),
    Case("main-still-first", **arriving("10.1.5.7", "alice"), verdict=REDIRECT, deltas=passed("alice")),
    Case("neither-table", **arriving("10.1.5.7", "carol"), verdict=SHOT, deltas=spoofed("carol")),
    Case("accept-gateway-tag-main-nobody", **arriving("10.9.0.7", "carol"), verdict=REDIRECT,
         deltas=passed("carol", "passed_feasible")),
    Case("accept-gateway-other-peer", **arriving("10.9.0.7", "bob"), verdict=SHOT, deltas=spoofed("bob")),
    Case("not-in-accept-table", **arriving("10.1.0.7", "bob"), verdict=SHOT, deltas=spoofed("bob")),
]


@pytest.mark.parametrize("case", FEASIBLE_CASES, ids=ids(FEASIBLE_CASES))
def test_member_ingress_feasible(lab, case):
    with lab.inst.settings(source=abi.Source.FEASIBLE, accept_table=ACCEPT_TABLE):
        assert lab.inst.measure(MEMBER, case.packet, case.via) == (case.verdict, case.deltas)


def test_member_ingress_feasible_without_accept_table(lab):
    """Feasible with accept_table 0: nothing is feasible beyond the main table."""
    with lab.inst.settings(source=abi.Source.FEASIBLE, accept_table=0):
        assert lab.inst.measure(MEMBER, u("10.1.5.7", DST), "bob") == (SHOT, spoofed("bob"))
        assert lab.inst.measure(MEMBER, u("10.1.5.7", DST), "alice") == (REDIRECT, passed("alice"))


LOOSE_CASES = [
    Case("own-route", **arriving("10.2.0.7", "bob"), verdict=REDIRECT, deltas=passed("bob")),
    Case("other-peers-route", **arriving("10.1.0.7", "bob"), verdict=REDIRECT,
         deltas=passed("bob", "passed_loose")),
    Case("down-peers-route", **arriving("10.4.0.7", "bob"), verdict=REDIRECT,
         deltas=passed("bob", "passed_loose")),
    Case("route-names-nobody", **arriving("10.9.0.7", "bob"), verdict=SHOT, deltas=spoofed("bob")),
    Case("blackhole", **arriving("10.10.0.7", "bob"), verdict=SHOT, deltas=spoofed("bob")),
    Case("no-kernel-route", **arriving("198.18.0.7", "bob"), verdict=SHOT, deltas=spoofed("bob")),
]


@pytest.mark.parametrize("case", LOOSE_CASES, ids=ids(LOOSE_CASES))
def test_member_ingress_loose(lab, case):
    with lab.inst.settings(source=abi.Source.LOOSE):
        assert lab.inst.measure(MEMBER, case.packet, case.via) == (case.verdict, case.deltas)


OFF_CASES = [
    Case("route-names-nobody", **arriving("10.9.0.7", "bob"), verdict=REDIRECT,
         deltas=passed("bob", "passed_unchecked")),
    Case("other-peers-route", **arriving("10.1.0.7", "bob"), verdict=REDIRECT,
         deltas=passed("bob", "passed_unchecked")),
    Case("blackhole", **arriving("10.10.0.7", "bob"), verdict=REDIRECT,
         deltas=passed("bob", "passed_unchecked")),
]


@pytest.mark.parametrize("case", OFF_CASES, ids=ids(OFF_CASES))
def test_member_ingress_off(lab, case):
    with lab.inst.settings(source=abi.Source.OFF):
        assert lab.inst.measure(MEMBER, case.packet, case.via) == (case.verdict, case.deltas)


def test_member_ingress_per_peer_source_overrides(lab):
    """A peer's own mode beats the config's strict one, in FIB mode too."""
    with lab.inst.peer_source("bob", abi.Source.LOOSE):
        assert lab.inst.measure(MEMBER, u("10.1.0.7", DST), "bob") == \
            (REDIRECT, passed("bob", "passed_loose"))
        assert lab.inst.measure(MEMBER, u("10.1.0.7", DST), "carol") == (SHOT, spoofed("carol"))


def test_member_ingress_fib_table(lab):
    """The source check asks config.fib_table as well."""
    with lab.inst.settings(fib_table=TABLE):
        assert lab.inst.measure(MEMBER, u("10.1.0.7", DST), "bob") == (REDIRECT, passed("bob"))
        assert lab.inst.measure(MEMBER, u("10.1.0.7", DST), "alice") == (SHOT, spoofed("alice"))
        assert lab.inst.measure(MEMBER, u("10.2.0.7", DST), "carol") == (REDIRECT, passed("carol"))


def test_member_ingress_multipath_source(lab):
    """A source behind an ECMP route: the strict check accepts it from the
    one peer the kernel's hash picks for the reverse lookup (never from both,
    never from neither); loose accepts it from both."""
    for i in range(16):
        src = f"10.3.{i}.7"
        got = {}
        for peer in ("alice", "bob"):
            retval, d = lab.inst.measure(MEMBER, u(src, DST), peer)
            got[peer] = d == passed(peer)
            assert d in (passed(peer), spoofed(peer)), d
            assert retval == (REDIRECT if got[peer] else SHOT)
        assert sum(got.values()) == 1, (src, got)
        with lab.inst.settings(source=abi.Source.LOOSE):
            for peer in ("alice", "bob"):
                retval, d = lab.inst.measure(MEMBER, u(src, DST), peer)
                assert retval == REDIRECT and d in (passed(peer), passed(peer, "passed_loose")), d


def test_members_only_fib(lab):
    """Without a front the lookups run from the member itself; a passed
    packet stays on the member (TC_ACT_OK)."""
    mo = lab.mo
    assert mo.measure(MEMBER, u("10.20.0.7", DST), "xray") == (OK, passed("xray"))
    assert mo.measure(MEMBER, u("100.64.1.1", DST), "xray") == (OK, passed("xray"))
    assert mo.measure(MEMBER, u("10.9.0.7", DST), "xray") == (SHOT, spoofed("xray"))


# -- forwarding turned off after the attach ------------------------------------
@pytest.fixture
def front_forwarding_off(lab):
    key = f"net.ipv4.conf.{lab.inst.front}.forwarding"
    _sysctl(lab.ns, key, 0)
    try:
        yield
    finally:
        _sysctl(lab.ns, key, 1)


FIB_FAILED_CASES = [
    Case("gateway-tag", u(SRC, "10.1.2.3"), None, FIB_FAILED),
    Case("output-device", u(SRC, "10.2.0.9"), None, FIB_FAILED),
    Case("route-names-nobody", u(SRC, "10.9.0.1"), None, FIB_FAILED),
    Case("blackhole", u(SRC, "10.10.0.1"), None, FIB_FAILED),
]


@pytest.mark.parametrize("policy,verdict", [(abi.Policy.PASS, OK), (abi.Policy.DROP, SHOT)],
                         ids=["pass", "drop"])
@pytest.mark.parametrize("case", FIB_FAILED_CASES, ids=ids(FIB_FAILED_CASES))
def test_front_egress_forwarding_off(lab, front_forwarding_off, case, policy, verdict):
    with lab.inst.policy(policy):
        assert egress(lab, case.packet) == (verdict, case.deltas)


def test_front_egress_forwarding_off_tag_needs_no_fib(lab, front_forwarding_off):
    """A destination equal to a tag is answered before the FIB is asked."""
    assert egress(lab, u(SRC, "100.64.0.1")) == (REDIRECT, steered("alice"))


def test_member_ingress_forwarding_off(lab, front_forwarding_off):
    """The source check's lookups run from the front too: with its forwarding
    off the kernel refuses them, and the packet is dropped (fail closed) but
    counted as fib_failed, not as spoofing by the peer; the own tag and an
    unchecked peer still pass."""
    assert lab.inst.measure(MEMBER, u("10.2.0.7", DST), "bob") == (SHOT, FIB_FAILED)
    with lab.inst.settings(source=abi.Source.LOOSE):
        assert lab.inst.measure(MEMBER, u("10.1.0.7", DST), "bob") == (SHOT, FIB_FAILED)
    assert lab.inst.measure(MEMBER, u("100.64.0.2", DST), "bob") == (REDIRECT, passed("bob"))
    with lab.inst.settings(source=abi.Source.OFF):
        assert lab.inst.measure(MEMBER, u("10.2.0.7", DST), "bob") == \
            (REDIRECT, passed("bob", "passed_unchecked"))


def test_forwarding_restored(lab):
    """After the forwarding tests the front answers again."""
    assert egress(lab, u(SRC, "10.1.2.3")) == (REDIRECT, steered("alice"))

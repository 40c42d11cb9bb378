# SPDX-License-Identifier: GPL-2.0-or-later
"""Route -> peer-set resolution, the table model, diffs, and the raw netlink
parser, without root: routes are built by hand or as netlink bytes."""
import ipaddress
import socket
import struct

from hypothesis import given, settings, strategies as st

from wgbpf import abi, routes as rt, sync

AF4, AF6 = socket.AF_INET, socket.AF_INET6
ALICE, BOB, CAROL = 1, 2, 3
TAGS = sync.Tags(
    by_addr={ipaddress.ip_address(a).packed: p for a, p in [
        ("fe80::1", ALICE), ("10.255.0.1", ALICE), ("fe80::2", BOB), ("10.255.0.2", BOB),
        ("fe80::3", CAROL)]},
    by_oif={11: ALICE, 12: BOB, 13: CAROL}, front=10)
FRONT = 10
# members only (no front): tags name no peer, a member device does
TAGS_MEMBERS = sync.Tags(TAGS.by_addr, TAGS.by_oif)


def route(prefix, *nexthops, table=254, priority=0, protocol=4, realm=0, tos=0, src=None):
    net = ipaddress.ip_network(prefix)
    hops = tuple((ipaddress.ip_address(gw).packed if gw else None, oif) for gw, oif in nexthops)
    if src is not None:
        s = ipaddress.ip_network(src)
        src = (s.prefixlen, s.network_address.packed) if s.prefixlen else None
    return rt.KernelRoute(AF4 if net.version == 4 else AF6, net.network_address.packed,
                          net.prefixlen, table, priority, protocol, realm, hops, tos, src)


def test_resolution_by_every_tag_kind():
    cases = [
        (route("10.1.0.0/16", ("10.255.0.1", FRONT)), (ALICE,)),        # IPv4 gateway tag
        (route("10.1.0.0/16", ("fe80::2", FRONT)), (BOB,)),             # v4 via v6 link-local (RTA_VIA)
        (route("2001:db8::/32", ("fe80::3", FRONT)), (CAROL,)),         # IPv6 link-local tag
        (route("10.1.0.0/16", (None, 12)), (BOB,)),                     # dev <member>
        (route("10.1.0.0/16", ("192.0.2.1", 13)), (CAROL,)),            # unknown gateway, member oif
        (route("10.1.0.0/16", ("fe80::1", 12)), (BOB,)),                # out bob's member: bob's, whatever the gateway
        (route("10.1.0.0/16", ("10.255.0.1", 77)), ()),                # a tag out of a LAN device: nobody's
        (route("10.1.0.0/16", ("10.255.0.2", FRONT), ("fe80::1", FRONT)), (ALICE, BOB)),  # ECMP
        (route("10.1.0.0/16", ("10.255.0.2", FRONT), ("192.0.2.9", FRONT)), (BOB,)),     # one hop names none
        (route("10.1.0.0/16", (None, FRONT)), ()),                      # dev front: names no peer
        (route("10.1.0.0/16", ("192.0.2.1", 99)), ()),
    ]
    for r, want in cases:
        assert TAGS.resolve(r) == want, r


def test_filter_tables_protocols_realms_and_rank():
    f = sync.Filter(tables=(100, 254), protocols=(12,), realms=(7,))
    assert f.accepts(route("10.0.0.0/8", ("fe80::1", 10), table=100, protocol=12, realm=7))
    assert not f.accepts(route("10.0.0.0/8", ("fe80::1", 10), table=253, protocol=12, realm=7))
    assert not f.accepts(route("10.0.0.0/8", ("fe80::1", 10), table=100, protocol=4, realm=7))
    assert not f.accepts(route("10.0.0.0/8", ("fe80::1", 10), table=100, protocol=12, realm=8))
    a = route("10.0.0.0/8", table=100, priority=500)
    b = route("10.0.0.0/8", table=254, priority=1)
    assert f.rank(a) < f.rank(b)  # the first table given wins over a lower metric elsewhere


def test_table_prefers_lowest_metric_and_falls_back():
    t = sync.Table(TAGS, sync.Filter())
    hi = route("10.5.0.0/16", ("10.255.0.1", FRONT), priority=100)
    lo = route("10.5.0.0/16", ("10.255.0.2", FRONT), priority=10)
    k = t.update(hi)
    assert t.best(k) == (ALICE,)
    assert t.update(lo) == k and t.best(k) == (BOB,)
    assert t.update(hi) is None  # re-adding the losing route changes nothing
    t.update(lo, deleted=True)
    assert t.best(k) == (ALICE,)
    assert t.per_peer == {ALICE: 1, BOB: 0}


def test_ipv6_delete_of_one_nexthop_keeps_the_others():
    t = sync.Table(TAGS, sync.Filter())
    k = t.update(route("2001:db8::/32", ("fe80::1", FRONT), ("fe80::2", FRONT), ("fe80::3", FRONT)))
    t.update(route("2001:db8::/32", ("fe80::2", FRONT)), deleted=True)
    assert t.best(k) == (ALICE, CAROL)


# -- routes keyed as the kernel keys them ---------------------------------------

def two_routes_one_deleted(a, b, flt=None):
    """Add a and b for one prefix, delete b: what the table gives, before and after."""
    t = sync.Table(TAGS, flt or sync.Filter())
    k = sync.pkey(a.family, a.dst, a.dst_len)
    t.update(a)
    t.update(b)
    before = t.best(k)
    t.update(b, deleted=True)
    return before, t.best(k)


def test_delete_of_one_of_two_routes_leaves_the_prefix():
    via_alice, via_bob = ("10.255.0.1", FRONT), ("10.255.0.2", FRONT)
    cases = {
        "metric": (route("10.5.0.0/16", via_alice, priority=10), route("10.5.0.0/16", via_bob, priority=20)),
        "metric, better one deleted": (route("10.5.0.0/16", via_alice, priority=20),
                                       route("10.5.0.0/16", via_bob, priority=10)),
        "table": (route("10.5.0.0/16", via_alice, table=254), route("10.5.0.0/16", via_bob, table=100)),
        "tos": (route("10.5.0.0/16", via_alice), route("10.5.0.0/16", via_bob, tos=0x10)),
        "ipv6 source prefix": (route("2001:db8::/32", ("fe80::1", FRONT)),
                               route("2001:db8::/32", ("fe80::2", FRONT), src="fd00:1::/48")),
        "ipv6 metric": (route("2001:db8::/32", ("fe80::1", FRONT), priority=1024),
                        route("2001:db8::/32", ("fe80::2", FRONT), priority=512)),
    }
    flt = sync.Filter(tables=(254, 100))
    for why, (a, b) in cases.items():
        _before, after = two_routes_one_deleted(a, b, flt)
        assert after == TAGS.resolve(a), why
    # and the other way round: the specific route's delete never took the plain one
    before, after = two_routes_one_deleted(route("10.5.0.0/16", via_bob, tos=0x10), route("10.5.0.0/16", via_alice))
    assert (before, after) == ((ALICE,), None)


def test_tos_and_source_specific_routes_never_steer_and_are_counted():
    t = sync.Table(TAGS, sync.Filter())
    tos = route("10.6.0.0/16", ("10.255.0.2", FRONT), tos=0x10)
    src = route("2001:db8::/32", ("fe80::2", FRONT), src="fd00:1::/48")
    assert t.update(tos) is None and t.update(src) is None
    assert t.best(sync.pkey(AF4, bytes([10, 6, 0, 0]), 16)) is None
    assert t.best(sync.pkey(AF6, src.dst, 32)) is None
    assert len(t) == 0 and len(t.specific) == 2 and t.ignored == 2
    assert t.update(tos) is None and t.ignored == 2  # a replace is no second route
    # a plain route for the prefix steers, whatever specific routes it has
    k = t.update(route("2001:db8::/32", ("fe80::1", FRONT), priority=2048))
    assert t.best(k) == (ALICE,)
    t.update(src, deleted=True)
    t.update(tos, deleted=True)
    assert not t.specific and t.best(k) == (ALICE,)
    # `from ::/0` is a plain route (the kernel stores no source prefix)
    assert route("::/0", ("fe80::1", FRONT), src="::/0").src is None


def test_a_blackhole_replacing_a_route_removes_it():
    t = sync.Table(TAGS, sync.Filter())
    k = t.update(route("10.7.0.0/16", ("10.255.0.1", FRONT)))
    hole = parse(rtmsg(AF4, 16, 254, rtype=rt.RTN_BLACKHOLE, attrs=rta(rt.RTA_DST, bytes([10, 7, 0, 0]))))
    assert hole.nexthops == () and hole.key == route("10.7.0.0/16").key
    assert t.update(hole) == k and t.best(k) is None


# -- the operator's entries win -------------------------------------------------

STATIC, TAG, KERNEL = abi.Origin.STATIC, abi.Origin.TAG, abi.Origin.KERNEL


def test_diff_never_touches_static_or_tag_entries():
    t = sync.Table(TAGS, sync.Filter())
    p16 = sync.pkey(AF4, bytes([10, 1, 0, 0]), 16)
    tag = sync.pkey(AF4, bytes([10, 255, 0, 1]), 32)
    gone = sync.pkey(AF4, bytes([10, 8, 0, 0]), 16)
    t.update(route("10.1.0.0/16", ("10.255.0.2", FRONT)))          # a route for a static prefix
    t.update(route("10.255.0.1/32", ("10.255.0.2", FRONT)))        # ... and for a tag's
    t.update(route("10.8.0.0/16", ("10.255.0.2", FRONT)))
    k = t.update(route("10.8.0.0/16", ("10.255.0.2", FRONT)), deleted=True)  # deleted: no route
    entries = {p16: (STATIC, (CAROL,)), tag: (TAG, (ALICE,)), gone: (STATIC, (CAROL,))}
    for keys in (None, {p16, tag, k}):
        d = sync.diff(t, dict(entries), keys=keys)
        assert not d.put and not d.delete, keys


class FakeMaps:
    """routes4/routes6 as one dict {pkey: (origin, peers)}, read as
    Tries.read reads: only the keys asked for, as they are now."""

    def __init__(self):
        self.entries = {}

    def set(self, k, origin, peers):
        self.entries[k] = (origin, tuple(peers))

    def read(self, keys):
        return {k: self.entries[k] for k in keys if k in self.entries}

    def apply(self, d):
        apply(self.entries, d)


def test_entries_written_behind_the_daemons_back_win():
    """`wgbpf route add` under a running daemon, then a kernel route for the
    same prefix added and deleted: the diff is against the maps as they
    are now, so the static entry stays."""
    maps = FakeMaps()
    t = sync.Table(TAGS, sync.Filter())
    p16 = sync.pkey(AF4, bytes([10, 9, 0, 0]), 16)
    p6 = sync.pkey(AF6, ipaddress.ip_address("2001:db8:9::").packed, 48)
    maps.set(p6, KERNEL, (ALICE,))                      # the daemon's own entry, then overwritten
    maps.set(p16, STATIC, (CAROL,))
    maps.set(p6, STATIC, (BOB,))
    for r in (route("10.9.0.0/16", ("10.255.0.1", FRONT)), route("2001:db8:9::/48", ("fe80::1", FRONT))):
        for deleted in (False, True):
            k = t.update(r, deleted=deleted)
            d = sync.diff(t, maps.read({k}), keys={k})
            assert not d.put and not d.delete
    assert maps.entries == {p16: (STATIC, (CAROL,)), p6: (STATIC, (BOB,))}
    # an entry gone from the maps: the route is written again
    del maps.entries[p16]
    k = t.update(route("10.9.0.0/16", ("10.255.0.1", FRONT)))
    assert sync.diff(t, maps.read({k}), keys={k}).put == {p16: (ALICE,)}


def apply(entries, d):
    for k, peers in d.put.items():
        entries[k] = (abi.Origin.KERNEL, peers)
    for k in d.delete:
        del entries[k]  # a delete of an entry not there would be a bug (KeyError)


def expected(kernel, flt, tags=TAGS):
    """The pure model: per prefix, the route the kernel prefers among those
    of the tables followed (lowest rank): its peers if the daemon follows
    it (protocol, realm) and it names some, else a "no peer" entry (): a
    blackhole, another device's route, one the daemon does not follow,
    hides the covering routes' peers as it hides worse ones. But a route
    naming no peer through the front hides nothing (the front's packets
    come to the maps)."""
    best = {}
    for r in kernel.values():
        if r.table not in flt.tables or r.tos or r.src is not None:
            continue  # other tables; TOS/source-specific: never in the maps
        k = sync.pkey(r.family, r.dst, r.dst_len)
        named = tags.resolve(r)
        if not named and r.nexthops and all(oif == tags.front for _gw, oif in r.nexthops):
            continue
        peers = named if flt.accepts(r) else ()
        if k not in best or flt.rank(r) < best[k][0]:
            best[k] = (flt.rank(r), peers)
    return {k: v[1] for k, v in best.items()}


GATEWAYS = [None, "10.255.0.1", "10.255.0.2", "fe80::1", "fe80::2", "fe80::3", "192.0.2.1"]
OIFS = [FRONT, 11, 12, 13, 99]

prefixes = st.sampled_from(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "0.0.0.0/0",
                            "2001:db8::/32", "2001:db8:1::/48", "::/0"])
nexthops = st.lists(st.tuples(st.sampled_from(GATEWAYS), st.sampled_from(OIFS)), min_size=1, max_size=3)
events = st.lists(st.tuples(st.sampled_from(["set", "del"]), prefixes, nexthops,
                            st.sampled_from([254, 100, 7]), st.sampled_from([0, 10, 1024]),
                            st.sampled_from([4, 12]), st.sampled_from([0, 0, 0x10]),
                            st.sampled_from([None, None, "::/0", "fd00:1::/48"])), max_size=40)


@settings(max_examples=300, deadline=None)
@given(events, st.booleans(), st.booleans())
def test_any_event_sequence_leaves_maps_equal_to_the_model(seq, filtered, front):
    flt = sync.Filter(tables=(254, 100), protocols=(12,) if filtered else ())
    tags = TAGS if front else TAGS_MEMBERS
    t = sync.Table(tags, flt)
    kernel = {}
    # the operator's own entries, which the daemon must never touch
    static = {sync.pkey(AF4, bytes([10, 1, 0, 0]), 16): (abi.Origin.STATIC, (CAROL,))}
    entries = dict(static)
    unread = dict(static)  # the same, followed without reading the maps back (sync.changes)
    for op, prefix, hops, table, prio, proto, tos, src in seq:
        v6 = ":" in prefix  # TOS is IPv4's, source prefixes IPv6's
        r = route(prefix, *hops, table=table, priority=prio, protocol=proto,
                  tos=0 if v6 else tos, src=src if v6 else None)
        if op == "set":
            kernel[r.key] = r  # add and replace look alike: same key, new nexthops
            changed = t.update(r)
        else:
            if r.key not in kernel:
                continue  # the kernel refuses to delete what it does not have
            # a delete notification describes the route as it was
            changed = t.update(kernel.pop(r.key), deleted=True)
        apply(entries, sync.diff(t, entries, keys={changed} if changed else set()))
        apply(unread, sync.changes(t, {changed} if changed else set(), static.keys()))
        assert unread == entries
        want = expected(kernel, flt, tags)
        kern = {k: v[1] for k, v in entries.items() if v[0] == abi.Origin.KERNEL}
        assert kern == {k: p for k, p in want.items() if k not in static}
        assert {k: t.entry(k) for k in t.prefixes} == want
        assert len(t) == sum(1 for p in want.values() if p)
        for k, v in static.items():
            assert entries[k] == v
    # a full resync of an unchanged table writes nothing
    assert len(sync.diff(t, entries)) == 0
    counts = {}
    for peers in expected(kernel, flt, tags).values():
        for p in peers:
            counts[p] = counts.get(p, 0) + 1
    assert {p: n for p, n in t.per_peer.items() if n} == counts


def test_full_diff_deletes_stale_kernel_entries_only():
    t = sync.Table(TAGS, sync.Filter())
    t.update(route("10.1.0.0/16", ("10.255.0.1", FRONT)))
    stale = sync.pkey(AF4, bytes([10, 9, 0, 0]), 16)
    tag = sync.pkey(AF4, bytes([10, 255, 0, 1]), 32)
    entries = {stale: (abi.Origin.KERNEL, (BOB,)), tag: (abi.Origin.TAG, (ALICE,))}
    d = sync.diff(t, entries)
    assert d.delete == [stale]
    assert d.put == {sync.pkey(AF4, bytes([10, 1, 0, 0]), 16): (ALICE,)}


# -- the raw netlink parser --------------------------------------------------

def rta(kind, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + bytes((-n) % 4)


def rtmsg(family, dst_len, table, rtype=rt.RTN_UNICAST, protocol=4, attrs=b""):
    return struct.pack("=BBBBBBBBI", family, dst_len, 0, 0, table, protocol, 0, rtype, 0) + attrs


def parse(body):
    return rt.parse_route(memoryview(body), 0, len(body))


def test_parse_gateway_oif_priority_table():
    body = rtmsg(AF4, 16, 254, attrs=rta(rt.RTA_DST, bytes([10, 1, 0, 0]))
                 + rta(rt.RTA_GATEWAY, bytes([10, 255, 0, 1])) + rta(rt.RTA_OIF, struct.pack("=i", 10))
                 + rta(rt.RTA_PRIORITY, struct.pack("=I", 20)) + rta(rt.RTA_TABLE, struct.pack("=I", 1000)))
    r = parse(body)
    assert (r.dst, r.dst_len, r.table, r.priority) == (bytes([10, 1, 0, 0]), 16, 1000, 20)
    assert r.nexthops == ((bytes([10, 255, 0, 1]), 10),)


def test_parse_v4_via_v6_and_multipath():
    via = struct.pack("=H", AF6) + ipaddress.ip_address("fe80::2").packed
    hop1 = rta(rt.RTA_VIA, via)
    hop2 = rta(rt.RTA_GATEWAY, bytes([10, 255, 0, 1]))
    mp = (struct.pack("=HBBi", 8 + len(hop1), 0, 0, 10) + hop1
          + struct.pack("=HBBi", 8 + len(hop2), 0, 0, 11) + hop2)
    r = parse(rtmsg(AF4, 8, 254, attrs=rta(rt.RTA_DST, bytes([10, 0, 0, 0])) + rta(rt.RTA_MULTIPATH, mp)))
    assert r.nexthops == ((ipaddress.ip_address("fe80::2").packed, 10), (bytes([10, 255, 0, 1]), 11))
    assert TAGS.resolve(r) == (ALICE, BOB)


def test_parse_tos_and_source_prefix_into_the_key():
    plain = parse(rtmsg(AF4, 16, 254, attrs=rta(rt.RTA_DST, bytes([10, 1, 0, 0]))))
    body = struct.pack("=BBBBBBBBI", AF4, 16, 0, 0x10, 254, 4, 0, rt.RTN_UNICAST, 0) + rta(rt.RTA_DST, bytes([10, 1, 0, 0]))
    tos = parse(body)
    assert (plain.tos, tos.tos) == (0, 0x10) and plain.key != tos.key
    src = ipaddress.ip_address("fd00:1::").packed
    body = (struct.pack("=BBBBBBBBI", AF6, 32, 48, 0, 254, 4, 0, rt.RTN_UNICAST, 0)
            + rta(rt.RTA_DST, ipaddress.ip_address("2001:db8::").packed) + rta(rt.RTA_SRC, src))
    r = parse(body)
    assert r.src == (48, src) and r.key != route("2001:db8::/32").key


def test_parse_skips_non_unicast_and_default_route_has_zero_dst():
    assert parse(rtmsg(AF4, 32, 255, rtype=3)) is None  # RTN_BROADCAST
    assert parse(rtmsg(AF4, 32, 255, rtype=5)) is None  # RTN_MULTICAST
    # a local route names no peer: a "no peer" entry where the daemon follows its table
    local = parse(rtmsg(AF4, 32, 254, rtype=rt.RTN_LOCAL, attrs=rta(rt.RTA_OIF, struct.pack("=i", 1))))
    assert local.nexthops == () and TAGS.resolve(local) == ()
    r = parse(rtmsg(AF6, 0, 254, attrs=rta(rt.RTA_OIF, struct.pack("=i", 12))))
    assert r.dst == bytes(16) and r.nexthops == ((None, 12),)


def test_table_and_protocol_names():
    assert rt.table_id("main") == 254 and rt.table_id("100") == 100
    assert rt.protocol_id("bird") == 12 and rt.protocol_id("babel") == 42
    for bad, fn in (("nosuch", rt.table_id), ("0", rt.table_id), ("nosuch", rt.protocol_id)):
        try:
            fn(bad)
        except ValueError as e:
            assert repr(bad) in str(e)
        else:
            raise AssertionError(f"{fn.__name__}({bad!r}) accepted")


# -- the parser's layouts: one unpack per message, as the walk reads it ----------

ATTRS4 = {"table": (rt.RTA_TABLE, st.integers(0, 2**32 - 1).map(lambda v: struct.pack("=I", v))),
          "dst": (rt.RTA_DST, st.binary(min_size=4, max_size=4)),
          "gw": (rt.RTA_GATEWAY, st.binary(min_size=4, max_size=4)),
          "via": (rt.RTA_VIA, st.binary(min_size=16, max_size=16).map(lambda a: struct.pack("=H", AF6) + a)),
          "oif": (rt.RTA_OIF, st.integers(-2**31, 2**31 - 1).map(lambda v: struct.pack("=i", v))),
          "prio": (rt.RTA_PRIORITY, st.integers(0, 2**32 - 1).map(lambda v: struct.pack("=I", v))),
          "flow": (rt.RTA_FLOW, st.integers(0, 2**32 - 1).map(lambda v: struct.pack("=I", v))),
          "pref": (20, st.binary(min_size=1, max_size=1)),
          "cacheinfo": (12, st.binary(min_size=32, max_size=32))}


@st.composite
def nexthops(draw, size):
    """RTA_MULTIPATH's payload: rtnexthop {len, flags, hops (weight - 1),
    ifindex} each followed by its own gateway (or via) attribute."""
    out = b""
    for _ in range(draw(st.integers(1, 3))):
        gw = draw(st.sampled_from(["none", "gw", "via"]))
        a = b""
        if gw == "gw":
            a = rta(rt.RTA_GATEWAY, draw(st.binary(min_size=size, max_size=size)))
        elif gw == "via":
            a = rta(rt.RTA_VIA, struct.pack("=H", AF6) + draw(st.binary(min_size=16, max_size=16)))
        out += struct.pack("=HBBi", 8 + len(a), 0, draw(st.integers(0, 255)), draw(st.integers(1, 2**31 - 1))) + a
    return out


ATTRS4["multipath"] = (rt.RTA_MULTIPATH, nexthops(4))
ATTRS4["nhid"] = (rt.RTA_NH_ID, st.integers(0, 2**32 - 1).map(lambda v: struct.pack("=I", v)))
ATTRS6 = {"table": ATTRS4["table"], "oif": ATTRS4["oif"], "prio": ATTRS4["prio"], "pref": ATTRS4["pref"],
          "cacheinfo": ATTRS4["cacheinfo"],
          "dst": (rt.RTA_DST, st.binary(min_size=16, max_size=16)),
          "src": (rt.RTA_SRC, st.binary(min_size=16, max_size=16)),
          "gw": (rt.RTA_GATEWAY, st.binary(min_size=16, max_size=16)),
          "multipath": (rt.RTA_MULTIPATH, nexthops(16)), "nhid": ATTRS4["nhid"]}


@st.composite
def route_message(draw):
    """Any mix of the attributes a route carries, in either family (every
    attribute type the parser reads, and some it skips)."""
    family = draw(st.sampled_from([AF4, AF6]))
    attrs = ATTRS4 if family == AF4 else ATTRS6
    names = draw(st.lists(st.sampled_from(sorted(attrs)), max_size=7))
    body = b"".join(rta(attrs[n][0], draw(attrs[n][1])) for n in names)
    head = struct.pack("=BBBBBBBBI", family, draw(st.integers(0, 32 if family == AF4 else 128)),
                       draw(st.sampled_from([0, 0, 8, 64] if family == AF6 else [0, 0, 8])),
                       draw(st.sampled_from([0, 0x10])), draw(st.sampled_from([254, 100])),
                       draw(st.sampled_from([3, 4, 186])), 0, draw(st.sampled_from([1, 1, 1, 2, 6])), 0)
    return head + body


@settings(max_examples=600, deadline=None)
@given(st.lists(route_message(), min_size=1, max_size=6))
def test_layouts_read_every_message_as_the_walk_does(msgs):
    for m in msgs + msgs:  # the second time, through the layouts learnt
        assert rt.parse_route(m, 0, len(m)) == rt._parse_route(m, 0, len(m))


def test_a_better_route_naming_no_peer_hides_a_worse_one_that_does():
    """A blackhole (or a route via another device) of a lower metric is what
    the kernel uses: the peer's route under it must leave the maps, in
    either order, and come back when the better one goes."""
    k = sync.pkey(AF4, bytes([198, 51, 100, 0]), 24)
    peer = route("198.51.100.0/24", ("10.255.0.2", FRONT), priority=4)
    hole = route("198.51.100.0/24", priority=0)._replace(nexthops=())   # blackhole: no nexthop
    other = route("198.51.100.0/24", ("192.0.2.9", 77), priority=1)     # another device
    for better in (hole, other):
        t = sync.Table(TAGS, sync.Filter())
        assert t.update(peer) == k and t.best(k) == (BOB,)
        assert t.update(better) == k and t.best(k) is None and len(t) == 0
        assert t.update(better, deleted=True) == k and t.best(k) == (BOB,)
        t = sync.Table(TAGS, sync.Filter())
        assert t.update(better) == k and t.entry(k) == ()  # a "no peer" entry
        assert t.update(peer) is None and t.best(k) is None  # the better one was there first
        assert {k2: p for k2, p in t.items()} == {} and dict(t.entries()) == {k: ()}
        assert t.update(better, deleted=True) == k and t.entry(k) == (BOB,)
        assert t.update(peer, deleted=True) == k and t.entry(k) is None


def test_a_route_into_the_front_naming_no_peer_hides_nothing():
    """`ip route add P dev wg0` sends P's packets to the front, where the
    maps choose: a worse route naming a peer still steers them."""
    tags = sync.Tags(TAGS.by_addr, TAGS.by_oif, front=FRONT)
    k = sync.pkey(AF4, bytes([198, 51, 100, 0]), 24)
    t = sync.Table(tags, sync.Filter())
    assert t.update(route("198.51.100.0/24", (None, FRONT))) is None
    assert t.update(route("198.51.100.0/24", ("10.255.0.2", FRONT), priority=4)) == k
    assert t.best(k) == (BOB,)
    assert t.update(route("198.51.100.0/24", ("192.0.2.7", FRONT))) is None  # an unknown gateway on the front
    assert t.best(k) == (BOB,)

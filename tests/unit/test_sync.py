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
    by_oif={11: ALICE, 12: BOB, 13: CAROL})
FRONT = 10


def route(prefix, *nexthops, table=254, priority=0, protocol=4, realm=0):
    net = ipaddress.ip_network(prefix)
    hops = tuple((ipaddress.ip_address(gw).packed if gw else None, oif) for gw, oif in nexthops)
    return rt.KernelRoute(AF4 if net.version == 4 else AF6, net.network_address.packed,
                          net.prefixlen, table, priority, protocol, realm, hops)


def test_resolution_by_every_tag_kind():
    cases = [
        (route("10.1.0.0/16", ("10.255.0.1", FRONT)), (ALICE,)),        # IPv4 gateway tag
        (route("10.1.0.0/16", ("fe80::2", FRONT)), (BOB,)),             # v4 via v6 link-local (RTA_VIA)
        (route("2001:db8::/32", ("fe80::3", FRONT)), (CAROL,)),         # IPv6 link-local tag
        (route("10.1.0.0/16", (None, 12)), (BOB,)),                     # dev <member>
        (route("10.1.0.0/16", ("192.0.2.1", 13)), (CAROL,)),            # unknown gateway, member oif
        (route("10.1.0.0/16", ("fe80::1", 12)), (ALICE,)),              # the gateway tag wins over oif
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


def apply(entries, d):
    for k, peers in d.put.items():
        entries[k] = (abi.Origin.KERNEL, peers)
    for k in d.delete:
        del entries[k]


def expected(kernel, flt):
    """The pure model: per prefix, the best-ranked accepted route naming peers."""
    best = {}
    for r in kernel.values():
        peers = TAGS.resolve(r)
        if not flt.accepts(r) or not peers:
            continue
        k = sync.pkey(r.family, r.dst, r.dst_len)
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
                            st.sampled_from([4, 12])), max_size=40)


@settings(max_examples=300, deadline=None)
@given(events, st.booleans())
def test_any_event_sequence_leaves_maps_equal_to_the_model(seq, filtered):
    flt = sync.Filter(tables=(254, 100), protocols=(12,) if filtered else ())
    t = sync.Table(TAGS, flt)
    kernel = {}
    # the operator's own entries, which the daemon must never touch
    static = {sync.pkey(AF4, bytes([10, 1, 0, 0]), 16): (abi.Origin.STATIC, (CAROL,))}
    entries = dict(static)
    for op, prefix, hops, table, prio, proto in seq:
        r = route(prefix, *hops, table=table, priority=prio, protocol=proto)
        if op == "set":
            kernel[r.key] = r  # add and replace look alike: same key, new nexthops
            changed = t.update(r)
        else:
            if r.key not in kernel:
                continue  # the kernel refuses to delete what it does not have
            # a delete notification describes the route as it was
            changed = t.update(kernel.pop(r.key), deleted=True)
        apply(entries, sync.diff(t, entries, keys={changed} if changed else set()))
        want = expected(kernel, flt)
        kern = {k: v[1] for k, v in entries.items() if v[0] == abi.Origin.KERNEL}
        assert kern == {k: p for k, p in want.items() if k not in static}
        assert {k: t.best(k) for k in t.prefixes} == want
        for k, v in static.items():
            assert entries[k] == v
    # a full resync of an unchanged table writes nothing
    assert len(sync.diff(t, entries)) == 0
    counts = {}
    for peers in expected(kernel, flt).values():
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


def test_parse_skips_non_unicast_and_default_route_has_zero_dst():
    assert parse(rtmsg(AF4, 32, 255, rtype=2)) is None  # RTN_LOCAL
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

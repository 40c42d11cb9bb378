# SPDX-License-Identifier: GPL-2.0-or-later
"""Routes of equal key (wgbpf/ties.py): the maps name the route the kernel
uses, whatever order the routes came in. Each case is what `ip route
append/prepend/replace/del` did on Linux 6.18 (`ip route get` says which
route wins), sent with the nlmsg_flags the kernel sent then."""
import ipaddress
import socket

from wgbpf import routes as rt, sync, ties

from tests.unit.test_sync import ALICE, BOB, CAROL, FRONT, TAGS, route

ADD, APPEND, PREPEND, REPLACE, DEL = 0x600, 0xC00, 0x400, 0x100, 0
LAN = 77  # a device that is no member


def table(union=False):
    return sync.Table(sync.Tags(TAGS.by_addr, TAGS.by_oif, front=FRONT), sync.Filter(), union=union)


def events(t, *steps):
    """(route, flags) in order; flags DEL deletes. Returns the prefix's entry."""
    k = None
    for r, flags in steps:
        t.update(r, flags == DEL, flags)
        k = sync.network_pkey(ipaddress.ip_network((r.dst, r.dst_len)))
    return t.entry(k)


UNDERLAY = route("10.71.0.0/16", ("192.0.2.1", LAN))
S1 = route("10.71.0.0/16", (None, 11))        # dev alice's member
S2 = route("10.71.0.0/16", (None, 12))        # dev bob's member


def test_ipv4_append_keeps_the_first_route():
    # the hostile tester's case: the kernel sends 10.71/16 out the underlay
    assert events(table(), (UNDERLAY, ADD), (S1, APPEND)) == ()
    assert events(table(), (S1, ADD), (UNDERLAY, APPEND), (S2, APPEND)) == (ALICE,)


def test_ipv4_prepend_goes_first_and_replace_replaces_the_first():
    assert events(table(), (UNDERLAY, ADD), (S1, PREPEND)) == (ALICE,)
    assert events(table(), (UNDERLAY, ADD), (S1, APPEND), (S2, REPLACE)) == (BOB,)
    # the replaced first route is gone: deleting bob's leaves alice's
    assert events(table(), (UNDERLAY, ADD), (S1, APPEND), (S2, REPLACE), (S2, DEL)) == (ALICE,)


def test_ipv4_delete_takes_the_route_it_names():
    t = table()
    assert events(t, (S1, ADD), (S2, APPEND), (UNDERLAY, APPEND)) == (ALICE,)
    assert events(t, (S2, DEL)) == (ALICE,)
    assert events(t, (S1, DEL)) == ()          # the underlay's: no peer
    assert events(t, (UNDERLAY, DEL)) is None
    assert t.ties == {} and t.prefixes == {}


def test_a_dump_gives_routes_in_the_kernels_order():
    t = table()
    assert events(t, (UNDERLAY, ties.DUMP), (S1, ties.DUMP)) == ()
    assert events(t, (UNDERLAY, DEL)) == (ALICE,)
    assert t.ties == {}  # one route left: no tie kept


V6_S1 = route("2001:db8:71::/48", (None, 11), priority=1024)
V6_S2 = route("2001:db8:71::/48", (None, 12), priority=1024)
V6_VIA_A = route("2001:db8:71::/48", ("fe80::1", FRONT), priority=1024)


def test_ipv6_equal_metric_routes_naming_different_peers_name_none():
    # the kernel picks between them per lookup (round robin, neighbour state)
    t = table()
    assert events(t, (V6_S1, ADD), (V6_S2, APPEND)) == ()
    assert t.ambiguous() == 1
    assert events(t, (V6_S2, DEL)) == (ALICE,)
    assert t.ambiguous() == 0
    assert events(table(), (V6_VIA_A, ADD), (V6_S2, APPEND)) == ()
    # IPv6 puts a prepended route after the others: still both
    assert events(table(), (V6_S1, ADD), (V6_S2, PREPEND)) == ()


def test_ipv6_equal_metric_routes_naming_one_peer_name_it():
    assert events(table(), (V6_S1, ADD), (route("2001:db8:71::/48", ("fe80::9", 11), priority=1024),
                                          APPEND)) == (ALICE,)


def test_ipv6_appended_gateway_is_merged_into_the_multipath():
    # the kernel sends the whole multipath route, append flags and all
    t = table()
    a = route("2001:db8:72::/48", ("fe80::1", FRONT), priority=1024)
    ab = route("2001:db8:72::/48", ("fe80::2", FRONT), ("fe80::1", FRONT), priority=1024)
    assert events(t, (a, ADD), (ab, APPEND)) == (ALICE, BOB)
    # one hop removed: IPv6 names that hop alone
    assert events(t, (route("2001:db8:72::/48", ("fe80::2", FRONT), priority=1024), DEL)) == (ALICE,)
    # a non-gateway route beside the multipath: the kernel may pick either
    t = table()
    events(t, (ab, ADD))
    assert events(t, (route("2001:db8:72::/48", (None, 13), priority=1024), APPEND)) == ()
    assert events(t, (route("2001:db8:72::/48", (None, 13), priority=1024), DEL)) == (ALICE, BOB)


def test_the_kernels_link_local_routes_are_not_followed():
    t = table()
    for oif in (10, 11, 12, 13):  # fe80::/64 on every device, metric 256 each
        assert t.update(route("fe80::/64", (None, oif), priority=256), False, ADD) is None
    assert t.prefixes == {}


def test_the_accept_table_takes_every_route_of_a_tie():
    t = table(union=True)
    assert events(t, (UNDERLAY, ADD), (S1, APPEND), (S2, APPEND)) == (ALICE, BOB)


def test_a_deleted_object_leaves_the_tie_and_the_first_route_wins_again():
    t = table()
    nh = rt.Nexthop(7, socket.AF_INET, socket.inet_aton("10.255.0.2"), FRONT, False)
    t.tags.nexthops.set(nh)
    via7 = route("10.71.0.0/16")._replace(nexthops=((rt.NH, 7),))
    assert events(t, (via7, ADD), (S1, APPEND)) == (BOB,)
    k = sync.network_pkey(ipaddress.ip_network("10.71.0.0/16"))
    t.tags.nexthops.remove(7)
    assert k in t.drop_nexthops({7})
    assert t.entry(k) == (ALICE,)


def test_a_repeated_route_after_a_reread_is_not_a_second_route():
    t = table()
    events(t, (S1, ADD), (S2, APPEND))
    assert t.update(S2, False, APPEND) is None   # the kernel refuses the same route twice
    assert events(t, (S2, DEL)) == (ALICE,)
    assert events(t, (S1, DEL)) is None


def test_placement_follows_the_flags_per_family():
    one = ((None, 11),)
    assert ties.placement(socket.AF_INET, APPEND, one) == ties.APPEND
    assert ties.placement(socket.AF_INET, PREPEND, one) == ties.PREPEND
    assert ties.placement(socket.AF_INET, REPLACE, one) == ties.FIRST
    assert ties.placement(socket.AF_INET, ADD, one) == ties.FIRST
    assert ties.placement(socket.AF_INET6, PREPEND, one) == ties.APPEND
    assert ties.placement(socket.AF_INET6, APPEND, ((b"\xfe\x80" + bytes(14), 1), (b"\xfe\x80" + bytes(13) + b"\x02", 2))) \
        == ties.MERGE


def dumped(t, *routes):
    """Routes as a dump gives them (backends.base.dump_tables): each after
    the one before it, so a tie's first route is known."""
    prev = None
    for r in routes:
        t.prev = prev
        t.update(r, False, ties.DUMP)
        prev = r
    t.prev = None
    return t


# the hostile tester's cases, after the first version of ties (each failed it)

def test_a_bare_ipv4_delete_takes_the_first_route_even_when_a_later_one_looks_the_same():
    bob = route("10.97.0.0/16", ("10.255.0.2", FRONT))
    alice = route("10.97.0.0/16", ("10.255.0.1", FRONT))
    # `add bob mtu 1300; append alice; append bob; del`: the kernel deletes the first
    t = table()
    assert events(t, (bob, ADD), (alice, APPEND), (bob, APPEND)) == (BOB,)
    assert t.unsure  # the first route's nexthops were not kept: read again soon
    assert events(t, (bob, DEL)) == (ALICE,)


def test_ipv6_replace_takes_the_first_route_of_its_kind():
    via_a = route("fd00:80::/32", ("fe80::1", FRONT), priority=1024)
    dev_c = route("fd00:80::/32", (None, 13), priority=1024)
    dev_a = route("fd00:80::/32", (None, 11), priority=1024)
    t = dumped(table(), via_a, dev_c)
    assert not t.unsure
    k = sync.network_pkey(ipaddress.ip_network("fd00:80::/32"))
    assert t.entry(k) == ()  # alice or carol, per lookup
    assert events(t, (dev_a, REPLACE)) == (ALICE,)  # the kernel replaced `dev carol`, not the gateway
    assert events(t, (dev_a, DEL)) == (ALICE,)
    assert events(t, (via_a, DEL)) is None


def test_ipv6_appended_gateway_merges_into_the_gateway_route_not_the_device_one():
    p = "fd00:b3::/32"
    dev_b = route(p, (None, 12), priority=1024)
    via_1 = route(p, ("fe80::1", FRONT), priority=1024)
    via_31 = route(p, ("fe80::3", FRONT), ("fe80::1", FRONT), priority=1024)
    t = dumped(table(), dev_b, via_1)
    assert events(t, (via_31, APPEND)) == ()    # bob, or alice+carol: no single peer
    assert events(t, (dev_b, DEL)) == (ALICE, CAROL)  # the multipath route is left
    assert events(t, (via_31, DEL)) is None


def test_an_event_tie_is_unsure_and_a_dump_tie_is_not():
    assert table().unsure is False
    t = table()
    events(t, (S1, ADD), (S2, APPEND))
    assert t.unsure
    assert not dumped(table(), S1, S2).unsure

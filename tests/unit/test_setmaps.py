# SPDX-License-Identifier: GPL-2.0-or-later
"""Peer sets as the data plane reads them (wgbpf/setmaps.py, issue 31):
buckets in proportion to weights, few flows moved when a member leaves or
comes back, and the daemon's set ids (KernelSets): interned by content,
nexthop objects' sets rewritten in place (one write a change, whatever
the routes through them), kept across a restart, freed when unnamed.

"Flows" are 10,000 random 32-bit flow hashes, each taking the bucket its
low 6 bits name, as bpf/lookup.h's pick() does."""
import random

import pytest
from hypothesis import given, strategies as st

from wgbpf import abi, setmaps, sync
from wgbpf.routes import NH, Nexthop
from wgbpf.setmaps import BUCKETS, KernelSets, fill, quotas
from wgbtest import MemSets

_RNG = random.Random(31)
HASHES = [_RNG.getrandbits(32) for _ in range(10000)]


def owners(members, buckets):
    """The peer each flow hash goes to."""
    return [members[buckets[h & (BUCKETS - 1)]] for h in HASHES]


def moved(a, b):
    return sum(x != y for x, y in zip(a, b)) / len(a)


@pytest.mark.parametrize("weights, want", [
    ((1,), [64]), ((3, 1), [48, 16]), ((1, 1, 1), [22, 21, 21]), ((1, 3), [16, 48]),
    ((65535, 1), [64, 0]), ((1, 2, 3, 4, 5, 6, 7, 8), None),
])
def test_quotas_are_the_weights_to_one_bucket(weights, want):
    got = quotas(list(weights))
    assert sum(got) == BUCKETS
    total = sum(weights)
    for q, w in zip(got, weights):
        assert abs(q / BUCKETS - w / total) <= 1 / BUCKETS
    if want is not None:
        assert got == want


@given(st.lists(st.integers(1, 65535), min_size=1, max_size=abi.MAX_ECMP))
def test_flows_split_by_weight_to_within_a_bucket(weights):
    members = tuple(range(1, len(weights) + 1))
    b = fill(members, tuple(weights))
    assert len(b) == BUCKETS and max(b) < len(members)
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(b.count(i) / BUCKETS - w / total) <= 1 / BUCKETS


def test_a_3_to_1_set_sends_three_quarters_of_the_flows_to_the_heavy_member():
    got = owners((7, 9), fill((7, 9), (3, 1)))
    assert abs(got.count(7) / len(got) - 0.75) <= 1 / 64 + 0.01  # the table, and 10,000 hashes' spread


def test_a_65536_weight_is_stored_scaled_and_split_exactly():
    """The kernel takes group weights up to 65536 (it keeps weight - 1);
    the map holds u16s: scaled, never a struct error in the daemon."""
    v = setmaps.pack((1, 2), (65536, 65536 // 3), abi.SetKind.NEXTHOP, 5)
    kind, nhid, members, weights, buckets = setmaps.unpack(v)
    assert (kind, nhid, members, weights) == (abi.SetKind.NEXTHOP, 5, (1, 2), (65535, 21844))
    assert (buckets.count(0), buckets.count(1)) == (48, 16)


def test_fills_are_the_same_in_every_process():
    assert fill((2, 5, 9)) == fill((2, 5, 9)) and fill((2, 5, 9)) != fill((2, 5, 11))


@pytest.mark.parametrize("gone", [0, 1, 2, 3])
def test_one_of_four_leaving_moves_its_flows_only_and_they_come_back(gone):
    """A set rewritten in place (a nexthop object's, or a set made for the
    routes that lost a member): at most 1/4 + 1/64 of 10,000 flows move,
    all of them the leaver's; when it comes back, at most its share."""
    four = (11, 22, 33, 44)
    b4 = fill(four)
    three = tuple(p for p in four if p != four[gone])
    b3 = fill(three, keep=(four, b4))
    before, after = owners(four, b4), owners(three, b3)
    assert moved(before, after) <= 1 / 4 + 1 / 64
    assert all(x == y for x, y in zip(before, after) if x != four[gone])
    back = owners(four, fill(four, keep=(three, b3)))
    assert moved(after, back) <= 1 / 4 + 1 / 64
    assert all(y == four[gone] for x, y in zip(after, back) if x != y)


def test_weights_changed_in_place_move_only_the_difference():
    b = fill((1, 2), (1, 1))
    c = fill((1, 2), (3, 1), keep=((1, 2), b))
    assert sum(x != y for x, y in zip(b, c)) == 16  # a quarter of the buckets went from 2 to 1


# -- KernelSets over a sets array in memory ------------------------------------------
A, B, C, D = (bytes([10, 255, 0, n]) for n in (1, 2, 3, 4))
FRONT = 5


def hop(tag):
    return (tag, FRONT)


def tags_with(objects):
    t = sync.Tags({A: 1, B: 2, C: 3, D: 4}, {}, front=FRONT)
    t.nexthops = sync.Nexthops(objects)
    return t


def test_interned_by_content_weights_included():
    mem = MemSets()
    ks = KernelSets(mem)
    assert ks.interned((1, 2)) == ks.interned((1, 2)) != ks.interned((1, 2), (3, 1))
    assert ks.interned(()) == 0
    assert all(i < abi.OPERATOR_SETS for i in mem.values)  # the daemon's range


def test_a_replaced_nexthop_object_is_one_write_and_keeps_its_id():
    """500 prefixes through one object: replacing it rewrites its set, no
    route; the set's id stays, so the routes need no write."""
    singles = [Nexthop(i, 2, tag, FRONT) for i, tag in ((1, A), (2, B), (3, C))]
    mem = MemSets()
    tags = tags_with(singles + [Nexthop(10, 0, group=((1, 1), (2, 1)))])
    table = sync.Table(tags, sync.Filter())
    table.by_id = True
    ks = KernelSets(mem)
    ks.bind(tags)
    from wgbpf.routes import KernelRoute
    keys = [table.update(KernelRoute(2, bytes([10, i // 256, i % 256, 0]), 24, 254, 0, 4, 0, ((NH, 10),)))
            for i in range(500)]
    kids = {ks.kid(table.entry_id(k)) for k in keys}
    assert len(kids) == 1
    before = owners((1, 2), mem.values[next(iter(kids))][-BUCKETS:])
    writes = mem.writes
    gone, changed = tags.nexthops.replace_all(singles + [Nexthop(10, 0, group=((1, 1), (2, 1), (3, 1)))])
    slots = tags.refresh(changed)
    assert table.nexthop_keys_of(slots) == set()  # no prefix to write
    ks.follow()
    assert mem.writes == writes + 1
    assert {ks.kid(table.entry_id(k)) for k in keys} == kids
    kind, nhid, members, _w, buckets = setmaps.unpack(mem.values[next(iter(kids))])
    assert (kind, nhid, members) == (abi.SetKind.NEXTHOP, 10, (1, 2, 3))
    assert moved(before, owners(members, buckets)) <= 1 / 3 + 1 / 64  # only carol's share moved


def test_a_route_losing_a_peer_moves_only_its_flows():
    """A plain multipath route (no object) through four tags loses one: the
    set made for it starts from the old set's buckets."""
    from wgbpf.routes import KernelRoute
    mem = MemSets()
    tags = tags_with([])
    table = sync.Table(tags, sync.Filter())
    table.by_id = True
    ks = KernelSets(mem)
    ks.bind(tags)
    k = table.update(KernelRoute(2, bytes([10, 1, 0, 0]), 16, 254, 0, 4, 0, tuple(hop(t) for t in (A, B, C, D))))
    first = ks.kid(table.entry_id(k))
    table.update(KernelRoute(2, bytes([10, 1, 0, 0]), 16, 254, 0, 4, 0, tuple(hop(t) for t in (A, C, D))))
    second = ks.kid(table.entry_id(k))
    a, b = (setmaps.unpack(mem.values[i]) for i in (first, second))
    before, after = owners(a[2], a[4]), owners(b[2], b[4])
    assert moved(before, after) <= 1 / 4 + 1 / 64
    assert all(x == y for x, y in zip(before, after) if x != 2)


def test_a_restarted_daemon_adopts_the_ids_and_frees_the_unnamed():
    mem = MemSets()
    ks = KernelSets(mem)
    one, two = ks.interned((1, 2)), ks.interned((3,), None)
    again = KernelSets(mem)  # a new daemon on the same maps
    assert again.interned((1, 2)) == one and again.interned((3,)) == two
    writes = mem.writes
    assert again.sweep({one}) == 1  # set (3,) named by no route: freed
    assert mem.writes == writes + 1
    assert setmaps.unpack(mem.values[two])[0] == abi.SetKind.FREE
    assert again.interned((4,)) == two  # its id is taken again


def test_out_of_ids_is_a_clear_error():
    mem = MemSets()
    ks = KernelSets(mem)
    ks.free = ks.free[-2:]
    ks.interned((1,))
    ks.interned((2,))
    with pytest.raises(setmaps.SetsFull, match="full sync frees"):
        ks.interned((3,))


def test_out_of_ids_a_route_names_no_peer_and_the_backend_is_told():
    """Fail closed, never a traceback: the set a route wants cannot be
    made, so the prefix names no peer (withdrawals go on), counted."""
    from wgbpf.routes import KernelRoute
    tags = tags_with([])
    table = sync.Table(tags, sync.Filter())
    table.by_id = True
    ks = KernelSets(MemSets())
    ks.bind(tags)
    ks.free = []
    k = table.update(KernelRoute(2, bytes([10, 1, 0, 0]), 16, 254, 0, 4, 0, (hop(A), hop(B))))
    assert ks.entry(table)(k) == 0 and ks.short == 1 and ks.exhausted
    ks.free = [5]  # a sweep freed one: the next asks again, and gets it
    assert ks.entry(table)(k) == 5


def test_a_failed_set_write_leaves_no_trace():
    class Refusing(MemSets):
        refuse = True

        def write(self, sid, value):
            if self.refuse:
                self.refuse = False
                raise OSError("refused")
            super().write(sid, value)
    mem = Refusing()
    ks = KernelSets(mem)
    with pytest.raises(OSError):
        ks.interned((1, 2))
    k = ks.interned((1, 2))  # made now, on the id the failed write did not take
    assert setmaps.unpack(mem.values[k])[2] == (1, 2) and k not in ks.free and ks.interned((1, 2)) == k


def test_an_object_made_again_under_its_id_is_adopted_by_its_new_set():
    """A deleted object's set stays for the routes that may name it, but is
    no longer its id's: after a restart the object made again under that
    id is found by its new set, and nothing moves."""
    singles = [Nexthop(i, 2, tag, FRONT) for i, tag in ((1, A), (2, B), (3, C))]
    mem = MemSets()
    tags = tags_with(singles + [Nexthop(400, 0, group=((1, 1), (3, 1)))])
    ks = KernelSets(mem)
    ks.bind(tags)
    old = ks.kid(tags.slot(400))
    tags.nexthops.replace_all(singles)
    tags.release([400])
    ks.follow()
    tags.nexthops.replace_all(singles + [Nexthop(400, 0, group=((1, 2), (3, 1)))])
    new = ks.kid(tags.slot(400))
    assert new != old
    again = KernelSets(mem)  # the restart
    assert again.by_nexthop == {400: new} and old in again.retired

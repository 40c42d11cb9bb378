# SPDX-License-Identifier: GPL-2.0-or-later
"""DIR-24-8 compile and patch, on bytearrays (no root): every input form (a
dict, the sync engine's prefix keys, routes4's raw batch reads) compiles to
the same bytes, and those bytes, compiled or patched prefix by prefix,
answer every address as a brute-force longest match does."""
import ctypes
import random

import pytest
from hypothesis import given, settings, strategies as st

from wgbpf import abi
from wgbpf.dir24 import GROUP_ENTRIES, Dir24, Dir24Error

GROUPS = 64  # small tables keep the test fast; the maps hold abi.DIR8_GROUPS

PEERS = st.sampled_from([(1,), (2,), (3,), (1, 2), (2, 3, 4), (7,)])


def mask(plen):
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0


def normalized(raw):
    return {(addr & mask(plen), plen): peers for (addr, plen), peers in raw.items()}


def longest(prefixes, addr, bound=32):
    """(plen, peers) of the longest prefix no longer than bound covering addr."""
    best = None
    for (a, plen), peers in prefixes.items():
        if plen <= bound and addr & mask(plen) == a and (best is None or plen > best[0]):
            best = (plen, peers)
    return best


SIDS = {}  # peers -> set id, as the sets map interns them (one numbering for the whole run)
SETS = {}  # set id -> peers


def sid(peers):
    i = SIDS.get(peers)
    if i is None:
        i = SIDS[peers] = len(SIDS) + 1
        SETS[i] = peers
    return i


class Peers:
    """A Dir24 spoken to in peer sets, as the tests write them: each set is
    interned to an id here, as routes4's entries name the sets map's."""

    def __init__(self, d):
        self.d = d

    def rebuild(self, p):
        self.d.rebuild({k: sid(v) for k, v in p.items()})

    def rebuild_keys(self, keys, peers):
        self.d.rebuild_keys(keys, [sid(x) for x in peers])

    def change(self, addr, plen, peers):
        self.d.change(addr, plen, None if peers is None else sid(peers))

    def __getattr__(self, name):
        return getattr(self.d, name)

    @property
    def writes(self):
        return self.d.writes

    @writes.setter
    def writes(self, n):
        self.d.writes = n


def tables(model):
    """A Dir24 over bytearrays whose `route` asks `model` (the dict the test
    keeps as routes4: changed before Dir24.change, as the daemon writes the
    map first), and the sets its entries name."""
    def route(addr, bound):
        hit = longest(model, addr, bound)
        return None if hit is None else (hit[0], sid(hit[1]))
    d = Dir24(bytearray(2 << 24), bytearray(2 * GROUP_ENTRIES * GROUPS), route)
    return Peers(d), SETS


def check(d, sets, prefixes, rng):
    """Every prefix's edges, an address inside, the addresses just outside,
    and random ones: the set the tables give is the longest match's."""
    probes = [rng.getrandbits(32) for _ in range(50)]
    for a, plen in prefixes:
        size = 1 << (32 - plen)
        probes += [a, a + size - 1, (a - 1) & 0xFFFFFFFF, (a + size) & 0xFFFFFFFF, a + rng.randrange(size)]
    for addr in probes:
        sid = d.lookup(addr)
        want = longest(prefixes, addr)
        assert (sets[sid] if sid else None) == (want[1] if want else None), hex(addr)


def few_groups(p, groups=GROUPS):
    return len({a >> 8 for a, plen in p if plen > 24}) <= groups


# anywhere in IPv4, any length
anywhere = st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 32))
# clustered in 10.0.0.0/12 so prefixes nest and share /24s
clustered = st.tuples(st.integers(0, (1 << 20) - 1), st.sampled_from([0, 8, 12, 16, 20, 23, 24, 25, 28, 31, 32])) \
    .map(lambda t: ((10 << 24) | (t[0] << 4), t[1]))


def pkey(addr, plen):
    return bytes((2, plen)) + addr.to_bytes(4, "big")


def raw_batches(prefixes, per_batch):
    """routes4 as lookup_batch_raw yields it: Key4s and Routes, packed."""
    items = list(prefixes.items())
    rsize = ctypes.sizeof(abi.Route)
    for at in range(0, len(items), per_batch):
        chunk = items[at:at + per_batch]
        keys, values = b"", b""
        for (addr, plen), peers in chunk:
            keys += bytes(abi.Key4(plen, (ctypes.c_uint8 * 4)(*addr.to_bytes(4, "big"))))
            values += bytes(abi.Route(set=sid(peers), origin=random.randrange(3), prefixlen=plen))
        yield keys + bytes(8), values + bytes(rsize), len(chunk)  # a buffer may be longer than count


@settings(max_examples=15, deadline=None)
@given(st.dictionaries(anywhere, PEERS, max_size=40), st.randoms(), st.integers(1, 7))
def test_every_input_form_compiles_the_same_longest_match(raw, rng, per_batch):
    p = normalized(raw)
    if not few_groups(p):
        return
    d, sets = tables(p)
    d.rebuild(p)
    check(d, sets, p, rng)

    k, _ = tables(p)
    ipv6 = [bytes((10, 64)) + bytes(16)]  # skipped
    k.rebuild_keys([pkey(*x) for x in p] + ipv6, list(p.values()) + [(1,)])
    assert bytes(k.tbl24) == bytes(d.tbl24) and bytes(k.tbl8) == bytes(d.tbl8)

    r, _ = tables(p)
    r.rebuild_raw(raw_batches(p, per_batch), ctypes.sizeof(abi.Route))
    assert bytes(r.tbl24) == bytes(d.tbl24) and bytes(r.tbl8) == bytes(d.tbl8)
    assert r.depth == d.depth


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([anywhere, clustered]), st.data(), st.randoms())
def test_changes_match_longest_match_and_a_fresh_compile(keys, data, rng):
    p = normalized(data.draw(st.dictionaries(keys, PEERS, max_size=25)))
    changes = data.draw(st.lists(st.tuples(keys, st.one_of(st.none(), PEERS)), max_size=25))
    if not few_groups(p, GROUPS // 2):
        return
    d, sets = tables(p)
    d.rebuild_keys([pkey(*x) for x in p], list(p.values()))
    for k, peers in changes:
        (addr, plen), = normalized({k: None})
        if peers is None:
            p.pop((addr, plen), None)
        else:
            p[(addr, plen)] = peers
        d.change(addr, plen, peers)
    check(d, sets, p, rng)
    # the same bytes, but for set numbering, as compiling the result afresh
    fresh, fresh_sets = tables(p)
    fresh.rebuild(p)
    assert fresh.depth == d.depth
    for a, plen in list(p)[:20]:
        assert fresh_sets.get(fresh.lookup(a)) == sets.get(d.lookup(a))


def test_a_realistic_table_slice_equals_the_reference():
    """Internet-like lengths (mostly /24, /22, /23, /20, /16, some longer),
    clustered enough to nest: 3,000 prefixes against the brute force, then
    300 of them removed and 300 changed one by one."""
    rng = random.Random(7)
    lengths = [24] * 60 + [22] * 12 + [23] * 10 + [20] * 4 + [21] * 4 + [16] * 2 + [19] * 3 + [8, 12] + [28, 32, 26]
    p = {}
    while len(p) < 3000:
        plen = rng.choice(lengths)
        addr = (rng.choice([11, 45, 193]) << 24 | rng.getrandbits(16) << 8) & mask(plen)
        if plen > 24 and not few_groups(p, GROUPS - 2):
            continue
        p[(addr, plen)] = rng.choice([(1,), (2,), (1, 2)])
    d, sets = tables(p)
    d.rebuild_keys([pkey(*x) for x in p], list(p.values()))
    check(d, sets, p, rng)
    for k in rng.sample(sorted(p), 600)[:300]:
        del p[k]
        d.change(*k, None)
    for k in rng.sample(sorted(p), 300):
        p[k] = rng.choice([(3,), (2, 3)])
        d.change(*k, p[k])
    check(d, sets, p, rng)


@settings(max_examples=15, deadline=None)
@given(st.dictionaries(anywhere, st.sampled_from([(1,), (2,), (9,), (1023,)]), max_size=40), st.randoms())
def test_raw_reads_of_single_peer_routes_take_the_short_way_to_the_same_bytes(raw, rng):
    p = normalized(raw)
    if not few_groups(p):
        return
    d, sets = tables(p)
    d.rebuild(p)
    r, _ = tables(p)
    r.rebuild_raw(raw_batches(p, 5), ctypes.sizeof(abi.Route))
    assert bytes(r.tbl24) == bytes(d.tbl24) and bytes(r.tbl8) == bytes(d.tbl8)
    check(r, sets, p, rng)


def test_unchanged_rebuild_writes_nothing_and_a_change_touches_only_its_blocks():
    prefixes = {(0x0A000000, 8): (1,), (0x0A010000, 16): (2,), (0x0A010203, 32): (3,)}
    d, sets = tables(prefixes)
    d.rebuild(prefixes)
    d.writes = 0
    d.rebuild(dict(prefixes))
    assert d.writes == 0
    prefixes[(0x0A020300, 24)] = (2,)
    d.change(0x0A020300, 24, (2,))
    assert d.writes == 2  # one /24 entry
    assert sets[d.lookup(0x0A020301)] == (2,) and sets[d.lookup(0x0A020401)] == (1,)
    del prefixes[(0x0A010203, 32)]
    d.change(0x0A010203, 32, None)  # the last long prefix of its /24: the group goes
    assert sets[d.lookup(0x0A010203)] == (2,) and not d.groups
    del prefixes[(0x0A010000, 16)]
    d.writes = 0
    d.change(0x0A010000, 16, None)  # its 256 /24s show the /8 that covers it
    assert sets[d.lookup(0x0A010203)] == (1,) and d.writes == 2 * 256


def test_group_limit_is_an_error():
    d, _ = tables({})
    with pytest.raises(Dir24Error, match="groups"):
        d.rebuild({((10 << 24) | (i << 8) | 1, 32): (1,) for i in range(GROUPS + 1)})
    assert abi.DIR_GROUP == 0x8000  # the group flag is the top bit of a u16 entry

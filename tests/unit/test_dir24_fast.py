"""DIR-24-8's input forms (a dict, the sync engine's prefix keys, routes4's
raw batch reads) compile to the same bytes, and those bytes answer every
address as a brute-force longest match does, for random prefix sets over
all of IPv4 and every length (no root: bytearrays)."""
import ctypes
import random

from hypothesis import given, settings, strategies as st

from wgbpf import abi
from wgbpf.dir24 import GROUP_ENTRIES, Dir24
from wgbpf.maps import value_peers

GROUPS = 64  # small tables keep the test fast; the maps hold abi.DIR8_GROUPS

PEERS = st.sampled_from([(1,), (2,), (3,), (1, 2), (2, 3, 4), (7,)])


def normalized(raw):
    out = {}
    for (addr, plen), peers in raw.items():
        addr &= (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0
        out[(addr, plen)] = peers
    return out


def tables():
    sets = {}
    d = Dir24(bytearray(2 << 24), bytearray(2 * GROUP_ENTRIES * GROUPS),
              lambda sid, peers: sets.__setitem__(sid, peers))
    return d, sets


def reference(prefixes, addr):
    best = None
    for (a, plen), peers in prefixes.items():
        mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0
        if addr & mask == a and (best is None or plen > best[0]):
            best = (plen, peers)
    return best[1] if best else None


def check(d, sets, prefixes, rng):
    """Every prefix's edges, an address inside, the addresses just outside,
    and random ones: the set the tables give is the longest match's."""
    probes = [rng.getrandbits(32) for _ in range(50)]
    for a, plen in prefixes:
        size = 1 << (32 - plen)
        probes += [a, a + size - 1, (a - 1) & 0xFFFFFFFF, (a + size) & 0xFFFFFFFF, a + rng.randrange(size)]
    for addr in probes:
        sid = d.lookup(addr)
        assert (sets[sid] if sid else None) == reference(prefixes, addr), hex(addr)


# anywhere in IPv4, any length; few enough longer than /24 for GROUPS
prefixes = st.dictionaries(st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 32)), PEERS, max_size=40)


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
            r = abi.Route(count=len(peers), origin=random.randrange(3), prefixlen=plen)
            for i, p in enumerate(peers):
                r.peers[i] = p
            values += bytes(r)
        yield keys + bytes(8), values + bytes(rsize), len(chunk)  # a buffer may be longer than count


@settings(max_examples=15, deadline=None)
@given(prefixes, st.randoms(), st.integers(1, 7))
def test_every_input_form_compiles_the_same_longest_match(raw, rng, per_batch):
    p = normalized(raw)
    if len({a >> 8 for a, plen in p if plen > 24}) > GROUPS:
        return
    d, sets = tables()
    d.rebuild(p)
    check(d, sets, p, rng)

    k, _ = tables()
    ipv6 = [bytes((10, 64)) + bytes(16)]  # skipped
    k.rebuild_keys([pkey(*x) for x in p] + ipv6, list(p.values()) + [(1,)])
    assert bytes(k.tbl24) == bytes(d.tbl24) and bytes(k.tbl8) == bytes(d.tbl8)

    r, _ = tables()
    r.rebuild_raw(raw_batches(p, per_batch), ctypes.sizeof(abi.Route), value_peers)
    assert bytes(r.tbl24) == bytes(d.tbl24) and bytes(r.tbl8) == bytes(d.tbl8)
    assert r.set_ids == d.set_ids and r.set_refs == d.set_refs


@settings(max_examples=15, deadline=None)
@given(prefixes, st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(8, 32), st.one_of(st.none(), PEERS)),
                          max_size=20), st.randoms())
def test_changes_after_a_fast_build_match_longest_match(raw, changes, rng):
    p = normalized(raw)
    if len({a >> 8 for a, plen in p if plen > 24}) > GROUPS // 2:
        return
    d, sets = tables()
    d.rebuild_keys([pkey(*x) for x in p], list(p.values()))
    for addr, plen, peers in changes:
        (addr, plen), = normalized({(addr, plen): None})
        d.change(addr, plen, peers)
        if peers is None:
            p.pop((addr, plen), None)
        else:
            p[(addr, plen)] = peers
    check(d, sets, p, rng)
    used = {}
    for peers in p.values():
        used[d.set_ids[peers]] = used.get(d.set_ids[peers], 0) + 1
    assert d.set_refs == used


def test_a_realistic_table_slice_equals_the_reference():
    """Internet-like lengths (mostly /24, /22, /23, /20, /16, some longer),
    clustered enough to nest: 3,000 prefixes against the brute force."""
    rng = random.Random(7)
    lengths = [24] * 60 + [22] * 12 + [23] * 10 + [20] * 4 + [21] * 4 + [16] * 2 + [19] * 3 + [8, 12] + [28, 32, 26]
    p = {}
    while len(p) < 3000:
        plen = rng.choice(lengths)
        addr = (rng.choice([11, 45, 193]) << 24 | rng.getrandbits(16) << 8) & ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF)
        if plen > 24 and len({a >> 8 for a, L in p if L > 24}) >= GROUPS - 1:
            continue
        p[(addr, plen)] = rng.choice([(1,), (2,), (1, 2)])
    d, sets = tables()
    d.rebuild_keys([pkey(*x) for x in p], list(p.values()))
    check(d, sets, p, rng)
    assert isinstance(d, Dir24)


@settings(max_examples=15, deadline=None)
@given(st.dictionaries(st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 32)),
                       st.sampled_from([(1,), (2,), (9,), (1023,)]), max_size=40), st.randoms())
def test_raw_reads_of_single_peer_routes_take_the_short_way_to_the_same_bytes(raw, rng):
    p = normalized(raw)
    if len({a >> 8 for a, plen in p if plen > 24}) > GROUPS:
        return
    d, sets = tables()
    d.rebuild(p)
    r, _ = tables()
    r.rebuild_raw(raw_batches(p, 5), ctypes.sizeof(abi.Route), value_peers)
    assert bytes(r.tbl24) == bytes(d.tbl24) and bytes(r.tbl8) == bytes(d.tbl8)
    assert r.set_ids == d.set_ids and r.set_refs == d.set_refs
    check(r, sets, p, rng)

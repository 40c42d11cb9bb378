"""DIR-24-8 compile and patch, against a brute-force longest match, on
bytearrays (no root): what the data plane would read for any address."""
import ipaddress
import random

from hypothesis import given, settings, strategies as st

from wgbpf import abi
from wgbpf.dir24 import Dir24, GROUP_ENTRIES

GROUPS = 64  # small tables keep the test fast; the maps hold abi.DIR8_GROUPS


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


def probe_addresses(prefixes, rng):
    """Addresses at the edges of and inside every prefix, and some random."""
    out = [rng.getrandbits(32) for _ in range(50)]
    for a, plen in prefixes:
        size = 1 << (32 - plen)
        out += [a, a + size - 1, (a - 1) & 0xFFFFFFFF, (a + size) & 0xFFFFFFFF, a + rng.randrange(size)]
    return out


def check(d, sets, prefixes, rng):
    for addr in probe_addresses(prefixes, rng):
        sid = d.lookup(addr)
        got = sets[sid] if sid else None
        assert got == reference(prefixes, addr), (str(ipaddress.ip_address(addr)), got)


def prefix_strategy():
    # clustered in 10.0.0.0/12 so prefixes nest and share /24s
    return st.tuples(st.integers(0, (1 << 20) - 1), st.sampled_from([0, 8, 12, 16, 20, 23, 24, 25, 28, 31, 32]))


def normalize(base, plen):
    addr = (10 << 24) | (base << 4)
    mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0
    return addr & mask, plen


peers = st.sampled_from([(1,), (2,), (3,), (1, 2), (2, 3, 4)])


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(prefix_strategy(), peers, max_size=25), st.randoms())
def test_rebuild_matches_longest_match(raw, rng):
    prefixes = {normalize(*k): v for k, v in raw.items()}
    d, sets = tables()
    d.rebuild(prefixes)
    check(d, sets, prefixes, rng)


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(prefix_strategy(), peers, max_size=15),
       st.lists(st.tuples(prefix_strategy(), st.one_of(st.none(), peers)), max_size=25), st.randoms())
def test_changes_match_longest_match_and_a_fresh_rebuild(raw, changes, rng):
    prefixes = {normalize(*k): v for k, v in raw.items()}
    d, sets = tables()
    d.rebuild(prefixes)
    for k, p in changes:
        a, plen = normalize(*k)
        d.change(a, plen, p)
        if p is None:
            prefixes.pop((a, plen), None)
        else:
            prefixes[(a, plen)] = p
    check(d, sets, prefixes, rng)
    # every set still in use is counted, and no other
    used = {}
    for p in prefixes.values():
        used[d.set_ids[p]] = used.get(d.set_ids[p], 0) + 1
    assert d.set_refs == used


def test_unchanged_rebuild_writes_nothing_and_a_change_touches_only_its_blocks():
    d, sets = tables()
    prefixes = {(0x0A000000, 8): (1,), (0x0A010000, 16): (2,), (0x0A010203, 32): (3,)}
    d.rebuild(prefixes)
    d.writes = 0
    d.rebuild(dict(prefixes))
    assert d.writes == 0
    d.change(0x0A020300, 24, (2,))
    assert d.writes == 2  # one /24 entry
    assert sets[d.lookup(0x0A020301)] == (2,) and sets[d.lookup(0x0A020401)] == (1,)
    d.change(0x0A010203, 32, None)  # the last long prefix of its /24: the group goes
    assert sets[d.lookup(0x0A010203)] == (2,) and not d.groups


def test_group_and_set_limits_are_errors():
    import pytest
    from wgbpf.dir24 import Dir24Error
    d, _ = tables()
    with pytest.raises(Dir24Error, match="groups"):
        d.rebuild({((10 << 24) | (i << 8) | 1, 32): (1,) for i in range(GROUPS + 1)})
    assert abi.DIR_GROUP == 0x8000 and random  # the group flag is the top bit of a u16 entry

# SPDX-License-Identifier: GPL-2.0-or-later
"""Tries.scan / read / apply and the threaded Writer against real LPM maps
(bpf(2), no BCC; root, as creating a map needs): what the full sync writes
is what lookups find. What needs no kernel is in tests/unit/test_maps.py."""
import ctypes
import ipaddress
import os
import random

import pytest

from wgbpf import abi, bpfsys, sync
from wgbpf.maps import Maps
from wgbpf.routemaps import Writer, value_set
from wgbpf.setmaps import KernelSets
from wgbtest import require_root

KERNEL, STATIC = abi.Origin.KERNEL, abi.Origin.STATIC

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _root():
    require_root()  # creating BPF maps needs it (under CI a failure, not a skip)


@pytest.fixture
def maps():
    fds = {}
    for name in ("routes4", "routes6", "accept4", "accept6", "sets"):
        spec = abi.MAPS[name]
        fds[name] = bpfsys.map_create(spec.type, ctypes.sizeof(spec.key), ctypes.sizeof(spec.value),
                                      spec.max_entries if name == "sets" else 65536, spec.flags, name)
    m = Maps("(test)", fds)
    m.ids = KernelSets(m.sets)  # set ids, as the daemon takes them
    yield m
    m.close()


def prefixes(n, seed):
    """{pkey: peers}, of a few hundred distinct sets (as a table has)."""
    rnd = random.Random(seed)
    pool = [tuple(sorted(rnd.sample(range(1, 40), rnd.randint(1, abi.MAX_ECMP)))) for _ in range(300)]
    out = {}
    while len(out) < n:
        if rnd.random() < 0.8:
            net = ipaddress.ip_network((rnd.getrandbits(32), rnd.choice((8, 16, 22, 24, 32))), strict=False)
        else:
            net = ipaddress.ip_network((rnd.getrandbits(128), rnd.choice((0, 32, 48, 64, 128))), strict=False)
        out[sync.network_pkey(net)] = rnd.choice(pool)
    return out


def test_threaded_writer_then_scan_read_and_lookup(maps):
    want = prefixes(40000, 1)  # more than two batches of each family
    w = Writer(maps)
    for k, peers in want.items():
        w.put("routes", k, maps.ids.interned(peers))
    gone = list(want)[:500]
    for k in gone:
        w.delete("routes", k)
        del want[k]
    w.delete("routes", sync.pkey(4, bytes(4), 0))  # never there: skipped, not an error
    assert w.close() == 40000 + 501
    got = {k: (origin, maps.sets.members(value_set(v))) for k, origin, v in maps.tries.scan("routes")}
    assert got == {k: (KERNEL, p) for k, p in want.items()}
    assert maps.tries.entries("accept") == {}
    some = list(want)[:100] + gone[:10]
    assert maps.tries.read(some) == {k: (KERNEL, maps.ids.interned(want[k])) for k in some[:100]}
    # what the data plane's lookup finds
    k = next(k for k in want if k[0] == 2 and k[1] == 24)
    net = sync.pkey_network(k)
    hit = maps.tries.lookup(str(net.network_address + 1))
    assert hit is not None and hit[0] == net and tuple(maps.route_peers(hit[1])) == want[k]


def test_apply_a_diff_leaves_static_entries(maps):
    p1 = sync.pkey(2, bytes([10, 1, 0, 0]), 16)
    p2 = sync.pkey(2, bytes([10, 2, 0, 0]), 16)
    maps.tries.set_route(ipaddress.ip_network("10.2.0.0/16"), [7], STATIC)
    t = sync.Table(sync.Tags({bytes([10, 255, 0, 1]): 1}, {}, front=5), sync.Filter())
    from wgbpf.routes import KernelRoute
    for dst in (bytes([10, 1, 0, 0]), bytes([10, 2, 0, 0])):
        t.update(KernelRoute(2, dst, 16, 254, 0, 4, 0, ((bytes([10, 255, 0, 1]), 5),)))
    maps.ids.bind(t.tags)
    entry = maps.ids.entry(t)
    d = sync.diff(t, maps.tries.entries(), entry=entry)
    assert d.put == {p1: maps.ids.interned((1,))} and not d.delete
    assert maps.tries.apply(d) == 1
    assert maps.peer_entries() == {p1: (KERNEL, (1,)), p2: (STATIC, (7,))}
    assert len(sync.diff(t, maps.tries.entries(), entry=entry)) == 0


def test_missing_names_the_keys_without_an_entry_of_their_own(maps):
    want = prefixes(2000, 2)
    w = Writer(maps, threaded=False)
    keys = list(want)
    for k in keys[:1500]:
        w.put("routes", k, maps.ids.interned(want[k]))
    w.close()
    # an entry that only covers a key (a shorter prefix) is not its own
    assert sorted(maps.tries.missing(keys)) == sorted(keys[1500:])


def test_a_restart_writes_only_the_difference(maps):
    """backends.fullsync.reconcile, as a restart runs it against filled maps: entries
    of routes gone are deleted, changed ones rewritten, missing ones
    written, the operator's left alone, the rest untouched."""
    from wgbpf.backends.fullsync import reconcile
    from wgbpf.routes import KernelRoute
    tags = sync.Tags({bytes([10, 255, 0, p]): p for p in (1, 2, 3)}, {}, front=5)
    t = sync.Table(tags, sync.Filter())
    nets = [bytes([10, n, 0, 0]) for n in range(1, 9)]
    for i, dst in enumerate(nets):
        t.update(KernelRoute(2, dst, 16, 254, 0, 4, 0, ((bytes([10, 255, 0, 1 + i % 3]), 5),)))
    w = Writer(maps, threaded=False)
    ids = maps.ids.interned
    for i, (k, peers) in enumerate(t.items()):
        if i < 4:
            w.put("routes", k, ids(peers))       # as the table says
        elif i == 4:
            w.put("routes", k, ids((2, 3)))      # changed while we were away
    stale = sync.pkey(2, bytes([10, 99, 0, 0]), 16)
    w.put("routes", stale, ids((1,)))            # its route deleted while we were away
    w.close()
    maps.tries.set_route(ipaddress.ip_network("10.6.0.0/16"), [7], STATIC)  # the operator's
    operator = set()
    maps.ids.bind(tags)
    d = reconcile(maps, "routes", t, operator, maps.ids.kid)
    keys = [sync.pkey(2, dst, 16) for dst in nets]
    assert operator == {keys[5]}  # route events leave it alone from now on
    assert d.delete == [stale]
    assert d.put == {k: ids(t.best(k)) for k in (keys[4], keys[6], keys[7])}
    maps.tries.apply(d)
    assert len(reconcile(maps, "routes", t, set(), maps.ids.kid)) == 0


def test_array_bytes_reads_and_writes_any_slice_of_an_array_map():
    from wgbpf.dir24maps import ArrayBytes
    fd = bpfsys.map_create(abi.ARRAY, 4, 64, 300, 0, "bytes_test")
    try:
        a, mirror = ArrayBytes(fd, 64, 300), bytearray(64 * 300)
        rnd = random.Random(3)
        for _ in range(200):
            lo = rnd.randrange(len(mirror))
            hi = rnd.randrange(lo, min(len(mirror), lo + rnd.choice((2, 64, 500, 9000))) + 1)
            data = os.urandom(hi - lo)
            a[lo:hi], mirror[lo:hi] = data, data
            x = rnd.randrange(len(mirror))
            assert a[x:x + 130] == bytes(mirror[x:x + 130])
        assert a[0:len(a)] == bytes(mirror)
    finally:
        os.close(fd)


def test_dir24_over_the_maps_patches_as_the_lpm_trie_answers():
    """The daemon's DIR-24-8: arrays written through bpf(2), a removed
    prefix's /24s handed to what routes4's LPM lookup says covers it."""
    fds = {}
    for name in ("routes4", "routes6", "accept4", "accept6", "dir24", "dir8", "sets"):
        spec = abi.MAPS[name]
        fds[name] = bpfsys.map_create(spec.type, ctypes.sizeof(spec.key), ctypes.sizeof(spec.value),
                                      spec.max_entries if name.startswith("dir") or name == "sets" else 65536,
                                      spec.flags, name)
    m = Maps("(test)", fds)
    ids = KernelSets(m.sets)
    try:
        net = ipaddress.ip_network
        table = {net("10.0.0.0/8"): (1,), net("10.1.0.0/16"): (2,), net("10.1.2.0/24"): (3,),
                 net("10.1.2.128/25"): (4, 5), net("10.2.0.0/15"): (6,)}
        d = sync.Diff()
        d.put = {sync.network_pkey(n): ids.interned(p) for n, p in table.items()}
        m.tries.apply(d)
        dirs = m.dir24.rebuild()

        def peers_at(addr):  # the set the data plane reads for an address
            sid = dirs.lookup(int(ipaddress.ip_address(addr)))
            return m.sets.members(sid) if sid else None
        assert [peers_at(a) for a in ("10.9.9.9", "10.1.9.9", "10.1.2.1", "10.1.2.200", "10.3.0.1", "11.0.0.1")] \
            == [(1,), (2,), (3,), (4, 5), (6,), None]
        # the /16 goes: its /24s show the /8 again, the /24 inside it stays
        d = sync.Diff()
        d.delete = [sync.network_pkey(net("10.1.0.0/16"))]
        m.tries.apply(d)
        dirs.change(0x0A010000, 16, None)
        assert [peers_at(a) for a in ("10.1.9.9", "10.1.2.1", "10.1.2.200")] == [(1,), (3,), (4, 5)]
        # what a fresh compile of routes4 gives (the sets numbered afresh)
        before = [peers_at(f"10.{i}.{j}.{k}") for i in range(4) for j in range(4) for k in (1, 200)]
        dirs = m.dir24.rebuild()
        assert [peers_at(f"10.{i}.{j}.{k}") for i in range(4) for j in range(4) for k in (1, 200)] == before
        dirs.writes = 0
        m.dir24.rebuild(dirs)
        assert dirs.writes == 0  # an unchanged table: nothing written
    finally:
        m.close()


def test_dir24_compiled_apart_is_what_the_daemon_patches():
    """The daemon compiles in a child process and keeps only what change()
    needs: the arrays it gets answer as a compile in this process does, and
    take patches."""
    import shutil

    from wgbpf.maps import PIN_ROOT
    directory = os.path.join(PIN_ROOT, f"apart-{os.getpid()}")
    m = Maps.create(directory, dir24=True)
    try:
        net = ipaddress.ip_network
        d = sync.Diff()
        ids = KernelSets(m.sets)
        d.put = {sync.network_pkey(net(n)): ids.interned(p) for n, p in
                 (("10.0.0.0/8", (1,)), ("10.1.0.0/16", (2, 3)), ("10.1.2.128/25", (4,)))}
        m.tries.apply(d)
        apart = m.dir24.compile_apart()
        here = m.dir24.rebuild()
        assert here.writes == 0  # the child wrote the same bytes
        assert apart.depth == here.depth and apart.state() == dict(here.state(), writes=apart.writes)
        d = sync.Diff()
        d.delete = [sync.network_pkey(net("10.1.0.0/16"))]
        m.tries.apply(d)
        apart.change(0x0A010000, 16, None)
        sid = apart.lookup(0x0A010909)
        assert m.sets.members(sid) == (1,) and m.sets.members(apart.lookup(0x0A0102F0)) == (4,)
    finally:
        m.close()
        shutil.rmtree(directory, ignore_errors=True)

"""DIR-24-8 (as DPDK's rte_lpm): the IPv4 prefixes of routes4 compiled into
the arrays the data plane reads in DIR-24-8 mode (see bpf/wgbpf.h).

    tbl24  2^24 u16 entries (host order), one per /24 (32 MiB)
    tbl8   groups of 256 u16 entries, one per address of a /24 that holds
           prefixes longer than /24 (512 B a group)
    sets   peer sets by id (dir_sets); an entry is 0 (no route), a set id,
           or DIR_GROUP | group

routes4 stays the source of truth (listings, lookups, the daemon's diff);
this is derived from it. `rebuild()` recompiles everything, writing only the
64 KiB chunks that differ, so an unchanged table costs no writes; the daemon
patches single prefixes with `change()`, which touches only the /24s under
the prefix. Sets and groups are numbered deterministically (sorted), so the
same table compiles to the same bytes in any process.

The compile runs no Python code per prefix: the prefixes are ordered by
length once (a stable sort of their indices), and each length is painted
over the shorter ones in one C-level pass, map() over array slice
assignments. What `change()` needs is kept as arrays, not objects: for each
length up to /24 a dense u16 array of the set id each prefix of that length
names (0: none; 64 MiB with every length present, against ~100 MB for dicts
of a million prefixes), dicts only for the few prefixes longer than /24.
Measured with tests/bench/bench_dir24.py (1M internet-like prefixes, this
2-core machine, each form in a fresh process): see rebuild_arrays().
"""
import array
import sys
from collections import Counter, deque
from itertools import compress, repeat
from operator import add, and_, eq, itemgetter, mul, rshift

from . import abi

TBL24_ENTRIES = 1 << 24
GROUP_ENTRIES = 256
CHUNK = 1 << 16
ORDER = sys.byteorder  # the maps hold u16s as the host (and the BPF program) reads them
_ONE = bytes(int(i == 1) for i in range(256))      # translate: count 1 -> 1, else 0
_NOT_ONE = bytes(int(i != 1) for i in range(256))


class Dir24Error(ValueError):
    pass


def _mask(plen):
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0


def _u32(big_endian):
    """Big-endian u32s (a bytes-like) as an array of ints."""
    a = array.array("I", big_endian)
    if ORDER == "little":
        a.byteswap()
    return a


def _paint(table, starts, values, n):
    """table[s:s + n] = value for each start and value (u16 arrays), in one
    C-level pass: map() over the slice assignments, drained by a deque."""
    if n == 1:
        deque(map(table.__setitem__, starts, values), 0)
        return
    starts, values = list(starts), list(values)
    runs = {v: array.array("H", [v]) * n for v in set(values)}
    deque(map(table.__setitem__, map(slice, starts, map(add, starts, repeat(n))),
              map(runs.__getitem__, values)), 0)


class Dir24:
    """The compiled tables over two writable buffers (the maps' mmaps, or
    bytearrays in tests) and a callback that stores a peer set by id."""

    def __init__(self, tbl24, tbl8, write_set):
        self.tbl24 = memoryview(tbl24).cast("B")
        self.tbl8 = memoryview(tbl8).cast("B")
        self.write_set = write_set
        self.max_groups = len(self.tbl8) // (2 * GROUP_ENTRIES)
        self.own = [None] * 25         # plen <= 24 -> u16 array: set id of prefix (plen, index)
        self.long = [dict() for _ in range(33)]  # plen > 24 -> {network int: set id}
        self.longs = {}                # /24 index -> {(addr, plen)} longer than /24
        self.groups = {}               # /24 index -> group
        self.free_groups = []
        self.set_ids = {}              # peers tuple -> set id
        self.sets = {}                 # set id -> peers tuple
        self.set_refs = {}             # set id -> prefixes using it
        self.writes = 0                # bytes rewritten, for tests/status

    # -- sets ----------------------------------------------------------------
    def _ref(self, peers):
        """The set id of peers, one more prefix using it."""
        sid = self.set_ids.get(peers)
        if sid is None:
            used = self.set_refs
            sid = next((i for i in range(1, abi.DIR_SETS) if i not in used), None)
            if sid is None:
                raise Dir24Error(f"more than {abi.DIR_SETS - 1} distinct peer sets")
            self.set_ids[peers] = sid
            self.sets[sid] = peers
            self.set_refs[sid] = 0
            self.write_set(sid, peers)
        self.set_refs[sid] += 1
        return sid

    def _unref(self, sid):
        self.set_refs[sid] -= 1
        if self.set_refs[sid] <= 0:
            del self.set_refs[sid]
            del self.set_ids[self.sets.pop(sid)]

    # -- full compile ----------------------------------------------------------
    def rebuild(self, prefixes):
        """prefixes: {(network int, plen): peers tuple} for all of IPv4."""
        keys = list(prefixes)
        self.rebuild_arrays(map(itemgetter(0), keys), bytes(map(itemgetter(1), keys)),
                            list(prefixes.values()))

    def rebuild_keys(self, keys, peers):
        """The same from the sync engine's prefix keys, `bytes([family,
        plen]) + addr`, and a parallel iterable of peers tuples; keys of
        other families (IPv6) are skipped."""
        keys, peers = list(keys), list(peers)
        v4 = bytes(map(eq, map(len, keys), repeat(6)))
        if v4.count(1) != len(keys):
            keys, peers = list(compress(keys, v4)), list(compress(peers, v4))
        packed = b"".join(keys)
        # the big-endian addresses are bytes 2-5 of every 6: gather them
        # into one buffer with strided slices, then read it as u32s
        addr = bytearray(4 * len(keys))
        for i in range(4):
            addr[i::4] = packed[2 + i::6]
        self.rebuild_arrays(_u32(addr), packed[1::6], peers)

    def rebuild_raw(self, batches, value_size, value_peers):
        """The same straight from routes4's batch reads
        (bpfsys.lookup_batch_raw): (Key4 bytes, Route bytes, count) per
        batch, Route's size, and a function from one Route's bytes to its
        peers tuple, called once per distinct value, not per prefix."""
        keys, values = [], []
        for k, v, n in batches:
            keys.append(k[:8 * n])
            values.append(v[:value_size * n])
        keys, values = b"".join(keys), bytearray(b"".join(values))
        n, vs = len(keys) // 8, value_size
        addr = bytearray(4 * n)
        for i in range(4):
            addr[i::4] = keys[4 + i::8]  # Key4: u32 prefixlen, then the address
        addrs = _u32(addr)
        plens = keys[0::8] if ORDER == "little" else keys[3::8]  # the low byte of a host-order u32
        # most routes name one peer: its set is the first peer id, a u16 at
        # offset 4, gathered like the addresses; only the others (ECMP) are
        # read one by one, as their count and peers
        first = bytearray(2 * n)
        first[0::2], first[1::2] = values[4::vs], values[5::vs]
        pids = array.array("H", first)
        counts = bytes(values[0::vs])
        multi = list(compress(range(n), counts.translate(_NOT_ONE)))
        # an ECMP Route up to its last peer, less its origin and prefixlen
        # (bytes 1 and 2: they differ between prefixes of one set)
        values[1::vs] = bytes(n)
        values[2::vs] = bytes(n)
        values = bytes(values)
        starts = list(map(mul, multi, repeat(vs)))
        ends = map(add, starts, map(add, repeat(4), map(mul, map(counts.__getitem__, multi), repeat(2))))
        raw = list(map(values.__getitem__, map(slice, starts, ends)))
        peers_of = {r: value_peers(r) for r in set(raw)}
        singles = set(compress(pids, counts.translate(_ONE)))
        self._number(sorted({(p,) for p in singles} | set(peers_of.values())))
        sid_of = {p: self.set_ids[(p,)] for p in singles}
        sids = array.array("H", map(sid_of.get, pids, repeat(0)))
        deque(map(sids.__setitem__, multi, map(self.set_ids.__getitem__, map(peers_of.__getitem__, raw))), 0)
        self._compile(addrs, plens, sids)

    def rebuild_arrays(self, addrs, plens, peers):
        """The compile itself, from parallel sequences: network ints, prefix
        lengths (bytes or ints) and peers tuples.

        Measured (tests/bench/bench_dir24.py and a 1M-entry routes4 map;
        CPU seconds, this 2-core machine at load ~7): compile from a dict
        1.1, from prefix keys 1.0, from routes4's batches 1.0 after the
        kernel's 0.9 s batch read; before, attach/bench_dataplane spent 6.4
        in ipv4_prefixes (ipaddress) + 1.1 compiling with a loop per prefix
        (the same speed: the loop was not the cost, its input was; its
        dicts held ~100 MB more). change(): 160k /24s a second (was 1.7k:
        each scanned every /24 with longer prefixes)."""
        self._number(sorted(set(peers)))
        self._compile(addrs, plens, array.array("H", map(self.set_ids.__getitem__, peers)))

    def _number(self, distinct):
        """Set ids for the sorted distinct peer sets: the same table gives
        the same ids, and the same bytes, in any process."""
        if len(distinct) >= abi.DIR_SETS:
            raise Dir24Error(f"more than {abi.DIR_SETS - 1} distinct peer sets")
        self.set_ids = {p: sid for sid, p in enumerate(distinct, start=1)}
        self.sets = dict(enumerate(distinct, start=1))
        for sid, p in self.sets.items():
            self.write_set(sid, p)

    def _compile(self, addrs, plens, sids):
        addrs = array.array("I", addrs)
        plens = bytes(plens)
        if not len(addrs) == len(plens) == len(sids):
            raise ValueError("addrs, plens and peers differ in length")
        # by length, shortest first (stable: the result depends on the table only)
        order = sorted(range(len(plens)), key=plens.__getitem__)
        addrs = array.array("I", map(addrs.__getitem__, order))
        sids = array.array("H", map(sids.__getitem__, order))
        del order
        self.set_refs = dict(Counter(sids))
        bounds, at = [], 0
        for plen in range(33):
            n = plens.count(plen)
            bounds.append((at, at + n))
            at += n

        tbl24 = array.array("H", bytes(2 * TBL24_ENTRIES))
        self.own = [None] * 25
        for plen in range(25):
            a, b = bounds[plen]
            if a < b:
                own = self.own[plen] = array.array("H", bytes(2 << plen))
                _paint(own, map(rshift, addrs[a:b], repeat(32 - plen)), sids[a:b], 1)
                _paint(tbl24, map(rshift, addrs[a:b], repeat(8)), sids[a:b], 1 << (24 - plen))
        self.long = [dict(zip(addrs[a:b], sids[a:b])) if plen > 24 else {}
                     for plen, (a, b) in enumerate(bounds)]
        # /24s with longer prefixes get a group each, numbered in block order
        blocks = sorted(set(map(rshift, addrs[bounds[25][0]:], repeat(8))))
        if len(blocks) > self.max_groups:
            raise Dir24Error(f"{len(blocks)} /24s hold prefixes longer than /24; "
                             f"DIR-24-8 has {self.max_groups} groups")
        self.groups = dict(zip(blocks, range(len(blocks))))
        self.free_groups = list(range(self.max_groups - 1, len(blocks) - 1, -1))
        self.longs = {}
        for plen in range(25, 33):
            for addr in self.long[plen]:
                self.longs.setdefault(addr >> 8, set()).add((addr, plen))
        # a group starts as 256 copies of its /24's entry, then the longer
        # prefixes are painted over it, shortest first
        bases = list(map(tbl24.__getitem__, blocks))
        fill = {v: v.to_bytes(2, ORDER) * GROUP_ENTRIES for v in set(bases)}
        tbl8 = array.array("H", b"".join(map(fill.__getitem__, bases)))
        for plen in range(25, 33):
            a, b = bounds[plen]
            if a < b:
                starts = map(add, map(mul, map(self.groups.__getitem__, map(rshift, addrs[a:b], repeat(8))),
                                      repeat(GROUP_ENTRIES)),
                             map(and_, addrs[a:b], repeat(0xFF)))
                _paint(tbl8, starts, sids[a:b], 1 << (32 - plen))
        _paint(tbl24, blocks, range(abi.DIR_GROUP, abi.DIR_GROUP + len(blocks)), 1)
        # groups first: a /24 entry must never point at a group not yet filled
        self._copy(self.tbl8, memoryview(tbl8).cast("B"))
        self._copy(self.tbl24, memoryview(tbl24).cast("B"))

    def _copy(self, dst, src):
        for off in range(0, len(src), CHUNK):
            chunk = bytes(src[off:off + CHUNK])
            if bytes(dst[off:off + len(chunk)]) != chunk:  # bytes: memcmp, not item by item
                dst[off:off + len(chunk)] = chunk
                self.writes += len(chunk)

    def _group(self, block, base):
        """The 256 entries of one /24 with longer prefixes, over `base`."""
        g = array.array("H", [base]) * GROUP_ENTRIES
        for addr, plen in sorted(self.longs[block], key=itemgetter(1)):
            lo = addr & 0xFF
            n = 1 << (32 - plen)
            g[lo:lo + n] = array.array("H", [self.long[plen][addr]]) * n
        return g

    # -- incremental -------------------------------------------------------------
    def _own(self, addr, plen):
        """The set id prefix (addr, plen) itself names, 0 for none."""
        if plen > 24:
            return self.long[plen].get(addr, 0)
        own = self.own[plen]
        return own[addr >> (32 - plen)] if own is not None else 0

    def _store(self, addr, plen, sid):
        if plen > 24:
            block = addr >> 8
            if sid:
                self.long[plen][addr] = sid
                self.longs.setdefault(block, set()).add((addr, plen))
            else:
                self.long[plen].pop(addr, None)
                self.longs[block].discard((addr, plen))
                if not self.longs[block]:
                    del self.longs[block]
            return
        if self.own[plen] is None:
            self.own[plen] = array.array("H", bytes(2 << plen))
        self.own[plen][addr >> (32 - plen)] = sid

    def _covering(self, addr, below):
        """Set id of the longest prefix shorter than `below` covering addr."""
        for plen in range(min(below, 25) - 1, -1, -1):
            own = self.own[plen]
            if own is not None:
                sid = own[addr >> (32 - plen)]
                if sid:
                    return sid
        return 0

    def _put24(self, index, entry):
        self.tbl24[2 * index:2 * index + 2] = entry.to_bytes(2, ORDER)
        self.writes += 2

    def _paint_block(self, block, base):
        """Write one /24: its entry, or its group over `base`."""
        if block in self.longs:
            g = self.groups.get(block)
            if g is None:
                if not self.free_groups:
                    raise Dir24Error(f"all {self.max_groups} DIR-24-8 groups are in use")
                g = self.groups[block] = self.free_groups.pop()
            data = self._group(block, base).tobytes()
            off = g * 2 * GROUP_ENTRIES
            self.tbl8[off:off + len(data)] = data
            self.writes += len(data)
            self._put24(block, abi.DIR_GROUP | g)
        else:
            self._put24(block, base)
            g = self.groups.pop(block, None)
            if g is not None:
                self.free_groups.append(g)

    def change(self, addr, plen, peers):
        """Set (peers) or remove (None) one prefix and repaint under it."""
        addr &= _mask(plen)
        old = self._own(addr, plen)
        if (self.sets[old] if old else None) == peers:
            return
        sid = self._ref(peers) if peers is not None else 0  # before the unref: a set kept keeps its id
        self._store(addr, plen, sid)
        if old:
            self._unref(old)
        if plen > 24:
            block = addr >> 8
            self._paint_block(block, self._covering(addr, 25))
            return
        # a prefix of /24 or shorter: recompute the /24s under it, shortest
        # prefix first, from the one covering it
        first, n = addr >> 8, 1 << (24 - plen)
        vals = array.array("H", [self._covering(addr, plen)]) * n
        for length in range(plen, 25):
            own = self.own[length]
            if own is None:
                continue
            start, span, m = addr >> (32 - length), 1 << (length - plen), 1 << (24 - length)
            sub = own[start:start + span]
            # only the prefixes there are: compress() skips the zeros in C
            _paint(vals, compress(range(0, span * m, m), sub), compress(sub, sub), m)
        if n <= len(self.longs):
            blocks = [b for b in range(first, first + n) if b in self.longs]
        else:
            blocks = [b for b in self.longs if first <= b < first + n]
        for block in blocks:
            self._paint_block(block, vals[block - first])
            vals[block - first] = abi.DIR_GROUP | self.groups[block]
        data = vals.tobytes()
        self.tbl24[2 * first:2 * first + len(data)] = data
        self.writes += len(data)

    def lookup(self, addr):
        """The set id for an IPv4 address (int), as the data plane reads it."""
        i24 = addr >> 8
        e = int.from_bytes(self.tbl24[2 * i24:2 * i24 + 2], ORDER)
        if e & abi.DIR_GROUP:
            off = ((e & (abi.DIR_GROUP - 1)) * GROUP_ENTRIES + (addr & 0xFF)) * 2
            e = int.from_bytes(self.tbl8[off:off + 2], ORDER)
        return e

# SPDX-License-Identifier: GPL-2.0-or-later
"""DIR-24-8 (as DPDK's rte_lpm): the IPv4 prefixes of routes4 compiled into
the arrays the data plane reads in DIR-24-8 mode (see bpf/wgbpf.h).

    tbl24  2^24 u16 entries (host order), one per /24 (32 MiB)
    tbl8   groups of 256 u16 entries, one per address of a /24 that holds
           prefixes longer than /24 (512 B a group)
    an entry is 0 (no route), the id of a peer set (the sets map, as
    routes4's values name them), or DIR_GROUP | group

routes4 stays the source of truth (listings, lookups, the daemon's diff);
this is derived from it. `rebuild()` recompiles everything, writing only the
64 KiB chunks that differ, so an unchanged table costs no writes; the daemon
patches single prefixes with `change()`, which touches only the /24s under
the prefix. Sets and groups are numbered deterministically (sorted), so the
same table compiles to the same bytes in any process.

The compile runs no Python code per prefix: each prefix length, shortest
first, is picked out of the parallel arrays (bytes.translate + compress)
and painted over the shorter ones, map() over array slice assignments.

What `change()` needs is one byte per /24, `depth`: the length + 1 of the
prefix its entry comes from (0: none). A prefix set paints the /24s under it
whose depth is not longer than its own; a prefix removed hands the /24s it
painted to the route that covers it, one LPM lookup in routes4 (`route`),
which already holds the change. 16 MiB, where an array of every prefix's set
per length took 64 MiB; and the arrays are read and written through the maps
(`dir24maps.ArrayBytes`), so their 48 MiB are the kernel's, not the daemon's.
"""
import array
import re
import sys
from collections import deque
from itertools import compress, repeat
from operator import add, and_, itemgetter, mul, rshift

from . import abi

TBL24_ENTRIES = 1 << 24
GROUP_ENTRIES = 256
CHUNK = 1 << 16
ORDER = sys.byteorder  # the maps hold u16s as the host (and the BPF program) reads them
_NOT_ONE = bytes(int(i != 1) for i in range(256))  # translate: count 1 -> 0, else 1
_IS = [bytes(int(i == n) for i in range(256)) for n in range(34)]       # byte == n -> 1
_UPTO = [bytes(int(i <= n) for i in range(256)) for n in range(34)]     # byte <= n -> 1
_RUNS = re.compile(b"\x01+")


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


def _fill(buf, starts, value, n):
    """buf[s:s + n] = n bytes of `value` for each start (a bytearray)."""
    run = bytes([value]) * n
    deque(map(buf.__setitem__, map(slice, starts, map(add, starts, repeat(n))), repeat(run)), 0)


class Dir24:
    """The compiled tables over two writable byte buffers (the maps, through
    dir24maps.ArrayBytes, or bytearrays in tests), and `route(addr, bound)`:
    the longest route of routes4 no longer than `bound` covering addr, as
    (prefix length, set id), or None (an LPM lookup; only removals need it)."""

    def __init__(self, tbl24, tbl8, route=None):
        self.tbl24 = tbl24
        self.tbl8 = tbl8
        self.route = route
        self.max_groups = len(self.tbl8) // (2 * GROUP_ENTRIES)
        self.depth = bytearray(TBL24_ENTRIES)  # /24 index -> length + 1 of the prefix it shows, 0: none
        self.long = [dict() for _ in range(33)]  # plen > 24 -> {network int: set id}
        self.longs = {}                # /24 index -> {(addr, plen)} longer than /24
        self.groups = {}               # /24 index -> group
        self.bases = {}                # /24 index with a group -> the entry under its longer prefixes
        self.free_groups = []
        self.writes = 0                # bytes rewritten, for tests/status

    # -- full compile ----------------------------------------------------------
    def rebuild(self, prefixes):
        """prefixes: {(network int, plen): set id} for all of IPv4."""
        keys = list(prefixes)
        self.rebuild_arrays(map(itemgetter(0), keys), bytes(map(itemgetter(1), keys)),
                            list(prefixes.values()))

    def rebuild_keys(self, keys, sids):
        """The same from the sync engine's prefix keys, `bytes([family,
        plen]) + addr`, and a parallel iterable of set ids; keys of other
        families (IPv6) are skipped."""
        keys, sids = list(keys), list(sids)
        v4 = bytes(len(k) == 6 for k in keys)
        if v4.count(1) != len(keys):
            keys, sids = list(compress(keys, v4)), list(compress(sids, v4))
        packed = b"".join(keys)
        # the big-endian addresses are bytes 2-5 of every 6: gather them
        # into one buffer with strided slices, then read it as u32s
        addr = bytearray(4 * len(keys))
        for i in range(4):
            addr[i::4] = packed[2 + i::6]
        self.rebuild_arrays(_u32(addr), packed[1::6], sids)

    def rebuild_raw(self, batches, value_size):
        """The same straight from routes4's batch reads
        (bpfsys.lookup_batch_raw): (Key4 bytes, Route bytes, count) per
        batch, and Route's size (its set id a u32 at offset 0). Each batch
        is reduced to an address, a length and a set id as it comes:
        nothing of the size of the whole read is kept."""
        vs = value_size
        addrs, plens, sids = array.array("I"), bytearray(), array.array("H")
        for k, v, n in batches:
            k = k[:8 * n]
            addr = bytearray(4 * n)
            for i in range(4):
                addr[i::4] = k[4 + i::8]  # Key4: u32 prefixlen, then the address
            addrs.extend(_u32(addr))
            plens += k[0::8] if ORDER == "little" else k[3::8]  # the low byte of a host-order u32
            # set ids are below 2^15: their two low bytes, gathered like the addresses
            v = v[:vs * n]
            low = bytearray(2 * n)
            lo = 0 if ORDER == "little" else 2  # where a host-order u32 keeps its low half
            low[0::2], low[1::2] = v[lo::vs], v[lo + 1::vs]
            sids.extend(array.array("H", bytes(low)))
        self._compile(addrs, plens, sids)

    def rebuild_arrays(self, addrs, plens, sids):
        """The compile itself, from parallel sequences: network ints, prefix
        lengths (bytes or ints) and set ids.

        Measured (tests/bench/bench_dir24.py, 1M internet-like prefixes, this
        2-core machine): about 1 s of CPU from any input form; the kernel's
        batch read of routes4 adds 0.9 s. change(): 160k /24s a second."""
        self._compile(addrs, plens, array.array("H", sids))

    def _compile(self, addrs, plens, sids):
        addrs = array.array("I", addrs) if not isinstance(addrs, array.array) else addrs
        plens = bytes(plens)
        if not len(addrs) == len(plens) == len(sids):
            raise ValueError("addrs, plens and set ids differ in length")
        tbl24 = array.array("H", bytes(2 * TBL24_ENTRIES))
        depth = bytearray(TBL24_ENTRIES)
        long = [dict() for _ in range(33)]
        lengths = sorted(set(plens))
        # by length, shortest first: each paints over the shorter ones
        for plen in lengths:
            if len(lengths) == 1:
                a, s = addrs, sids
            else:
                pick = plens.translate(_IS[plen])
                a, s = array.array("I", compress(addrs, pick)), array.array("H", compress(sids, pick))
            if plen > 24:
                long[plen] = dict(zip(a, s))
                continue
            blocks = array.array("I", map(rshift, a, repeat(8)))
            _paint(tbl24, blocks, s, 1 << (24 - plen))
            _fill(depth, blocks, plen + 1, 1 << (24 - plen))
        del addrs, sids
        # /24s with longer prefixes get a group each, numbered in block order
        blocks = sorted({a >> 8 for plen in range(25, 33) for a in long[plen]})
        if len(blocks) > self.max_groups:
            raise Dir24Error(f"{len(blocks)} /24s hold prefixes longer than /24; "
                             f"DIR-24-8 has {self.max_groups} groups")
        groups = dict(zip(blocks, range(len(blocks))))
        longs = {}
        for plen in range(25, 33):
            for addr in long[plen]:
                longs.setdefault(addr >> 8, set()).add((addr, plen))
        # a group starts as 256 copies of its /24's entry, then the longer
        # prefixes are painted over it, shortest first
        bases = dict(zip(blocks, map(tbl24.__getitem__, blocks)))
        tbl8 = array.array("H", bytes(2 * GROUP_ENTRIES * len(blocks)))
        _paint(tbl8, range(0, GROUP_ENTRIES * len(blocks), GROUP_ENTRIES), map(bases.__getitem__, blocks),
               GROUP_ENTRIES)
        for plen in range(25, 33):
            if long[plen]:
                a = list(long[plen])
                starts = map(add, map(mul, map(groups.__getitem__, map(rshift, a, repeat(8))),
                                      repeat(GROUP_ENTRIES)),
                             map(and_, a, repeat(0xFF)))
                _paint(tbl8, starts, map(long[plen].__getitem__, a), 1 << (32 - plen))
        _paint(tbl24, blocks, range(abi.DIR_GROUP, abi.DIR_GROUP + len(blocks)), 1)
        # groups first: a /24 entry must never point at a group not yet filled
        self._copy(self.tbl8, memoryview(tbl8).cast("B"))
        self._copy(self.tbl24, memoryview(tbl24).cast("B"))
        self.depth, self.long, self.longs, self.groups, self.bases = depth, long, longs, groups, bases
        self.free_groups = list(range(self.max_groups - 1, len(blocks) - 1, -1))

    def _copy(self, dst, src):
        for off in range(0, len(src), CHUNK):
            chunk = bytes(src[off:off + CHUNK])
            if bytes(dst[off:off + len(chunk)]) != chunk:  # bytes: memcmp, not item by item
                dst[off:off + len(chunk)] = chunk
                self.writes += len(chunk)

    def state(self):
        """What change() needs besides `depth`, for restore() in another
        process (Dir24Maps.compile_apart)."""
        return {k: getattr(self, k) for k in self._STATE}

    def restore(self, state):
        for k in self._STATE:
            setattr(self, k, state[k])

    _STATE = ("long", "longs", "groups", "bases", "free_groups", "writes")

    # -- incremental -------------------------------------------------------------
    def _entry(self, block):
        """What the /24 itself shows: its entry, or the base under its group."""
        if block in self.groups:
            return self.bases[block]
        return int.from_bytes(self.tbl24[2 * block:2 * block + 2], ORDER)

    def _group(self, block, base):
        """The 256 entries of one /24 with longer prefixes, over `base`."""
        g = array.array("H", [base]) * GROUP_ENTRIES
        for addr, plen in sorted(self.longs[block], key=itemgetter(1)):
            lo = addr & 0xFF
            n = 1 << (32 - plen)
            g[lo:lo + n] = array.array("H", [self.long[plen][addr]]) * n
        return g

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
            self.bases[block] = base
            data = self._group(block, base).tobytes()
            off = g * 2 * GROUP_ENTRIES
            self.tbl8[off:off + len(data)] = data
            self.writes += len(data)
            self._put24(block, abi.DIR_GROUP | g)
        else:
            self._put24(block, base)
            g = self.groups.pop(block, None)
            if g is not None:
                del self.bases[block]
                self.free_groups.append(g)

    def change(self, addr, plen, sid):
        """Set (a set id) or remove (None) one prefix and repaint under it.
        routes4 already holds the change (a removal asks it what covers)."""
        addr &= _mask(plen)
        if plen > 24:
            block, long = addr >> 8, self.long[plen]
            if sid is None:
                if long.pop(addr, None) is None:
                    return
                self.longs[block].discard((addr, plen))
                if not self.longs[block]:
                    del self.longs[block]
            else:
                if long.get(addr) == sid:
                    return
                long[addr] = sid
                self.longs.setdefault(block, set()).add((addr, plen))
            self._paint_block(block, self._entry(block))
            return
        # a prefix of /24 or shorter: the /24s under it that show it or a
        # shorter prefix (set), or that show it (removed)
        first, n = addr >> 8, 1 << (24 - plen)
        depth = bytearray(self.depth[first:first + n])
        if sid is None:
            pick = depth.translate(_IS[plen + 1])
            if not pick.count(1):
                return
            found = self.route(addr, plen) if self.route is not None else None
            new, new_depth = (found[1], found[0] + 1) if found else (0, 0)
        else:
            pick = depth.translate(_UPTO[plen + 1])
            new, new_depth = sid, plen + 1
        runs = [m.span() for m in _RUNS.finditer(pick)]
        if not runs:
            return
        lo, hi = runs[0][0], runs[-1][1]
        vals = array.array("H", bytes(self.tbl24[2 * (first + lo):2 * (first + hi)]))
        for a, b in runs:
            vals[a - lo:b - lo] = array.array("H", [new]) * (b - a)
            depth[a:b] = bytes([new_depth]) * (b - a)
        # a /24 with a group keeps pointing at it; the group is repainted
        # over the new base
        if n <= len(self.groups):
            grouped = [b for b in range(first + lo, first + hi) if b in self.groups]
        else:
            grouped = [b for b in self.groups if first + lo <= b < first + hi]
        for block in grouped:
            if pick[block - first]:
                self._paint_block(block, new)
            vals[block - first - lo] = abi.DIR_GROUP | self.groups[block]
        data = vals.tobytes()
        self.tbl24[2 * (first + lo):2 * (first + hi)] = data
        self.writes += len(data)
        self.depth[first:first + n] = depth

    def lookup(self, addr):
        """The set id for an IPv4 address (int), as the data plane reads it."""
        i24 = addr >> 8
        e = int.from_bytes(self.tbl24[2 * i24:2 * i24 + 2], ORDER)
        if e & abi.DIR_GROUP:
            off = ((e & (abi.DIR_GROUP - 1)) * GROUP_ENTRIES + (addr & 0xFF)) * 2
            e = int.from_bytes(self.tbl8[off:off + 2], ORDER)
        return e

"""DIR-24-8 (as DPDK's rte_lpm): the IPv4 prefixes of routes4 compiled into
the arrays the data plane reads in DIR-24-8 mode (see bpf/wgbpf.h).

    tbl24  2^24 little-endian u16 entries, one per /24 (32 MiB)
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
"""
import array

from . import abi

TBL24_ENTRIES = 1 << 24
GROUP_ENTRIES = 256
CHUNK = 1 << 16


class Dir24Error(ValueError):
    pass


def _mask(plen):
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0


class Dir24:
    """The compiled tables over two writable buffers (the maps' mmaps, or
    bytearrays in tests) and a callback that stores a peer set by id."""

    def __init__(self, tbl24, tbl8, write_set):
        self.tbl24 = memoryview(tbl24).cast("B")
        self.tbl8 = memoryview(tbl8).cast("B")
        self.write_set = write_set
        self.max_groups = len(self.tbl8) // (2 * GROUP_ENTRIES)
        self.by_len = [dict() for _ in range(33)]  # plen -> {network int: peers}
        self.longs = {}                            # /24 index -> {(addr, plen)}
        self.groups = {}                           # /24 index -> group
        self.free_groups = []
        self.set_ids = {}                          # peers tuple -> set id
        self.set_refs = {}                         # set id -> prefixes using it
        self.writes = 0                            # bytes rewritten, for tests/status

    # -- sets ----------------------------------------------------------------
    def _set_id(self, peers):
        sid = self.set_ids.get(peers)
        if sid is None:
            used = set(self.set_refs)
            sid = next((i for i in range(1, abi.DIR_SETS) if i not in used), None)
            if sid is None:
                raise Dir24Error(f"more than {abi.DIR_SETS - 1} distinct peer sets")
            self.set_ids[peers] = sid
            self.set_refs[sid] = 0
            self.write_set(sid, peers)
        return sid

    def _ref(self, peers, delta):
        sid = self._set_id(peers)
        self.set_refs[sid] += delta
        if self.set_refs[sid] <= 0:
            del self.set_refs[sid]
            del self.set_ids[peers]
        return sid

    # -- full compile ----------------------------------------------------------
    def rebuild(self, prefixes):
        """prefixes: {(network int, plen): peers tuple} for all of IPv4."""
        self.by_len = [dict() for _ in range(33)]
        self.longs = {}
        for (addr, plen), peers in prefixes.items():
            self.by_len[plen][addr] = peers
            if plen > 24:
                self.longs.setdefault(addr >> 8, set()).add((addr, plen))
        # set ids in a stable order: the same table gives the same bytes
        self.set_ids, self.set_refs = {}, {}
        for sid, peers in enumerate(sorted({p for p in prefixes.values()}), start=1):
            if sid >= abi.DIR_SETS:
                raise Dir24Error(f"more than {abi.DIR_SETS - 1} distinct peer sets")
            self.set_ids[peers] = sid
            self.set_refs[sid] = 0
            self.write_set(sid, peers)
        for peers in prefixes.values():
            self.set_refs[self.set_ids[peers]] += 1
        blocks = sorted(self.longs)
        if len(blocks) > self.max_groups:
            raise Dir24Error(f"{len(blocks)} /24s hold prefixes longer than /24; "
                             f"DIR-24-8 has {self.max_groups} groups")
        self.groups = {b: g for g, b in enumerate(blocks)}
        self.free_groups = list(range(self.max_groups - 1, len(blocks) - 1, -1))

        tbl24 = array.array("H", bytes(2 * TBL24_ENTRIES))
        for plen in range(25):
            for addr, peers in self.by_len[plen].items():
                sid = self.set_ids[peers]
                start = addr >> 8
                n = 1 << (24 - plen)
                tbl24[start:start + n] = array.array("H", [sid]) * n
        tbl8 = array.array("H", bytes(2 * GROUP_ENTRIES * len(blocks)))
        for b, g in self.groups.items():
            tbl8[g * GROUP_ENTRIES:(g + 1) * GROUP_ENTRIES] = self._group(b, tbl24[b])
            tbl24[b] = abi.DIR_GROUP | g
        # groups first: a /24 entry must never point at a group not yet filled
        self._copy(self.tbl8, tbl8.tobytes())
        self._copy(self.tbl24, tbl24.tobytes())

    def _copy(self, dst, src):
        for off in range(0, len(src), CHUNK):
            chunk = src[off:off + CHUNK]
            if dst[off:off + len(chunk)] != chunk:
                dst[off:off + len(chunk)] = chunk
                self.writes += len(chunk)

    def _group(self, block, base):
        """The 256 entries of one /24 with longer prefixes, over `base`."""
        g = array.array("H", [base]) * GROUP_ENTRIES
        for addr, plen in sorted(self.longs[block], key=lambda ap: ap[1]):
            sid = self.set_ids[self.by_len[plen][addr]]
            lo = addr & 0xFF
            n = 1 << (32 - plen)
            g[lo:lo + n] = array.array("H", [sid]) * n
        return g

    # -- incremental -------------------------------------------------------------
    def _covering(self, addr, below):
        """Set id of the longest prefix shorter than `below` covering addr."""
        for plen in range(below - 1, -1, -1):
            peers = self.by_len[plen].get(addr & _mask(plen))
            if peers is not None:
                return self.set_ids[peers]
        return 0

    def _put24(self, index, entry):
        self.tbl24[2 * index:2 * index + 2] = entry.to_bytes(2, "little")
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
        old = self.by_len[plen].get(addr)
        if old == peers:
            return
        if peers is not None:
            self._ref(peers, +1)
            self.by_len[plen][addr] = peers
        else:
            del self.by_len[plen][addr]
        if old is not None:
            self._ref(old, -1)
        if plen > 24:
            block = addr >> 8
            if peers is None:
                self.longs[block].discard((addr, plen))
                if not self.longs[block]:
                    del self.longs[block]
            else:
                self.longs.setdefault(block, set()).add((addr, plen))
            self._paint_block(block, self._covering(addr, 25))
            return
        # a prefix of /24 or shorter: recompute the /24s under it, shortest
        # prefix first, from the one covering it
        first, n = addr >> 8, 1 << (24 - plen)
        vals = array.array("H", [self._covering(addr, plen)]) * n
        for length in range(plen, 25):
            table = self.by_len[length]
            span = 1 << (length - plen)
            if span <= len(table):
                step = 1 << (32 - length)
                candidates = ((a, table.get(a)) for a in range(addr, addr + span * step, step))
            else:
                candidates = ((a, p) for a, p in table.items() if a & _mask(plen) == addr)
            for a, p in candidates:
                if p is None:
                    continue
                start = (a >> 8) - first
                m = 1 << (24 - length)
                vals[start:start + m] = array.array("H", [self.set_ids[p]]) * m
        for block in [b for b in self.longs if first <= b < first + n]:
            self._paint_block(block, vals[block - first])
            vals[block - first] = abi.DIR_GROUP | self.groups[block]
        data = vals.tobytes()
        self.tbl24[2 * first:2 * first + len(data)] = data
        self.writes += len(data)

    def lookup(self, addr):
        """The set id for an IPv4 address (int), as the data plane reads it."""
        i24 = addr >> 8
        e = int.from_bytes(self.tbl24[2 * i24:2 * i24 + 2], "little")
        if e & abi.DIR_GROUP:
            off = ((e & (abi.DIR_GROUP - 1)) * GROUP_ENTRIES + (addr & 0xFF)) * 2
            e = int.from_bytes(self.tbl8[off:off + 2], "little")
        return e

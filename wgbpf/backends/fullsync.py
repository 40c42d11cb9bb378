# SPDX-License-Identifier: GPL-2.0-or-later
"""The maps backend's full sync, in phases: the kernel's routes dumped
into fresh Tables (written as the dump goes into maps holding no kernel
entry yet, else read beside it), the difference written, the DIR-24-8
arrays compiled or patched. backends/maps.py runs it under the writer
lock."""
import ctypes
import gc
import socket

from .. import abi, routemaps, routes, sync
from ..dir24 import Dir24Error
from .base import dump_tables


class Sync:
    """One full sync's phases: the dump (written as it goes into maps
    with no kernel entry, else read beside it), then the writes, then the
    DIR-24-8 arrays."""

    def __init__(self, backend):
        self.b = backend
        self.writer = self.compiling = self.read = None
        self.pinned = self.operator = None
        self.tables = {}
        self.recheck = {}
        self.diffs = {}

    def dump(self):
        b = self.b
        nl = routes.Netlink(rcvbuf=b.rcvbuf)
        dir24 = b.cfg.lookup == abi.Lookup.DIR24
        try:
            tables = self.tables = new_tables(b.cfg, b.filter, b._tags(nl))
            self.pinned = fresh(b.maps, tables) if tables else None
            if self.pinned is not None:
                self.writer = routemaps.Writer(b.maps, progress=(lambda k: b.progress("write", k))
                                               if b.progress else None)
            elif tables:
                # a restart: the kernel walks the maps' tries (a second a
                # million entries, in syscalls) while we parse the dump
                self.read = routemaps.in_background(
                    lambda: {trie: list(b.maps.tries.batches(trie)) for trie in tables})
                if dir24 and "routes" in tables:
                    # and a child compiles the arrays from routes4 as it is
                    # (another CPU): what the diff changes is patched in
                    self.compiling = b.maps.dir24.start_apart()
            # no cyclic GC while a million short-lived tuples come and go: it
            # would walk the young ones again and again for nothing
            gc.disable()
            try:
                n, self.recheck = (dump_tables(nl, tables, b.progress, self.writer, self.pinned, b.ksets.kid)
                                   if tables else (0, {}))
            finally:
                gc.enable()
        except BaseException:
            if self.writer is not None:
                self.writer.close()
            if self.compiling is not None:
                self.compiling.cancel()
            raise
        finally:
            nl.close()
        return n, tables

    def write(self):
        """Returns (writes, puts, deletes)."""
        b, tables = self.b, self.tables
        writes = puts = deletes = 0
        if self.writer is not None:
            self.operator = self.pinned
            for trie, keys in self.recheck.items():
                for k in keys:
                    if tables[trie].entry(k) is None and k not in self.pinned[trie]:
                        self.writer.delete(trie, k)
                        deletes += 1
            writes = self.writer.close()
            puts = writes - deletes
        else:
            self.operator = {trie: set() for trie in tables}
            batches = self.read() if tables else {}
            for trie, table in tables.items():
                d = self.diffs[trie] = reconcile(b.maps, trie, table, self.operator[trie], b.ksets.kid,
                                                 batches.pop(trie))
                writes += b.maps.tries.apply(d, trie, progress=(lambda k, total=len(d): b.progress("write", k, total))
                                             if b.progress else None)
                puts, deletes = puts + len(d.put), deletes + len(d.delete)
        trim_heap()  # what the batches read or written took (36 MiB at a full table) is free
        return writes, puts, deletes

    def compiled(self):
        """The DIR-24-8 arrays as the maps now are, or None (not that mode)."""
        b = self.b
        if self.compiling is not None:
            return patch_dir24(b.maps, self.compiling.result(), self.diffs["routes"], b.log)
        if b.cfg.lookup == abi.Lookup.DIR24 and "routes" in self.tables:
            # the IPv4 arrays from all of routes4 (ours, static and tags);
            # only the /24s that differ are rewritten
            return b.maps.dir24.compile_apart()
        return None


def new_tables(cfg, flt, tags):
    """What to sync, as {trie: Table}. LPM mode: the best route per
    prefix into routes4/6, and with an accept table every feasible
    route into accept4/6. FIB mode: nothing, the data plane asks the
    kernel; the daemon then follows links and tags only."""
    if cfg.lookup == abi.Lookup.FIB:
        return {}
    out = {"routes": sync.Table(tags, flt)}
    if cfg.accept_table:
        f = sync.Filter((cfg.accept_table,), flt.protocols, flt.realms)
        out["accept"] = sync.Table(tags, f, union=True)
    for t in out.values():
        t.by_id = True  # the maps name sets by id: a changed object rewrites its set alone
    return out


def fresh(m, tables):
    """The prefixes of the maps' own entries (static, tags) per trie,
    when the maps hold no kernel entry (a first start: the sync can
    write as it dumps); None when they do (a restart: diff first)."""
    pinned = {}
    for trie in tables:
        pinned[trie] = set()
        for k, origin, _v in m.tries.scan(trie):
            if origin == abi.Origin.KERNEL:
                return None
            pinned[trie].add(k)
    return pinned


def reconcile(m, trie, table, operator, kid, batches=None):
    """What to write so one pair of maps equals the table, from the maps
    read in batches (Tries.batches: read now, or already); the prefixes of
    the operator's entries are added to `operator`. `kid`: the kernel id
    of a table's set id (setmaps.KernelSets.kid)."""
    d = sync.Diff()
    kern = abi.Origin.KERNEL
    covered = 0
    entry_id, rs = table.entry_id, routemaps.ROUTE_SIZE
    prefixes = table.prefixes
    value = {}  # (set id << 8) | prefixlen -> the bytes of its kernel entry
    # one pass over the raw batches, a million times: an entry equal to
    # what the table wants costs a lookup and a bytes compare
    if batches is None:
        batches = m.tries.batches(trie, ahead=True)
    for head, ks, keys, values, count in batches:
        for i in range(count):
            at = i * ks
            k = head[keys[at]] + keys[at + 4:at + ks]
            v = values[i * rs:(i + 1) * rs]
            sid = entry_id(k)
            if sid is None:
                if v[routemaps.ORIGIN_AT] == kern:
                    d.delete.append(k)
                else:
                    operator.add(k)
                continue
            covered += 1
            want = value.get((sid << 8) | keys[at])
            if want is None:
                want = value[(sid << 8) | keys[at]] = routemaps.route_value(kid(sid), keys[at])
            if v != want:
                if v[routemaps.ORIGIN_AT] == kern:
                    d.put[k] = kid(sid)
                else:  # the operator's entry wins
                    operator.add(k)
    if covered < len(prefixes):
        # prefixes with no entry at all (routes added while we were
        # away): found by exact lookups, rather than a set of every key
        for k in m.tries.missing(prefixes, trie):
            d.put[k] = kid(entry_id(k))
    return d


def patch_dir24(m, arrays, d, log):
    """The IPv4 prefixes of a diff written to routes4, patched into the
    DIR-24-8 arrays; out of set ids or groups, compiled afresh from
    routes4 (which already holds the diff). Returns the arrays."""
    try:
        for k, sid in d.put.items():
            if k[0] == socket.AF_INET:
                arrays.change(int.from_bytes(k[2:], "big"), k[1], sid)
        for k in d.delete:
            if k[0] == socket.AF_INET:
                arrays.change(int.from_bytes(k[2:], "big"), k[1], None)
    except Dir24Error as e:
        log(f"DIR-24-8: {e}: compiling the arrays afresh")
        return m.dir24.compile_apart()
    return arrays


def trim_heap():
    """Give the heap's free pages back to the kernel (glibc's malloc_trim):
    Python hands big freed buffers to malloc, which keeps them, so what
    the daemon allocates next (the DIR-24-8 depth bytes, the child it
    spawns, which starts as big as we are) would add to them."""
    try:
        _libc.malloc_trim(0)
    except AttributeError:  # not glibc
        pass


_libc = ctypes.CDLL(None)

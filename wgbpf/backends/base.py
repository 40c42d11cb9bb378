# SPDX-License-Identifier: GPL-2.0-or-later
"""What the daemon's loop knows of a backend, and nothing more.

As wireguard-tools' ipc.c dispatches to ipc-linux.h or ipc-uapi.h, the
loop (wgbpf/daemon.py) drives one backend through these calls, and holds
none of its state:

    attach(cfg)          make the data plane match the config (start, reload);
                         returns the config as the backend runs it
    full_sync(why)       dump the kernel's routes, write the difference
    apply(changes, t)    one read's routes.Changes, read at monotonic time t;
                         returns True when a full resync is due
    tick(now)            every pass of the loop (each backend keeps its own
                         clocks); returns why a full resync is due, or None
    wait()               the longest the loop may sleep before the next
                         tick, in seconds (None: as long as it likes)
    wake(reason)         another process told us: "maps written" (SIGUSR1),
                         "attached" (SIGUSR2)
    counters(names)      {peer: (rx, tx, last handshake)} for liveness
    liveness_changed()   a peer died or came back: write what that changes
    status()             the backend's fields of the status file
    metrics(metric, series, st)   its Prometheus families
    close()              release what it holds; the data plane keeps running

`state()` says whether the backend can be written now ("running") or is
waiting for its data plane ("detached").
"""
import socket

from ..routes import LINK, NEXTHOP
from ..ties import DUMP


class Backend:
    name = None

    def __init__(self, flt, log, liveness, rcvbuf=32 << 20, progress=None):
        self.filter = flt          # which routes count (sync.Filter)
        self.log = log
        self.liveness = liveness   # liveness.Liveness, shared with the loop
        self.rcvbuf = rcvbuf
        self.progress = progress   # (stage, n, total=None) -> None, or None
        self.verbose = False       # -v: log every change a route event makes
        self.cfg = None
        self.lag = None            # status.Lag: the loop's, each batch's event-to-write lag

    def attach(self, cfg):
        raise NotImplementedError

    def full_sync(self, why):
        raise NotImplementedError

    def apply(self, changes, t_read):
        raise NotImplementedError

    def tick(self, now):
        return None

    def wait(self):
        return None

    def wake(self, reason):
        pass

    def counters(self, names):
        return {}

    def liveness_changed(self):
        return False

    def state(self):
        return "running"

    def status(self):
        return {}

    def metrics(self, metric, series, st):
        pass

    def close(self):
        pass


def dump_tables(nl, tables, progress=None, writer=None, pinned=None, kid=None):
    """Every route of the kernel into each sync.Table; returns the count.
    With a writer (maps holding no kernel entry yet), each prefix's best
    peer set is written as the dump goes (as the kernel id `kid` gives it), overlapping the map writes with
    the parsing; returns also the prefixes to check once the dump is done
    (their best set went away: delete)."""
    from ..routes import dump_routes
    n = 0
    recheck = {trie: set() for trie in tables}
    items = list(tables.items())
    fresh = [t for t in tables.values() if not t.prefixes]
    for t in fresh:
        t.filling = True
    prev = None
    try:
        for fam in (socket.AF_INET, socket.AF_INET6):
            for r in dump_routes(nl, fam):
                for trie, t in items:
                    t.prev = prev
                    k = t.update(r, False, DUMP)
                    if k is not None and writer is not None and k not in pinned[trie]:
                        sid = t.entry_id(k)
                        if sid is None:
                            recheck[trie].add(k)
                        else:
                            writer.put(trie, k, kid(sid))
                n += 1
                prev = r
                if progress and n % 65536 == 0:
                    progress("dump", n)
    finally:
        for t in fresh:
            t.filled()
    return n, recheck


def with_nexthops(nl, tags):
    """The kernel's nexthop objects into the Tags, dumped before the routes
    that name them (a full sync); returns the Tags."""
    from ..routes import dump_nexthops
    from ..sync import Nexthops
    tags.nexthops = Nexthops(dump_nexthops(nl))
    return tags


def follow_nexthops(tags, tables, messages):
    """Nexthop object events [(Nexthop, deleted)] applied to the registry
    and to the tables (both backends' Tables share one Tags); returns
    {trie: prefixes whose best set may have changed}. A deleted object
    takes its routes with it, as the kernel does (sync.SILENT)."""
    gone, changed = set(), set()
    for nh, deleted in messages:
        if deleted:
            g, c = tags.nexthops.remove(nh.id)
            gone |= g
            changed |= c
        else:
            changed |= tags.nexthops.set(nh)
    return _renexthop(tags, tables, gone, changed - gone)


class LazyNetlink:
    """A netlink socket opened on first call (most batches need none) and
    closed with the `with` block: the re-reads after a batch share it."""

    def __init__(self, rcvbuf):
        self.rcvbuf, self.nl = rcvbuf, None

    def __call__(self):
        if self.nl is None:
            from ..routes import Netlink
            self.nl = Netlink(rcvbuf=self.rcvbuf)
        return self.nl

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.nl is not None:
            self.nl.close()


def apply_events(tags, tables, changes, netlink):
    """One batch's route and nexthop events applied to the tables in the
    kernel's order (routes.Changes.steps), then, after a device event of
    changes.silent, the objects read again through netlink() (called only
    then); returns {trie: prefixes whose entry may have changed}.

    Why this order and no other re-read: the kernel tells every change of
    an object but those a device makes (an RTM_DELNEXTHOP shrinks the
    groups holding it with an RTM_NEWNEXTHOP each, and deletes an emptied
    group with its own RTM_DELNEXTHOP), so a deleted object needs no
    re-read: its routes, which go without a word, leave the tables
    whether or not the registry knew the id. A re-read there would put
    the registry ahead of the events still queued, and a queued deletion
    of an id it no longer had would leave that id's routes behind, to
    come back to life when the id is made again. A device going down or
    away flushes its objects without a word (nexthop_flush_dev): they go
    at that point of the batch (Nexthops.flush_dev: an id made again later
    in the batch does not bring back their routes), and after the batch
    the objects are read again all the same; the ids that vanished are remembered
    (Nexthops.vanished) until an RTM_NEWNEXTHOP makes them again, and a
    queued route through one of them, which the kernel removed with it,
    is applied as a deletion. Queued object events carry whole objects:
    applied in order, they end where the kernel is."""
    out = {trie: set() for trie in tables}
    run = []  # consecutive nexthop events, applied together

    def flush():
        if run:
            for trie, keys in follow_nexthops(tags, tables, run).items():
                out[trie] |= keys
            run.clear()
    for kind, step in changes.steps:
        if kind is NEXTHOP:
            run.append(step)
            continue
        flush()
        if kind is LINK:  # its objects go, and their routes, before what follows
            gone, changed = tags.nexthops.flush_dev(step)
            if gone or changed:
                for trie, keys in _renexthop(tags, tables, gone, changed).items():
                    out[trie] |= keys
            continue
        r, deleted, flags = step
        for trie, t in tables.items():
            k = t.update(r, deleted, flags)
            if k is not None:
                out[trie].add(k)
    flush()
    if changes.silent:
        nl = netlink()
        for trie, keys in reread_nexthops(nl, tags, tables).items():
            out[trie] |= keys
    return out


def reread_nexthops(nl, tags, tables):
    """The nexthop objects dumped again (after what can remove them without
    a word: sync.SILENT) and the difference applied; as follow_nexthops."""
    from ..routes import dump_nexthops
    gone, changed = tags.nexthops.replace_all(dump_nexthops(nl), vanish=True)
    return _renexthop(tags, tables, gone, changed - gone)


def _renexthop(tags, tables, gone, changed):
    slots = tags.refresh(gone | changed)  # one slot per object: its routes follow it untouched
    out = {trie: t.drop_nexthops(gone) | t.nexthop_keys_of(slots) for trie, t in tables.items()}
    tags.release(gone)  # their routes left every table: the slots are free
    return out

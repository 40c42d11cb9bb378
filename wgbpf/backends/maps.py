# SPDX-License-Identifier: GPL-2.0-or-later
"""The BPF maps backend: the kernel routes that name peers, kept in the
pinned LPM tries (and the DIR-24-8 arrays) that the tc programs read.

    attach      in a child process (no BCC in the daemon), then the pinned
                maps opened; the lookup settings follow the instance
    full sync   dump -> Table -> diff against the maps -> write; into
                maps holding no kernel entry yet, written as the dump goes
    events      each changed prefix's best set written, under the writer
                lock, without reading it back while the lock's generation
                says nobody else wrote the maps since we read them
    tick        the pins still ours (detach, repair), another writer's
                entries re-read, waiting changes tried again every 5 ms
"""
import contextlib
import dataclasses
import fcntl
import os
import pickle
import subprocess
import sys
import time

from .. import abi, config, dataplane, instance, maps, routes, sync
from ..links import Links
from ..liveness import MemberCounters
from ..maps import Maps, MapError, pin_dir
from ..setmaps import KernelSets
from .base import Backend, LazyNetlink, apply_events, dump_tables, with_nexthops
from .fullsync import Sync, new_tables, patch_dir24, reconcile

ATTACH_REFUSED = 3  # the attach child's exit: refused, its message on stderr
RETRY_SECONDS = 0.005  # route changes waiting for the writer lock: tried again after
# A tie of equal-key routes begun by an event holds a route the tables do
# not know (wgbpf/ties.py), or a LAN device went down or lost an address
# (its routes, which name no peer, flushed without a word): the routes are
# read again, at most this often (a storm of `ip route append` or a
# flapping LAN must not become a storm of full dumps)
UNSURE_SECONDS = 5.0
# Out of peer set ids (more distinct sets than the daemon's range, or ids
# held by sets no longer named): the prefixes short of one name no peer,
# and a full sync, which frees the unnamed, runs at most this often
SETS_SECONDS = 30.0


class MapsBackend(Backend):
    name = "maps"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.maps = None
        self.ksets = None   # setmaps.KernelSets: the daemon's peer set ids in the maps
        self.links = None
        self.table = None   # the routes Table (LPM mode), for status
        self.tables = {}    # trie -> Table: what the maps' kernel entries hold
        # trie -> prefixes of the maps' own entries (static, tag), which
        # route events leave alone; good while the writer lock's generation
        # is `known` (nobody else wrote the maps since we read them)
        self.operator = {}
        self.known = None
        # trie -> prefixes whose best set changed, not yet written (the
        # writer lock was busy), and when the oldest of them was read
        self.pending = {}
        self.pending_since = None
        self.pending_told = False  # logged that they wait (once a wait)
        self.dir24 = None          # DIR-24-8 mode: the compiled IPv4 arrays
        self.maps_changed = False  # `wgbpf route` wrote the maps, or the generation moved
        self.reattached = False    # `wgbpf attach` reconciled the instance
        self.detached = False      # our maps are no longer pinned: write nothing
        self.writing = None        # the instance's writer lock's fd, while we hold it
        self.looked = 0.0          # when the generation was last looked at
        self.unsure_every = Every(UNSURE_SECONDS)  # routes read again for a tie, at most so often
        self.sets_every = Every(SETS_SECONDS)      # a full sync for want of set ids, at most so often
        self.stats = {"map_writes": 0, "sets_freed": 0, "rehooks": 0, "members_gone": 0, "read_back": 0,
                      "pending": 0, "rereads": 0, "last_sync": None, "last_sync_seconds": None}
        self.member_counters = MemberCounters()
        self.pin_lock = None       # an fd of the pin directory, flock'ed: one daemon an instance

    # -- the data plane ----------------------------------------------------
    @contextlib.contextmanager
    def _writing(self):
        """The instance's writer lock around our own attach and full syncs,
        so an operator's attach or detach never interleaves with them."""
        if self.writing is not None:  # nested: held once
            yield
            return
        with instance.writer_lock(self.cfg.front, lambda holder: self.log(f"waiting for {holder} to finish writing"),
                                  bump=False) as fd:
            self.writing = fd
            try:
                yield
            finally:
                self.writing = None

    def attach(self, cfg):
        self.cfg = cfg
        if self.links is None:
            self.links = Links(cfg.front, self.log, self.liveness, self.stats)
        self.pin_lock = lock_pins(pin_dir(cfg.front), self.pin_lock)  # before our attach changes anything
        with self._writing():
            res = attach_in_child(cfg)
            for c in res["changes"]:
                self.log(f"attach: {c}")
            for w in res["warnings"]:
                self.log(f"warning: {w}")
            if self.maps is None or dataplane.unpinned(self.maps):
                self._open_maps()
        return self.cfg

    def _open_maps(self):
        """(Re)open the pinned maps; the lookup settings follow the
        instance as attached (an attach under us may have changed them)."""
        self.pin_lock = lock_pins(pin_dir(self.cfg.front), self.pin_lock)
        m = Maps.open(pin_dir(self.cfg.front))
        if self.maps is not None:
            self.maps.close()
        self.maps = m
        self.ksets = KernelSets(m.sets)  # the ids a daemon before us wrote, adopted
        self.detached = False
        c = m.config()
        self.cfg = dataclasses.replace(self.cfg, lookup=abi.Lookup(c.lookup), fib_table=c.fib_table,
                                       accept_table=c.accept_table)

    def check_maps(self):
        """The maps we write must be the maps that are pinned (the ones the
        programs read). Checked every pass and at once after an attach:
        pins gone (detach) -> "detached", nothing written; pins replaced
        (detach + attach, a pin repaired) -> reopened. Returns why a full
        resync is due (after an attach its peers and tags may differ)."""
        attached, self.reattached = self.reattached, False
        if not attached and not self.detached and not dataplane.unpinned(self.maps):
            return None
        with self._writing():  # an attach in progress finishes first
            moved = dataplane.unpinned(self.maps)
            if moved:
                try:
                    self._open_maps()
                except MapError:
                    if not self.detached:
                        self.detached = True
                        self.log(f"maps no longer pinned ({', '.join(moved)}): instance detached; "
                                 f"nothing is written until it is attached again")
                    return None
                self.log(f"maps replaced under the daemon ({', '.join(moved)}): reopened")
            elif self.detached:  # pinned again: the very maps we hold (attach repaired the pins)
                self.detached = False
                self.log("maps pinned again: instance attached")
        return "attach" if attached else "maps replaced"

    def follow_links(self, check_hooks=False):
        """The maps matched to the devices as they are now (links.Links),
        under the writer lock: an operator's attach may be hooking too.
        Returns True when a device was re-hooked."""
        with self._writing():
            if self.detached or dataplane.unpinned(self.maps):
                return False  # a detach under way, or done: check_maps follows it
            return self.links.follow(self.maps, check_hooks)

    def _tags(self, nl):
        peers = self.maps.peers()
        # the tags as attached (an attach under us may have changed them)
        by_addr = {t.packed: peer_id for t, peer_id in self.maps.tags().items() if peer_id in peers}
        by_oif = {p.ifindex: i for i, p in peers.items()}
        # the far end of a point-to-point address on a member is that peer's
        for ifindex, _local, peer in routes.dump_addrs(nl):
            if peer is not None and ifindex in by_oif:
                by_addr.setdefault(peer, by_oif[ifindex])
        tags = with_nexthops(nl, sync.Tags(by_addr, by_oif, front=self.maps.config().front_ifindex or None))
        self.ksets.bind(tags)  # the tables made of them are the ones written from now on
        return tags

    # -- full sync ---------------------------------------------------------
    def full_sync(self, why):
        with self._writing():
            t0 = time.monotonic()
            self.follow_links()
            if self.ksets.low():
                # the ids no entry names (deleted objects, a restart's
                # leftovers) freed before the sync takes new ones: a walk
                # of every entry, so only when a quarter or less is left
                self.stats["sets_freed"] += self.ksets.sweep(self.maps.sets.named())
            run = Sync(self)
            n, tables = run.dump()
            t_dump = time.monotonic() - t0
            writes, puts, deletes = run.write()
            if tables:
                self.ksets.follow()
            self.tables = tables
            self._know(run.operator)
            self.dir24 = run.compiled()
            self.table = tables.get("routes")
        dt = time.monotonic() - t0
        self.stats["map_writes"] += writes
        self.stats["last_sync"] = time.time()
        self.stats["last_sync_seconds"] = round(dt, 3)
        if self.table is None:
            self.log(f"sync ({why}): lookup fib, no prefixes to copy; following links and tags")
        else:
            self.log(f"sync ({why}): {n} routes read, {len(self.table)} prefixes name peers, "
                     f"{self.table.ignored} ignored ({len(self.table.specific)} TOS/source-specific), {writes} map writes "
                     f"({puts} put, {deletes} deleted) in {dt:.2f}s (dump {t_dump:.2f}s)"
                     + (f"; DIR-24-8 compiled apart, child peak RSS {self.dir24.child_peak_mib:.0f} MiB"
                        if self.dir24 is not None else ""))
        return writes

    def maps_sync(self, why):
        """Re-read the maps, not the kernel: after `wgbpf route` wrote them
        (it sends SIGUSR1), its entries are left alone, a kernel route
        takes the place of one it removed, and the DIR-24-8 arrays (whose
        view `wgbpf route` cannot update) are recompiled."""
        if not self.tables:
            return
        with self._writing():
            if instance.generation(self.writing) == self.known:
                return  # read since the last writer: nothing new
            writes = 0
            operator = {trie: set() for trie in self.tables}
            for trie, table in self.tables.items():
                writes += self.maps.tries.apply(reconcile(self.maps, trie, table, operator[trie], self.ksets.kid), trie)
            self._know(operator)
            if self.dir24 is not None:
                self.dir24 = self.maps.dir24.compile_apart()
        self.stats["map_writes"] += writes
        self.log(f"maps re-read ({why}): {writes} map writes")

    def _know(self, operator):
        """The maps were just read and written whole, under the writer
        lock: their kernel entries are the tables', the rest `operator`'s
        (and no change is left to write)."""
        self.operator = operator or {}
        self.known = instance.generation(self.writing)
        self.pending, self.pending_since = {}, None

    # -- events ------------------------------------------------------------
    def apply(self, changes, t_read):
        """One read's changes; returns True if a resync is due."""
        why = self.check_maps()  # a detach meanwhile: nothing to re-hook from
        if why or self.detached:
            return bool(why)  # detached: nothing to write to; an attach resyncs
        changed = self.pending
        for trie in self.tables:
            changed.setdefault(trie, set())
        if self.pending_since is None:
            self.pending_since = t_read if t_read is not None else time.monotonic()
        if self.tables:
            self._apply_events(changes, changed)
        resync = False
        if changes.addresses:
            members = self.maps.members()
            # a peer's tag moved: re-resolve everything
            resync = any(peer is not None and index in members for index, _l, peer in changes.addresses)
        if changes.links and self.follow_links(changes.hooks):
            resync = True  # routes by member device name the new ifindex
        self.write_pending()
        return resync

    def _apply_events(self, changes, changed):
        """Routes and nexthop objects in the kernel's order
        (base.apply_events); and what the kernel removes without a word
        (sync.SILENT): after a device of ours went down or away, or lost
        an address, the routes are read again (not the maps) and the
        difference written; after any such event the objects are read
        again."""
        tags = next(iter(self.tables.values())).tags
        with LazyNetlink(self.rcvbuf) as netlink:
            for trie, keys in apply_events(tags, self.tables, changes, netlink).items():
                changed[trie] |= keys
            self.ksets.follow()  # a changed object: its set rewritten, not its routes
            ours = set()
            if changes.silent:
                ours = {p.ifindex for p in self.maps.peers().values()} | {self.maps.config().front_ifindex}
                if changes.silent - ours:
                    # a LAN device: the routes through it (naming no peer)
                    # went without a word; read again too, but rate-limited
                    for t in self.tables.values():
                        t.unsure = True
            if changes.silent & ours or self.unsure_every(unsure(self.tables)):
                self._reread_routes(netlink(), changed)

    def _reread_routes(self, nl, changed):  # changed: {trie: keys}, added to
        """The kernel's routes read into fresh tables, and every prefix
        whose best set differs from the tables' marked changed (the maps'
        kernel entries hold the old tables' sets: no read of the maps)."""
        t0 = time.monotonic()
        tables = new_tables(self.cfg, self.filter, self._tags(nl))
        n, _ = dump_tables(nl, tables)
        moved = 0
        kid_in = self.ksets.kid_in
        for trie, new in tables.items():
            old, get = self.tables[trie], self.ksets.entry(new)

            def was(k, old=old):
                sid = old.entry_id(k)
                return None if sid is None else kid_in(old.tags, sid)
            keys = {k for k in old.prefixes.keys() | new.prefixes.keys() if was(k) != get(k)}
            changed[trie] = (changed.get(trie, set()) | keys)
            moved += len(keys)
        self.tables = tables
        self.table = tables.get("routes")
        self.stats["rereads"] += 1
        self.log(f"routes read again ({sync.SILENT}): {n} routes, {moved} prefixes changed, "
                 f"in {time.monotonic() - t0:.2f}s")

    def write_pending(self):
        """Write the prefixes whose best set changed, under the writer lock,
        so no `wgbpf route` lands between our look at the maps and our
        write. Busy (another writer): kept for the next try, a few ms on.
        The generation moved (another writer was here): read back, and the
        maps re-read whole soon."""
        if any(self.pending.values()):
            with instance.writer_lock(self.cfg.front, wait=False, bump=False) as fd:
                if fd is None:
                    n = self.stats["pending"] = sum(map(len, self.pending.values()))
                    waited = time.monotonic() - self.pending_since
                    if waited >= 1.0 and not self.pending_told:
                        self.pending_told = True
                        self.log(f"{n} route changes waiting {waited:.0f}s for "
                                 f"{instance.lock_holder(instance.writer_lock_path(self.cfg.front))} "
                                 f"to release the writer lock")
                    return
                known = instance.generation(fd) == self.known
                if not known:
                    self.maps_changed = True
                for trie, keys in self.pending.items():
                    if keys:
                        self._apply_changed(trie, keys, known)
            self.pending = {}
            self.stats["pending"] = 0
            if self.pending_told:
                self.pending_told = False
                self.log(f"route changes written after {time.monotonic() - self.pending_since:.1f}s waiting")
        if self.pending_since is not None:
            if self.lag is not None:
                self.lag.append((time.monotonic() - self.pending_since) * 1000)
            self.pending_since = None

    def _apply_changed(self, trie, keys, known):
        """Write the prefixes whose best peer set changed. `known`: nobody
        else wrote the maps since we last read them, so each kernel entry
        holds the table's previous best and the operator's entries are
        the known ones. Else each prefix is read back (one lookup each):
        what `wgbpf route` wrote meanwhile wins."""
        table = self.tables[trie]
        entry = self.ksets.entry(table)
        if known:
            d = sync.changes(table, keys, self.operator.get(trie, ()), entry)
        else:
            self.stats["read_back"] += len(keys)
            d = sync.diff(table, self.maps.tries.read(keys, trie), keys=keys, entry=entry)
        self.stats["map_writes"] += self.maps.tries.apply(d, trie)
        if self.verbose and d:
            log_applied(self.log, self.peer_names(), trie, d, self.ksets.held)
        if trie == "routes" and self.dir24 is not None:
            self.dir24 = patch_dir24(self.maps, self.dir24, d, self.log)

    # -- the loop's other calls ----------------------------------------------
    def tick(self, now):
        why = self.check_maps()  # after an attach, or a detach, under us
        if why:
            return why
        if self.detached:
            return None
        if now - self.looked >= 1.0:
            # another writer since we read the maps (a `wgbpf route`
            # killed before it could tell us, say): re-read them
            self.looked = now
            if self.tables:
                with instance.writer_lock(self.cfg.front, wait=False, bump=False) as fd:
                    if fd is not None and instance.generation(fd) != self.known:
                        self.maps_changed = True
        if self.maps_changed:
            self.maps_changed = False
            self.maps_sync("written by another writer")
        if self.ksets is not None and self.sets_every(self.ksets.exhausted):
            # prefixes went without their set ("no peer") for want of an
            # id: a full sync frees those no entry names, and writes them
            self.ksets.exhausted = False
            return "peer set ids ran out"
        if self.unsure_every(unsure(self.tables)):  # a tie begun by an event, not read since (rate-limited)
            with LazyNetlink(self.rcvbuf) as netlink:
                self._reread_routes(netlink(), self.pending)
        if any(self.pending.values()):
            self.write_pending()  # the writer lock was busy: again
        return None

    def wait(self):
        return RETRY_SECONDS if any(self.pending.values()) and not self.detached else None

    def wake(self, reason):
        if reason == "maps written":
            self.maps_changed = True
        elif reason == "attached":
            self.reattached = True

    def counters(self, names):
        """{peer name: (rx bytes, tx bytes, last handshake)} from each
        member's WireGuard device (liveness.member_counters)."""
        return self.member_counters({p.name: p.member for p in self.cfg.peers}, names)

    def liveness_changed(self):
        """A peer died or came back: follow_links writes each peer up when
        its member is up and it is alive. Returns whether it wrote."""
        if self.maps is None or self.detached:
            return False
        self.follow_links()
        return True

    def state(self):
        return "detached" if self.detached else "running"

    def peer_names(self):
        return {i: p.name.decode() for i, p in self.maps.peers().items()} if self.maps else {}

    def status(self):
        names = self.peer_names()
        per_peer = {}
        if self.table is not None:
            per_peer = {names.get(i, f"#{i}"): n for i, n in self.table.per_peer.items() if n}
        tags = self.table.tags if self.table is not None else None
        return dict(self.stats, prefixes=len(self.table) if self.table is not None else 0,
                    set_ids=len(self.ksets.held) if self.ksets else 0,
                    set_writes=self.ksets.writes if self.ksets else 0,
                    sets_short=self.ksets.short if self.ksets else 0,
                    nexthops=len(tags.nexthops.objects) if tags else 0,
                    nexthop_disagreements=tags.disagreements if tags else 0,
                    ecmp_truncated=tags.truncated if tags else 0,
                    ignored=self.table.ignored if self.table is not None else 0,
                    ambiguous=self.table.ambiguous() if self.table is not None else 0,
                    routes_per_peer=per_peer)

    def metrics(self, metric, series, st):
        metric("map_writes_total", "LPM map entries written or deleted", st["map_writes"])
        metric("set_writes_total", "peer sets written (made, or a nexthop object's rewritten in place)",
               st.get("set_writes", 0))
        metric("peer_set_ids", "peer set ids the daemon holds in the sets map", st.get("set_ids", 0), "gauge")
        metric("sets_short_total", "prefixes written as \"no peer\" for want of a peer set id",
               st.get("sets_short", 0))
        metric("rehooks_total", "front or members re-created under their name and hooked again",
               st["rehooks"])
        metric("members_gone_total", "member devices that disappeared (peer taken down)",
               st["members_gone"])
        metric("ignored_routes", "routes that name no peer (last full sync)", st["ignored"], "gauge")
        series("packets_total", "packets by data-plane reason", "counter",
               [(f',reason="{r.name.lower()}"', v) for r, v in self.maps.counters().items()]
               if self.maps is not None else [])

    def close(self):
        if self.maps is not None:
            self.maps.close()
        if self.pin_lock is not None:
            os.close(self.pin_lock)
            self.pin_lock = None


def unsure(tables):
    """A table holds a tie with a route whose nexthops it does not know
    (wgbpf/ties.py): its routes are to be read again."""
    return any(t.unsure for t in tables.values())


class Every:
    """Yes at most once every `seconds`, when asked with a reason."""

    def __init__(self, seconds):
        self.seconds, self.last = seconds, None

    def __call__(self, reason):
        now = time.monotonic()
        if not reason or (self.last is not None and now - self.last < self.seconds):
            return False
        self.last = now
        return True


def lock_pins(directory, held):
    """One daemon an instance, whatever its run dir: the daemon's lock
    lives in the run dir (WGBPF_RUN_DIR), so two daemons given two run
    dirs would both follow the same pins, each deleting what the other
    wrote. An flock on the pin directory itself ties them to the maps.
    `held`: the fd we lock now, or None; returns the fd to hold (locked
    again when the pins are made anew, by detach + attach)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return held  # not attached yet: locked once the attach made it
    if held is not None and os.fstat(fd)[1:3] == os.fstat(held)[1:3]:
        os.close(fd)  # the very directory we hold
        return held
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        # an InstanceError: the daemon exits (one writer), where a failure
        # while applying events would be retried
        raise instance.InstanceError(f"another wgbpf daemon follows the instance pinned at {directory} (it holds the pin "
                       f"directory's lock; started with another WGBPF_RUN_DIR?): stop it first") from None
    if held is not None:
        os.close(held)
    return fd


def log_applied(log, names, trie, d, sets):
    """-v: each map change a route event made, as it is written (with the
    time to the millisecond: when a withdrawal took effect). `sets`: {set
    id: (members, weights, buckets)} (KernelSets.held)."""
    now = time.time()
    at = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
    what = "route" if trie == "routes" else trie
    for k, sid in d.put.items():
        members, weights, _b = sets.get(sid, ((), None, b""))
        who = [names.get(p, f"#{p}") for p in members]
        if weights:
            who = [f"{n} {w}" for n, w in zip(who, weights)]
        log(f"{at} {what} {sync.pkey_network(k)} -> {','.join(who) or 'no peer'} (set {sid})")
    for k in d.delete:
        log(f"{at} {what} {sync.pkey_network(k)} withdrawn")


def attach_in_child(cfg):
    """dataplane.attach in a child process, so the daemon never loads BCC:
    the compile brings LLVM (~170 MiB) that would stay in the daemon for
    its whole life, and all the daemon needs afterwards is bpf(2) on the
    pinned maps. The child inherits the namespace, the environment and
    the writer lock we hold (it takes no lock itself). Returns attach's
    summary; raises AttachError with the child's message."""
    r = subprocess.run([sys.executable, "-m", "wgbpf.backends.maps", "--attach-child"], input=pickle.dumps(cfg),
                       capture_output=True, env=maps.child_env())
    if r.returncode == 0:
        return pickle.loads(r.stdout)
    err = r.stderr.decode(errors="replace").strip()
    if r.returncode == ATTACH_REFUSED:
        raise dataplane.AttachError(err)
    raise dataplane.AttachError(f"attach failed (exit {r.returncode}): {err.splitlines()[-1] if err else ''}")


def _attach_child():
    from ..wireguard import WireGuardError
    cfg = pickle.loads(sys.stdin.buffer.read())
    try:
        res = dataplane.attach(cfg, log=lambda m: None)
    except (dataplane.AttachError, MapError, config.ConfigError, WireGuardError, OSError) as e:
        print(str(e), file=sys.stderr)
        sys.exit(ATTACH_REFUSED)
    sys.stdout.buffer.write(pickle.dumps(res))


if __name__ == "__main__" and sys.argv[1:] == ["--attach-child"]:
    _attach_child()

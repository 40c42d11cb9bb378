"""wgbpf daemon: keep the pinned LPM maps equal to the kernel routes that
name peers.

    start   lock /run/wgbpf/<netns cookie>/<front>.lock (one daemon per
            front and namespace), attach
            (reconcile peers and tags), full dump -> diff -> apply
    loop    RTM_NEWROUTE/DELROUTE applied in arrival order, batched per
            read; RTM_NEWLINK marks members up/down; addresses on members
            and SIGHUP (config reload) re-resolve by full resync; ENOBUFS
            (we lost events) -> full resync
    exit    SIGTERM/SIGINT: stop syncing; the data plane keeps running on
            the pinned maps, and the next start reconciles by diff

The event socket is opened before the dump, so nothing that changes during
a dump is lost: those events are applied after it, in order.
"""
import collections
import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import gc
import json
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import time

from . import abi, config, dataplane, files, instance, liveness, maps, routes, sync
from .instance import InstanceError
from .dir24 import Dir24Error
from .maps import Maps, MapError, pin_dir
from .version import VERSION

BATCH_EVENTS = 1024
BATCH_SECONDS = 0.005
EVENT_GROUPS = (routes.RTMGRP_IPV4_ROUTE | routes.RTMGRP_IPV6_ROUTE | routes.RTMGRP_LINK
                | routes.RTMGRP_IPV4_IFADDR | routes.RTMGRP_IPV6_IFADDR | routes.RTMGRP_TC)



class Lag:
    """Event-to-map lag in ms of the recent batches (p50, p99) and since start (max)."""

    def __init__(self, keep=4096):
        self.recent = collections.deque(maxlen=keep)
        self.max = 0.0
        self.last = None

    def append(self, ms):
        self.recent.append(ms)
        self.last = ms
        self.max = max(self.max, ms)

    def stats(self):
        s = sorted(self.recent)

        def q(f):
            return round(s[min(len(s) - 1, int(f * len(s)))], 3) if s else None
        return {"lag_ms_last": None if self.last is None else round(self.last, 3),
                "lag_ms_p50": q(0.5), "lag_ms_p99": q(0.99), "lag_ms_max": round(self.max, 3)}


def attach_in_child(cfg):
    """dataplane.attach in a child process, so the daemon never loads BCC:
    the compile brings LLVM (~170 MiB) that would stay in the daemon for
    its whole life, and all the daemon needs afterwards is bpf(2) on the
    pinned maps. The child inherits the namespace, the environment and
    the writer lock we hold (it takes no lock itself). Returns attach's
    summary; raises AttachError with the child's message."""
    r = subprocess.run([sys.executable, "-m", "wgbpf.daemon", "--attach-child"], input=pickle.dumps(cfg),
                       capture_output=True, env=maps.child_env())
    if r.returncode == 0:
        return pickle.loads(r.stdout)
    err = r.stderr.decode(errors="replace").strip()
    if r.returncode == ATTACH_REFUSED:
        raise dataplane.AttachError(err)
    raise dataplane.AttachError(f"attach failed (exit {r.returncode}): {err.splitlines()[-1] if err else ''}")


ATTACH_REFUSED = 3


def _attach_child():
    from .wireguard import WireGuardError
    cfg = pickle.loads(sys.stdin.buffer.read())
    try:
        res = dataplane.attach(cfg, log=lambda m: None)
    except (dataplane.AttachError, MapError, config.ConfigError, WireGuardError, OSError) as e:
        print(str(e), file=sys.stderr)
        sys.exit(ATTACH_REFUSED)
    sys.stdout.buffer.write(pickle.dumps(res))


class Daemon:
    """The loop (events, signals, resyncs), the lock, the status file and
    the metrics, driving the BPF maps backend. A backend is what these
    replace (allowedips.AllowedIPsDaemon: WireGuard's AllowedIPs on one
    device), as wireguard-tools' ipc.c dispatches to ipc-linux.h and
    ipc-uapi.h:
        _attach()            make the data plane match the config
        full_sync(why)       dump the kernel's routes, write the difference
        handle(events)       apply a batch of events; True: resync
        write_status(state)  its fields, then Daemon.write_status
        backend_metrics()    its Prometheus families
    """
    verbose = False  # -v: log every map change a route event makes
    gone_after = 30.0  # seconds the front (or --netns name) may be gone before we exit; 0: never
    netns_path = None  # --netns: the name this daemon was started in
    gone_since = None
    def __init__(self, build_config, flt, log, metrics_file=None, rcvbuf=32 << 20,
                 progress=None):
        self.build_config = build_config  # () -> Config; called again on SIGHUP
        self.filter = flt
        self.log = log
        self.metrics_file = metrics_file
        self.rcvbuf = rcvbuf
        self.progress = progress
        self.stats = {"events": 0, "map_writes": 0, "resyncs": 0, "overruns": 0,
                      "rehooks": 0, "members_gone": 0, "backlogged": 0, "read_back": 0, "pending": 0, "peer_deaths": 0, "peer_revivals": 0,
                      "last_sync": None,
                      "last_sync_seconds": None, "started": time.time()}
        self.lag = Lag()  # event-to-map lag of each batch applied
        self.stop = False
        self.reload = False
        self.cfg = None
        self.maps = None
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
        self.dir24 = None     # DIR-24-8 mode: the compiled IPv4 arrays
        self.lock_fd = None
        self.maps_changed = False  # SIGUSR1: `wgbpf route` wrote the maps
        self.reattached = False    # SIGUSR2: `wgbpf attach` reconciled the instance
        self.detached = False      # our maps are no longer pinned: write nothing
        self.writing = None        # the instance's writer lock's fd, while we hold it
        self.front_gone = False
        self.foreign_hooks = set()  # hooks another instance took: logged once each
        self.write_errors = {}  # file -> the last failure to write it, logged once
        self.liveness = liveness.Liveness()  # dead peers (--dead-after): down while dead
        self.wg_devices = {}    # member name -> its WireGuard device (counters)

    # -- setup -----------------------------------------------------------
    def _lock(self, front):
        os.makedirs(instance.run_dir(), mode=0o755, exist_ok=True)
        path = instance.lock_path(front)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode().strip() or "?"
            os.close(fd)
            raise InstanceError(f"another wgbpf daemon (pid {other}) is already running for {front!r}")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd

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

    def _attach(self):
        with self._writing():
            res = attach_in_child(self.cfg)
            for c in res["changes"]:
                self.log(f"attach: {c}")
            for w in res["warnings"]:
                self.log(f"warning: {w}")
            if self.maps is None or dataplane.unpinned(self.maps):
                self._open_maps()

    def _open_maps(self):
        """(Re)open the pinned maps; the lookup settings follow the
        instance as attached (an attach under us may have changed them)."""
        m = Maps.open(pin_dir(self.cfg.front))
        if self.maps is not None:
            self.maps.close()
        self.maps = m
        self.detached = False
        c = m.config()
        self.cfg = dataclasses.replace(self.cfg, lookup=abi.Lookup(c.lookup), fib_table=c.fib_table,
                                       accept_table=c.accept_table)

    def check_maps(self):
        """The maps we write must be the maps that are pinned (the ones the
        programs read). Checked every second and at once on SIGUSR2 (an
        attach): pins gone (detach) -> status "detached", nothing written;
        pins replaced (detach + attach, a pin repaired) -> reopened; either
        way after an attach a full resync (its peers and tags may differ)."""
        attached, self.reattached = self.reattached, False
        if self.maps is None:  # no maps to follow (--backend allowedips)
            return
        if not attached and not self.detached and not dataplane.unpinned(self.maps):
            return
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
                        self.write_status("detached")
                    return
                self.log(f"maps replaced under the daemon ({', '.join(moved)}): reopened")
            elif self.detached:  # pinned again: the very maps we hold (attach repaired the pins)
                self.detached = False
                self.log("maps pinned again: instance attached")
            self.stats["resyncs"] += 1
            self.full_sync("attach" if attached else "maps replaced")

    def _tags(self, nl):
        peers = self.maps.peers()
        # the tags as attached (an attach under us may have changed them)
        by_addr = {t.packed: peer_id for t, peer_id in self.maps.tags().items() if peer_id in peers}
        by_oif = {p.ifindex: i for i, p in peers.items()}
        # the far end of a point-to-point address on a member is that peer's
        for ifindex, _local, peer in routes.dump_addrs(nl):
            if peer is not None and ifindex in by_oif:
                by_addr.setdefault(peer, by_oif[ifindex])
        return sync.Tags(by_addr, by_oif, front=self.maps.config().front_ifindex or None)

    # -- sync ------------------------------------------------------------
    def _new_tables(self, tags):
        """What to sync, as {trie: Table}. LPM mode: the best route per
        prefix into routes4/6, and with an accept table every feasible
        route into accept4/6. FIB mode: nothing, the data plane asks the
        kernel; the daemon then follows links and tags only."""
        if self.cfg.lookup == abi.Lookup.FIB:
            return {}
        out = {"routes": sync.Table(tags, self.filter)}
        if self.cfg.accept_table:
            f = sync.Filter((self.cfg.accept_table,), self.filter.protocols, self.filter.realms)
            out["accept"] = sync.Table(tags, f, union=True)
        return out

    def _dump(self, nl, tables, writer=None, pinned=None):
        """Every route of the kernel into each Table; returns the count.
        With a writer (maps holding no kernel entry yet), each prefix's
        best peer set is written as the dump goes, overlapping the map
        writes with the parsing; returns also the prefixes to check once
        the dump is done (their best set went away: delete)."""
        n = 0
        recheck = {trie: set() for trie in tables}
        items = list(tables.items())
        progress = self.progress
        for fam in (socket.AF_INET, socket.AF_INET6):
            for r in routes.dump_routes(nl, fam):
                for trie, t in items:
                    k = t.update(r)
                    if k is not None and writer is not None and k not in pinned[trie]:
                        peers = t.best(k)
                        if peers is None:
                            recheck[trie].add(k)
                        else:
                            writer.put(trie, k, peers)
                n += 1
                if progress and n % 65536 == 0:
                    progress("dump", n)
        return n, recheck

    def _fresh(self, tables):
        """The prefixes of the maps' own entries (static, tags) per trie,
        when the maps hold no kernel entry (a first start: the sync can
        write as it dumps); None when they do (a restart: diff first)."""
        pinned = {}
        for trie in tables:
            pinned[trie] = set()
            for k, origin, _v in self.maps.scan(trie):
                if origin == abi.Origin.KERNEL:
                    return None
                pinned[trie].add(k)
        return pinned

    def _reconcile(self, trie, table, operator, batches=None):
        """What to write so one pair of maps equals the table, from the maps
        read in batches (Maps.batches: read now, or already); the prefixes
        of the operator's entries are added to `operator`."""
        d = sync.Diff()
        kern = abi.Origin.KERNEL
        covered = 0
        best_id, sets, rs = table.best_id, table.tags.sets, maps.ROUTE_SIZE
        value = {}  # (set id << 8) | prefixlen -> the bytes of its kernel entry
        # one pass over the raw batches, a million times: an entry equal to
        # what the table wants costs a lookup and a bytes compare
        if batches is None:
            batches = self.maps.batches(trie, ahead=True)
        for head, ks, keys, values, count in batches:
            for i in range(count):
                at = i * ks
                k = head[keys[at]] + keys[at + 4:at + ks]
                v = values[i * rs:(i + 1) * rs]
                sid = best_id(k)
                if not sid:
                    if v[1] == kern:
                        d.delete.append(k)
                    else:
                        operator.add(k)
                    continue
                covered += 1
                want = value.get((sid << 8) | keys[at])
                if want is None:
                    want = value[(sid << 8) | keys[at]] = maps.route_value(sets[sid], keys[at])
                if v != want:
                    if v[1] == kern:
                        d.put[k] = sets[sid]
                    else:  # the operator's entry wins
                        operator.add(k)
        if covered < len(table):
            # prefixes with no entry at all (routes added while we were
            # away): found by exact lookups, rather than a set of every key
            for k in self.maps.missing((k for k, _peers in table.items()), trie):
                d.put[k] = table.best(k)
        return d

    def full_sync(self, why):
        with self._writing():
            return self._full_sync(why)

    def _full_sync(self, why):
        t0 = time.monotonic()
        self.follow_links()
        nl = routes.Netlink(rcvbuf=self.rcvbuf)
        writer = compiling = None
        dir24 = self.cfg.lookup == abi.Lookup.DIR24
        try:
            tables = self._new_tables(self._tags(nl))
            pinned = self._fresh(tables) if tables else None
            if pinned is not None:
                writer = maps.Writer(self.maps, progress=(lambda k: self.progress("write", k))
                                         if self.progress else None)
            elif tables:
                # a restart: the kernel walks the maps' tries (a second a
                # million entries, in syscalls) while we parse the dump
                read = maps.in_background(lambda: {trie: list(self.maps.batches(trie)) for trie in tables})
                if dir24 and "routes" in tables:
                    # and a child compiles the arrays from routes4 as it is
                    # (another CPU): what the diff changes is patched in
                    compiling = self.maps.start_dir24_apart()
            # no cyclic GC while a million short-lived tuples come and go: it
            # would walk the young ones again and again for nothing
            gc.disable()
            try:
                n, recheck = self._dump(nl, tables, writer, pinned) if tables else (0, {})
            finally:
                gc.enable()
        except BaseException:
            if writer is not None:
                writer.close()
            if compiling is not None:
                compiling.cancel()
            raise
        finally:
            nl.close()
        t_dump = time.monotonic() - t0
        writes = puts = deletes = 0
        operator = pinned
        if writer is not None:
            for trie, keys in recheck.items():
                for k in keys:
                    if tables[trie].best(k) is None and k not in pinned[trie]:
                        writer.delete(trie, k)
                        deletes += 1
            writes = writer.close()
            puts = writes - deletes
        else:
            operator = {trie: set() for trie in tables}
            batches = read() if tables else {}
            diffs = {}
            for trie, table in tables.items():
                d = diffs[trie] = self._reconcile(trie, table, operator[trie], batches.pop(trie))
                writes += self.maps.apply(d, trie, progress=(lambda k, total=len(d): self.progress("write", k, total))
                                          if self.progress else None)
                puts, deletes = puts + len(d.put), deletes + len(d.delete)
        trim_heap()  # what the batches read or written took (36 MiB at a full table) is free
        self.tables = tables
        self._know(operator)
        self.dir24 = None
        if compiling is not None:
            self.dir24 = compiling.result()
            self.patch_dir24(diffs["routes"])
        elif dir24 and "routes" in self.tables:
            # the IPv4 arrays from all of routes4 (ours, static and tags);
            # only the /24s that differ are rewritten
            self.dir24 = self.maps.compile_dir24_apart()
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
        self.write_status("running")
        return writes

    def maps_sync(self, why):
        """Re-read the maps, not the kernel: after `wgbpf route` wrote them
        (it sends SIGUSR1), its entries are left alone, a kernel route
        takes the place of one it removed, and the DIR-24-8 arrays (whose
        view `wgbpf route` cannot update) are recompiled."""
        if self.maps is None or not self.tables:
            return
        with self._writing():
            if instance.generation(self.writing) == self.known:
                return  # read since the last writer: nothing new
            writes = 0
            operator = {trie: set() for trie in self.tables}
            for trie, table in self.tables.items():
                writes += self.maps.apply(self._reconcile(trie, table, operator[trie]), trie)
            self._know(operator)
            if self.dir24 is not None:
                self.dir24 = self.maps.compile_dir24_apart()
        self.stats["map_writes"] += writes
        self.log(f"maps re-read ({why}): {writes} map writes")

    def _know(self, operator):
        """The maps were just read and written whole, under the writer
        lock: their kernel entries are the tables', the rest `operator`'s
        (and no change is left to write)."""
        self.operator = operator or {}
        self.known = instance.generation(self.writing)
        self.pending, self.pending_since = {}, None

    def follow_links(self, check_hooks=False):
        """Make the maps match the devices as they are now, by name: a member
        or front re-created (`wg-quick down/up`, a wireguard-go restart)
        under its name is hooked again and its new ifindex written; a member
        gone or down takes its peer down; every other device is vetted and
        every host address made a martian source (dataplane.vet).
        Level-triggered: run on any link or address event, and at every
        full sync (an overrun may have eaten the events). Returns True when
        a device was re-hooked: routes by member device must be re-resolved.
        Under the writer lock: an operator's attach may be hooking too."""
        with self._writing():
            return self._follow_links(check_hooks)

    def _follow_links(self, check_hooks):
        """`check_hooks`: a tc qdisc or filter was deleted somewhere; look
        for ours on every device (two dumps a device: only then)."""
        rehooked = False
        if self.detached or dataplane.unpinned(self.maps):
            return False  # a detach under way, or done: check_maps follows it
        fname = dataplane.filter_name(self.cfg.front)
        with dataplane.iproute() as ipr:
            dump = ipr.get_links()
            now = {l.get_attr("IFLA_IFNAME"): (l["index"], bool(l["flags"] & dataplane.IFF_UP))
                   for l in dump
                   # what attach would refuse is no member: only WireGuard/TUN
                   if l["ifi_type"] == dataplane.ARPHRD_NONE}
            front = self.cfg.front
            peers = self.maps.peers()
            members = self.maps.members()  # each peer below changes only its own entries
            for peer_id, p in peers.items():
                dev = p.member.decode()
                link = now.get(dev)
                if link is None:
                    if p.flags & abi.PEER_UP or p.ifindex in members:
                        # the ifindex may be reused by an unrelated device
                        self.maps.del_member(p.ifindex)
                        p.flags &= ~abi.PEER_UP
                        self.maps.set_peer(peer_id, p)
                        self.maps.rebuild_flood()
                        self.stats["members_gone"] += 1
                        self.log(f"peer {p.name.decode()}: member {dev} gone; peer down until it returns")
                    continue
                index, up = link
                up = up and self.liveness.alive(p.name.decode())  # a dead peer stays down
                if index != p.ifindex or index not in members:
                    old = dataplane.rehook_member(ipr, self.maps, front, peer_id, index, up)
                    self.stats["rehooks"] += 1
                    rehooked = True
                    self.log(f"peer {p.name.decode()}: member {dev} re-created (ifindex {old} -> "
                             f"{index}), hooked again{'' if up else ', down'}")
                elif check_hooks and not all(fname in dataplane.filters(ipr, index, hook)
                                             for hook in ("ingress", "egress")):
                    dataplane.rehook_member(ipr, self.maps, front, peer_id, index, up)
                    self.stats["rehooks"] += 1
                    self.log(f"peer {p.name.decode()}: member {dev} lost wgbpf's filter "
                             f"(tc qdisc or filter deleted), hooked again")
                elif bool(p.flags & abi.PEER_UP) != up:
                    p.flags = (p.flags | abi.PEER_UP) if up else (p.flags & ~abi.PEER_UP)
                    self.maps.set_peer(peer_id, p)
                    self.maps.rebuild_flood()
                    dead = not self.liveness.alive(p.name.decode())
                    self.log(f"peer {p.name.decode()}: {'dead' if dead else 'member'} {'up' if up else 'down'}")
            c = self.maps.config()
            if c.front_ifindex:
                link = now.get(front)
                if link is None:
                    if not self.front_gone:
                        self.front_gone = True
                        self.log(f"front {front} gone: peers' traffic is dropped until it returns")
                elif link[0] != c.front_ifindex:
                    old = dataplane.rehook_front(ipr, self.maps, front, link[0])
                    self.front_gone = False
                    self.stats["rehooks"] += 1
                    rehooked = True
                    self.log(f"front {front} re-created (ifindex {old} -> {link[0]}), hooked again")
                else:
                    self.front_gone = False
                    if check_hooks and fname not in dataplane.filters(ipr, link[0], "egress"):
                        dataplane.rehook_front(ipr, self.maps, front, link[0])
                        self.stats["rehooks"] += 1
                        self.log(f"front {front} lost wgbpf's filter (tc qdisc or filter deleted), "
                                 f"hooked again")
            if check_hooks:
                self._report_foreign_hooks(peers, now, c)
            dataplane.vet(ipr, self.maps, {p.member.decode() for p in peers.values()}
                          | dataplane.other_members(self.cfg.front),
                          {l["index"]: l.get_attr("IFLA_IFNAME") for l in dump})
        return rehooked

    def _report_foreign_hooks(self, peers, now, c):
        """Hooks whose filter of our name runs another instance's programs
        (the same front under another pin root: a container sharing this
        network namespace) are logged once each, not taken back: two
        daemons would take them from each other for ever. `wgbpf status
        --check` reports them until an attach (--force) or a detach there."""
        devices = [(p.member.decode(), now[p.member.decode()][0], "member")
                   for p in peers.values() if p.member.decode() in now]
        if c.front_ifindex and self.cfg.front in now:
            devices.append((self.cfg.front, now[self.cfg.front][0], "front"))
        found = set(dataplane.foreign_hooks(self.cfg.front, devices))
        for problem in sorted(found - self.foreign_hooks):
            self.log(f"{problem}: another wgbpf instance (another pin root?) took the hook; "
                     f"not taken back")
        self.foreign_hooks = found

    def handle(self, events, t_read=None):
        """Apply one read's worth of messages; returns True if a resync is due."""
        changed = self.pending
        for trie in self.tables:
            changed.setdefault(trie, set())
        if self.pending_since is None:
            self.pending_since = t_read if t_read is not None else time.monotonic()
        resync = links = hooks = False
        members = None
        for mtype, buf, off, end in events:
            if mtype in (routes.RTM_NEWROUTE, routes.RTM_DELROUTE):
                self.stats["events"] += 1
                r = routes.parse_route(buf, off, end)
                if r is not None:
                    for trie, table in self.tables.items():
                        k = table.update(r, deleted=(mtype == routes.RTM_DELROUTE))
                        if k is not None:
                            changed[trie].add(k)
            elif mtype in (routes.RTM_NEWLINK, routes.RTM_DELLINK):
                links = True
            elif mtype in (routes.RTM_DELQDISC, routes.RTM_NEWTFILTER, routes.RTM_DELTFILTER):
                links = hooks = True  # a new filter: maybe another instance's in our place
            elif mtype in (routes.RTM_NEWADDR, routes.RTM_DELADDR):
                links = True  # host addresses are martian sources
                if members is None:
                    members = self.maps.members()
                index, _local, peer = routes.parse_addr(buf, off, end)
                if peer is not None and index in members:
                    resync = True  # a peer's tag moved: re-resolve everything
        if links and self.follow_links(hooks):
            resync = True  # routes by member device name the new ifindex
        self.write_pending()
        return resync

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
                                 f"{instance.lock_holder(instance.writer_lock_path(self.cfg.front))} to release the writer lock")
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
            self.lag.append((time.monotonic() - self.pending_since) * 1000)
            self.pending_since = None

    def _apply_changed(self, trie, keys, known):
        """Write the prefixes whose best peer set changed. `known`: nobody
        else wrote the maps since we last read them, so each kernel entry
        holds the table's previous best and the operator's entries are
        the known ones. Else each prefix is read back (one lookup each):
        what `wgbpf route` wrote meanwhile wins."""
        table = self.tables[trie]
        if known:
            d = sync.changes(table, keys, self.operator.get(trie, ()))
        else:
            self.stats["read_back"] += len(keys)
            d = sync.diff(table, self.maps.read(keys, trie), keys=keys)
        self.stats["map_writes"] += self.maps.apply(d, trie)
        if self.verbose and d:
            self.log_applied(trie, d)
        if trie == "routes" and self.dir24 is not None:
            self.patch_dir24(d)

    def check_generation(self):
        """Every second: another writer since we read the maps (a `wgbpf
        route` killed before it could tell us, say): re-read them."""
        if self.maps is None or not self.tables or self.detached:
            return
        with instance.writer_lock(self.cfg.front, wait=False, bump=False) as fd:
            if fd is not None and instance.generation(fd) != self.known:
                self.maps_changed = True

    def patch_dir24(self, d):
        """The IPv4 prefixes of a diff written to routes4, patched into the
        DIR-24-8 arrays; out of set ids or groups, compiled afresh from
        routes4 (which already holds the diff)."""
        try:
            for k, peers in d.put.items():
                if k[0] == socket.AF_INET:
                    self.dir24.change(int.from_bytes(k[2:], "big"), k[1], peers)
            for k in d.delete:
                if k[0] == socket.AF_INET:
                    self.dir24.change(int.from_bytes(k[2:], "big"), k[1], None)
        except Dir24Error as e:
            self.log(f"DIR-24-8: {e}: compiling the arrays afresh")
            self.dir24 = self.maps.compile_dir24_apart()

    def check_gone(self):
        """Exit (InstanceError: exit 1, and systemd restarts us) when what we
        serve is gone for good: the front device, or the namespace named by
        --netns (the name removed, or naming another namespace now), absent
        for gone_after seconds on end. A front re-created (wg-quick
        down/up, a wireguard-go restart) is back well within them."""
        if not self.gone_after or self.cfg is None:
            return
        why = None
        if self.netns_path:
            try:
                there, here = os.stat(self.netns_path), os.stat("/proc/thread-self/ns/net")
                if (there.st_dev, there.st_ino) != (here.st_dev, here.st_ino):
                    why = f"network namespace {self.netns_path} is another namespace now"
            except OSError:
                why = f"network namespace {self.netns_path} is gone"
        if why is None and not self.cfg.members_only:
            try:
                socket.if_nametoindex(self.cfg.front)
            except OSError:
                why = f"front {self.cfg.front} does not exist"
        now = time.monotonic()
        if why is None:
            if self.gone_since is not None:
                self.log("back: staying")
            self.gone_since = None
        elif self.gone_since is None:
            self.gone_since = now
            self.log(f"{why}: exiting unless it is back within {self.gone_after:g}s")
        elif now - self.gone_since >= self.gone_after:
            raise InstanceError(f"{why} for {self.gone_after:g}s: gone for good, exiting (the pins stay; "
                              f"started again, the daemon attaches once the front is back)")

    def log_applied(self, trie, d):
        """-v: each map change a route event made, as it is written (with
        the time to the millisecond: when a withdrawal took effect)."""
        names = self._peer_names()
        now = time.time()
        at = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        what = "route" if trie == "routes" else trie
        for k, peers in d.put.items():
            self.log(f"{at} {what} {sync.pkey_network(k)} -> "
                     f"{','.join(names.get(p, f'#{p}') for p in peers)}")
        for k in d.delete:
            self.log(f"{at} {what} {sync.pkey_network(k)} withdrawn")

    def revive_all(self):
        """On exit: peers judged dead go back up (as their members are), as
        nobody would be left to bring them back; the next daemon judges
        them again."""
        dead = [n for n in self.liveness.peers if not self.liveness.alive(n)]
        self.liveness.configure({})
        if dead and self.liveness_changed():
            self.log(f"exiting: {', '.join(dead)} up again (no daemon left to judge them)")

    def check_liveness(self):
        """Sample each watched peer's WireGuard counters (every
        liveness.interval seconds); on a peer judged dead, or back,
        liveness_changed() writes what that changes."""
        live = self.liveness
        live.configure({p.name: config.dead_after(self.cfg, p) for p in self.cfg.peers
                        if p.member or p.public_key})
        if not live.peers or not live.due():
            return
        changed = False
        for name, (rx, tx, handshake) in self.peer_counters(list(live.peers)).items():
            got = live.observe(name, rx, tx, handshake)
            if got:
                changed = True
                self.stats["peer_deaths" if got == "dead" else "peer_revivals"] += 1
                self.log(f"peer {name}: {got} ({live.peers[name].reason})")
        if changed:
            self.liveness_changed()

    def peer_counters(self, names):
        """{peer name: (rx bytes, tx bytes, last handshake)} from each
        member's WireGuard device; a member that cannot be read is left
        out (gone or re-created: follow_links says so)."""
        from . import wireguard  # only with --dead-after
        members = {p.name: p.member for p in self.cfg.peers}
        out = {}
        for name in names:
            member = members.get(name)
            if member is None:
                continue
            try:
                dev = self.wg_devices.get(member) or wireguard.open_device(member)
                c = list(dev.counters().values())
            except (wireguard.WireGuardError, OSError):
                self.wg_devices.pop(member, None)
                continue
            self.wg_devices[member] = dev
            if c:
                out[name] = (sum(x[0] for x in c), sum(x[1] for x in c), max(x[2] for x in c))
        return out

    def liveness_changed(self):
        """A peer died or came back: follow_links writes each peer up when
        its member is up and it is alive. Returns whether it wrote."""
        if self.maps is None or self.detached:
            return False
        self.follow_links()
        return True

    # -- status ------------------------------------------------------------
    def _peer_names(self):
        return {i: p.name.decode() for i, p in self.maps.peers().items()} if self.maps else {}

    def write_status(self, state):
        names = self._peer_names()
        per_peer = {}
        if self.table is not None:
            per_peer = {names.get(i, f"#{i}"): n for i, n in self.table.per_peer.items() if n}
        st = dict(self.stats, **self.lag.stats(), state=state, pid=os.getpid(), version=VERSION,
                  front=self.cfg.front if self.cfg else None,
                  tables=sorted(self.filter.tables, key=self.filter.tables.get),
                  prefixes=len(self.table) if self.table is not None else 0,
                  ignored=self.table.ignored if self.table is not None else 0,
                  routes_per_peer=per_peer, written=time.time(),
                  liveness=self.liveness.status(),
                  config=getattr(self.build_config, "config", None))
        # A file we cannot write is logged, not fatal: the maps matter more
        try:
            os.makedirs(instance.run_dir(), exist_ok=True)
            files.write_atomic(instance.status_path(self.cfg.front), json.dumps(st, indent=2))
            self._written("status file")
        except OSError as e:
            self._written("status file", e)
        if self.metrics_file:
            try:
                self.write_metrics(st)
                self._written("metrics file")
            except OSError as e:
                self._written("metrics file", e)

    def _written(self, what, error=None):
        """Log a file write failing, once until it works again."""
        errors = self.write_errors
        msg = (f"{what} {error.filename or ''}: {error.strerror or error}".replace(" :", ":")
               if error else None)
        if msg and errors.get(what) != msg:
            self.log(f"warning: cannot write the {msg}")
        elif not msg and errors.get(what):
            self.log(f"{what} written again")
        errors[what] = msg

    def write_metrics(self, st):
        """The one Prometheus writer of both backends: the loop's figures,
        then the backend's own (backend_metrics)."""
        front = st["front"]
        lines = []

        def series(name, help_, mtype, items):
            lines.append(f"# HELP wgbpf_{name} {help_}")
            lines.append(f"# TYPE wgbpf_{name} {mtype}")
            lines.extend(f'wgbpf_{name}{{front="{front}"{labels}}} {value}' for labels, value in items)

        def metric(name, help_, value, mtype="counter", labels=""):
            series(name, help_, mtype, [(labels, value)])
        metric("build_info", "the running wgbpf's version", 1, "gauge", f',version="{VERSION}"')
        metric("route_events_total", "RTM_NEWROUTE/DELROUTE events applied", st["events"])
        metric("resyncs_total", "full resyncs (start, overrun, reload, tag change)", st["resyncs"])
        metric("overruns_total", "netlink overruns (ENOBUFS)", st["overruns"])
        metric("backlogged_total", "event batches cut short with events still queued", st["backlogged"])
        metric("pending_prefixes", "route changes waiting for another writer to release the writer lock",
               st.get("pending", 0), "gauge")
        metric("read_back_total", "prefixes read back before an event's write (another writer had "
               "held the maps meanwhile)", st.get("read_back", 0))
        metric("event_lag_ms_max", "worst event-to-map lag since start", st["lag_ms_max"], "gauge")
        metric("event_lag_ms_p50", "median event-to-map lag of the recent batches", st["lag_ms_p50"] or 0, "gauge")
        metric("event_lag_ms_p99", "p99 event-to-map lag of the recent batches", st["lag_ms_p99"] or 0, "gauge")
        metric("prefixes", "prefixes that name peers", st["prefixes"], "gauge")
        lines += liveness_metrics(st)
        self.backend_metrics(metric, series, st)
        files.write_atomic(self.metrics_file, "\n".join(lines) + "\n")

    def backend_metrics(self, metric, series, st):
        """The BPF maps backend's metrics."""
        metric("map_writes_total", "LPM map entries written or deleted", st["map_writes"])
        metric("rehooks_total", "front or members re-created under their name and hooked again",
               st["rehooks"])
        metric("members_gone_total", "member devices that disappeared (peer taken down)",
               st["members_gone"])
        metric("ignored_routes", "routes that name no peer (last full sync)", st["ignored"], "gauge")
        series("packets_total", "packets by data-plane reason", "counter",
               [(f',reason="{r.name.lower()}"', v) for r, v in self.maps.counters().items()])

    # -- main loop ---------------------------------------------------------
    def run(self):
        self.cfg = self.build_config()
        self._lock(self.cfg.front)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        signal.signal(signal.SIGUSR2, self._on_usr2)
        events = routes.Netlink(groups=EVENT_GROUPS, rcvbuf=self.rcvbuf)
        try:
            self._attach()
            self.stats["resyncs"] += 1
            self.full_sync("start")
            instance.sd_notify("READY=1")
            last_status = time.monotonic()
            while not self.stop:
                if self.reload:
                    self.reload = False
                    old = self.cfg
                    try:
                        new = self.build_config()
                        if (new.front, new.backend) != (old.front, old.backend):
                            raise config.ConfigError(
                                f"front/backend {new.front}/{new.backend} is not the running "
                                f"{old.front}/{old.backend}: restart the daemon to change them")
                        self.cfg = new
                        self._attach()
                    except Exception as e:  # a bad reload keeps the old config running
                        self.cfg = old  # refused means untouched, in memory too
                        self.log(f"reload refused, keeping the running config: {e}")
                    else:
                        self.stats["resyncs"] += 1
                        self.full_sync("config reload")
                self.check_maps()  # after an attach, or a detach, under us
                if self.maps_changed and not self.detached:  # SIGUSR1, or the generation moved
                    self.maps_changed = False
                    self.maps_sync("written by another writer")
                waiting = any(self.pending.values()) and not self.detached
                try:
                    ready, _, _ = select.select([events], [], [],
                                                min(self.liveness.timeout(), 0.005) if waiting
                                                else self.liveness.timeout())
                except InterruptedError:
                    continue
                if waiting and not ready:
                    self.write_pending()  # the writer lock was busy: again
                if ready:
                    resync = False
                    t_recv = time.monotonic()
                    # Netlink carries no receive timestamp (SO_TIMESTAMP
                    # gives none there): the lag is from this read to the
                    # map write, and a batch that leaves events queued is
                    # counted (`backlogged`): then they waited longer.
                    t_event = t_recv
                    drained = False
                    try:
                        # drain what is queued, applying at least every
                        # BATCH_EVENTS or BATCH_SECONDS so a long burst does
                        # not keep the maps stale until it ends
                        batch = []
                        while len(batch) < BATCH_EVENTS and time.monotonic() - t_recv < BATCH_SECONDS:
                            got = events.queued()
                            if not got:
                                drained = True
                                break
                            batch.extend(got)  # each read's bytes are its own: kept as they are
                        self.check_maps()  # a detach meanwhile: nothing to re-hook from
                        if not self.detached:  # nothing to write to: an attach resyncs
                            resync = self.handle(batch, t_event)
                    except OSError as e:
                        if e.errno != errno.ENOBUFS:  # the kernel dropped events for us
                            raise
                        self.stats["overruns"] += 1
                        self.log("netlink overrun (ENOBUFS): events were lost, full resync")
                        events.discard()
                        resync = True
                    if resync and not self.detached:
                        self.stats["resyncs"] += 1
                        self.full_sync("overrun or tag change")
                    if not drained and not resync:
                        self.stats["backlogged"] += 1
                self.check_liveness()
                if time.monotonic() - last_status >= 1.0:
                    self.check_gone()
                    self.check_generation()
                    self.write_status("detached" if self.detached else "running")
                    last_status = time.monotonic()
            self.revive_all()
            self.write_status("stopped")
            self.log("stopped; the data plane keeps running on the pinned maps")
        except BaseException as e:
            # whatever killed us, the status must not go on saying "running",
            # nor an older daemon's "stopped" when we failed to start (an
            # attach refused): `status --check` reports a failed daemon
            self.stats["error"] = str(e) or type(e).__name__
            try:
                self.write_status("failed")
            except Exception:
                pass  # the original error is the one to report
            raise
        finally:
            events.close()
            if self.maps:
                self.maps.close()

    def _on_stop(self, *_):
        self.stop = True

    def _on_hup(self, *_):
        self.reload = True

    def _on_usr1(self, *_):
        self.maps_changed = True

    def _on_usr2(self, *_):
        self.reattached = True


def liveness_metrics(st):
    """Prometheus lines of the status' liveness (both backends)."""
    front = st["front"]
    lines = []
    for name, help_ in (("peer_deaths", "peers judged dead (liveness: taken down)"),
                        ("peer_revivals", "dead peers heard again (liveness: up again)")):
        lines += [f"# HELP wgbpf_{name}_total {help_}", f"# TYPE wgbpf_{name}_total counter",
                  f'wgbpf_{name}_total{{front="{front}"}} {st[name]}']
    if st["liveness"]:  # one HELP/TYPE for all peers' series
        lines += ["# HELP wgbpf_peer_alive 1 alive, 0 dead (liveness, --dead-after; cause: why dead)",
                  "# TYPE wgbpf_peer_alive gauge"]
    for name, lv in st["liveness"].items():
        lines.append(f'wgbpf_peer_alive{{front="{front}",peer="{name}",cause="{lv["cause"] or ""}"}} '
                     f'{int(lv["state"] == "alive")}')
    return lines


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


def stderr_log(msg):
    print(f"wgbpf daemon: {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["--attach-child"]:
    _attach_child()

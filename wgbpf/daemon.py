# SPDX-License-Identifier: GPL-2.0-or-later
"""wgbpf daemon: the loop that keeps a backend equal to the kernel routes
that name peers.

    start   lock /run/wgbpf/<netns cookie>/<front>.lock (one daemon per
            front and namespace), attach, full dump -> diff -> apply
    loop    rtnetlink messages read in batches, classified once
            (routes.classify) and handed to the backend in arrival order;
            ENOBUFS (we lost events) -> full resync; every second the
            status file, and whether what we serve is still there
    signals HUP: reload the config; USR1: another writer wrote the maps;
            USR2: an attach reconciled the instance; TERM/INT: stop
    failure an exception while applying events (a backend's bug, a map
            write refused) is logged with its traceback, counted, and costs
            a full resync; a resync that fails too is retried, backing off
            to once a minute: the daemon never exits on one (under systemd
            a crash is a restart loop, each start a full sync, the maps
            stale in between)
    exit    the data plane keeps running, and the next start reconciles

The event socket is opened before the dump, so nothing that changes during
a dump is lost: those events are applied after it, in order.

The loop knows a backend only by backends.base.Backend: the BPF maps
(backends/maps.py) or one WireGuard device's AllowedIPs
(backends/allowedips.py).
"""
import errno
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback

from . import config, instance, liveness, routes, status
from .instance import InstanceError

# the status file while the start sync runs: at most this often (a full
# table's sync takes seconds; each write is a JSON file renamed into place)
START_STATUS_EVERY = 0.25
BATCH_EVENTS = 1024
BATCH_SECONDS = 0.005
# a failure's full resync waits 0 s, then 1, 2, 4 ... at most FAIL_MAX s
# while failures follow each other; FAIL_CALM s without one start anew
FAIL_MAX = 60.0
FAIL_CALM = 120.0
EVENT_GROUPS = (routes.RTMGRP_IPV4_ROUTE | routes.RTMGRP_IPV6_ROUTE | routes.RTMGRP_LINK
                | routes.RTMGRP_IPV4_IFADDR | routes.RTMGRP_IPV6_IFADDR | routes.RTMGRP_TC)


def backend_for(cfg):
    """The Backend class a config asks for (imported on demand: the
    allowedips backend never loads the maps modules)."""
    if cfg.backend == "allowedips":
        from .backends.allowedips import AllowedIPsBackend
        return AllowedIPsBackend
    from .backends.maps import MapsBackend
    return MapsBackend


class Daemon:
    """The loop: signals, select, batching, overrun -> resync, the 1 s tick,
    reload, sd_notify, the status file. `make_backend(cfg)` builds the
    backend (tests give a fake); by default backend_for(cfg)(...)."""
    verbose = False  # -v: log every change a route event makes
    gone_after = 30.0  # seconds the front (or --netns name) may be gone before we exit; 0: never
    netns_path = None  # --netns: the name this daemon was started in

    def __init__(self, build_config, flt, log, metrics_file=None, rcvbuf=32 << 20,
                 progress=None, make_backend=None):
        self.build_config = build_config  # () -> Config; called again on SIGHUP
        self.filter = flt
        self.log = log
        self.rcvbuf = rcvbuf
        self.progress = progress
        self.make_backend = make_backend
        self.reporter = status.Reporter(log, metrics_file)
        self.stats = {"events": 0, "resyncs": 0, "overruns": 0, "backlogged": 0,
                      "peer_deaths": 0, "peer_revivals": 0, "failures": 0, "started": time.time()}
        self.lag = status.Lag()  # event-to-write lag of each batch applied
        self.liveness = liveness.Liveness()  # dead peers (--dead-after): down while dead
        self.stop = self.reload = False
        self.cfg = None
        self.backend = None
        self.lock_fd = None
        self.gone_since = None
        self.written = None  # the state the status file says
        # while the start sync runs: its phase and progress, in the status
        # file as "start" (a daemon killed then leaves "starting" and its pid)
        self.start = None
        self.start_written = 0.0
        self.start_lock = threading.Lock()  # the writer's thread reports progress too
        # failures (self.failed): the streak decides the next resync's delay;
        # retry_at, while set, is when the full resync is due (events read
        # meanwhile are dropped: that resync reads everything anew)
        self.streak = 0
        self.last_failure_at = None
        self.retry_at = None
        self.tracebacks = set()  # failures logged with their traceback once
        self.prober = None  # prober.Prober: the peers' probes (probe = S), None when none
    def _backend(self, cfg):
        if self.make_backend is not None:
            b = self.make_backend(cfg)
        else:
            b = backend_for(cfg)(self.filter, self.log, self.liveness, rcvbuf=self.rcvbuf,
                                 progress=self.on_progress)
        b.verbose, b.lag = self.verbose, self.lag
        return b

    def on_progress(self, stage, n, total=None):
        """The backend's progress ("dump": routes read, "write": entries
        written): shown on a terminal (--progress), and during the start
        sync kept in the status file, at most every START_STATUS_EVERY s."""
        if self.progress is not None:
            self.progress(stage, n, total)
        if self.start is not None:
            self.start.update({"phase": stage, "routes_read" if stage == "dump" else "entries_written": n})
            self.start_status()

    def start_status(self, phase=None, force=False):
        """The status file says "starting", with the start's phase and progress."""
        if not self.start_lock.acquire(blocking=force):
            return  # the other thread is writing it right now
        try:
            if phase is not None:
                self.start["phase"] = phase
            now = time.monotonic()
            if force or now - self.start_written >= START_STATUS_EVERY:
                self.start_written = now
                self.write_status("starting")
        finally:
            self.start_lock.release()

    # -- what the loop does --------------------------------------------------
    def attach(self):
        self.cfg = self.backend.attach(self.cfg)
        self.configure_probes()

    def configure_probes(self):
        """The probes of the config's peers (probe = S, maps backend: out
        of each peer's member to its first tag), made anew at start and on
        reload; a peer not probed sends nothing."""
        from .prober import Prober, targets
        if self.prober is not None:
            self.prober.close()
            self.prober = None
        if self.cfg.backend != "maps" or not any(config.probe_interval(self.cfg, p) for p in self.cfg.peers):
            return
        want, skipped = targets(self.cfg, front_addresses(self.cfg.front))
        for name, why in skipped:
            self.log(f"peer {name}: not probed: {why}")
        if want:
            self.prober = Prober(want, time.monotonic())
            self.log(f"probing {len(want)} peers ({', '.join(sorted(want))})")

    def resync(self, why):
        """A full resync; the start's raises, any later one that fails is a
        failure (self.failed) retried later."""
        self.stats["resyncs"] += 1
        try:
            self.backend.full_sync(why)
        except InstanceError:
            raise
        except Exception as e:
            if self.start is not None:
                raise  # the start's: nothing runs yet to keep
            self.failed(f"full resync ({why})", e)
            return
        self.retry_at = None
        self.stats.pop("retry_in", None)
        self.note_differences()
        with self.start_lock:  # no progress report of the start after this
            self.start = None
        self.write_status()

    def note_differences(self):
        """A daemon run from its command line: how the attached instance
        differs from it, after each full sync (an operator's attach under
        it, with other settings, resyncs it), for `status --check`; a
        daemon with a file is compared with the file by status itself."""
        if getattr(self.build_config, "config", None) == "command line" and self.cfg.backend == "maps":
            self.stats["config_differences"] = config.attached_differences(self.cfg)
        else:
            self.stats.pop("config_differences", None)

    def failed(self, what, e):
        """An exception in the loop's work: logged (its traceback the first
        time it is seen), counted, and a full resync due, at once for a
        first failure, later (backing off) for one that follows others."""
        now = time.monotonic()
        if self.last_failure_at is None or now - self.last_failure_at >= FAIL_CALM:
            self.streak = 0
        self.last_failure_at = now
        delay = 0.0 if self.streak == 0 else min(FAIL_MAX, 2.0 ** min(self.streak - 1, 16))
        self.streak += 1
        self.stats["failures"] += 1
        self.stats["last_failure"] = f"{what}: {type(e).__name__}: {e}"
        self.stats["last_failure_at"] = time.time()
        self.stats["retry_in"] = delay
        self.retry_at = now + delay
        where = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
        sig = (type(e).__name__, tuple((f.filename, f.lineno) for f in where))
        msg = (f"error in {what}: {type(e).__name__}: {e}; failure {self.stats['failures']}, "
               f"full resync {'now' if not delay else f'in {delay:g}s'}")
        if sig not in self.tracebacks and len(self.tracebacks) < 64:
            self.tracebacks.add(sig)
            msg += "\n" + "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip()
        self.log(msg)
        self.write_status()

    def retry_due(self, now):
        return self.retry_at is not None and now >= self.retry_at

    def reload_config(self):
        """SIGHUP: the config built again and attached; a bad one keeps the
        running config, in memory too (refused means untouched)."""
        old = self.cfg
        try:
            new = self.build_config()
            if (new.front, new.backend) != (old.front, old.backend):
                raise config.ConfigError(
                    f"front/backend {new.front}/{new.backend} is not the running "
                    f"{old.front}/{old.backend}: restart the daemon to change them")
            self.cfg = self.backend.attach(new)
            self.configure_probes()
        except Exception as e:  # a bad reload keeps the old config running
            self.cfg = old
            self.backend.cfg = old
            self.log(f"reload refused, keeping the running config: {e}")
            return
        self.resync("config reload")

    def read_events(self, events):
        """Drain what is queued, applying at least every BATCH_EVENTS or
        BATCH_SECONDS so a long burst does not keep the maps stale until
        it ends. Netlink carries no receive timestamp (SO_TIMESTAMP gives
        none there): the lag is from this read to the write, and a batch
        that leaves events queued is counted (`backlogged`): then they
        waited longer."""
        t_read = time.monotonic()
        drained = resync = False
        try:
            batch = []
            while len(batch) < BATCH_EVENTS and time.monotonic() - t_read < BATCH_SECONDS:
                got = events.queued()
                if not got:
                    drained = True
                    break
                batch.extend(got)  # each read's bytes are its own: kept as they are
            changes = routes.classify(batch)
            self.stats["events"] += changes.events
            if self.retry_at is not None:
                return  # a failure's resync is due: it reads them all anew
            resync = self.backend.apply(changes, t_read)
        except OSError as e:
            if e.errno != errno.ENOBUFS:  # the kernel dropped events for us
                return self.failed("applying route events", e)
            self.stats["overruns"] += 1
            self.log("netlink overrun (ENOBUFS): events were lost, full resync")
            events.discard()
            resync = True
        except InstanceError:
            raise
        except Exception as e:
            return self.failed("applying route events", e)
        if resync and self.backend.state() == "running":
            self.resync("overrun or tag change")
        if not drained and not resync:
            self.stats["backlogged"] += 1

    def check_liveness(self):
        """Each watched peer's counters, every liveness.interval seconds;
        on a peer judged dead, or back, the backend writes what that
        changes."""
        try:
            if liveness.sample(self.liveness, self.cfg, self.backend.counters, self.log, self.stats):
                self.backend.liveness_changed()
        except InstanceError:
            raise
        except Exception as e:
            self.failed("liveness", e)

    def revive_all(self):
        """On exit: peers judged dead go back up (as their members are), as
        nobody would be left to bring them back; the next daemon judges
        them again."""
        dead = [n for n in self.liveness.peers if not self.liveness.alive(n)]
        self.liveness.configure({})
        if dead and self.backend.liveness_changed():
            self.log(f"exiting: {', '.join(dead)} up again (no daemon left to judge them)")

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

    def write_status(self, state=None):
        b = self.backend
        st = status.status(self.stats, self.lag, state or (b.state() if b else "running"),
                           self.cfg.front if self.cfg else None,
                           sorted(self.filter.tables, key=self.filter.tables.get),
                           self.liveness.status(), getattr(self.build_config, "config", None),
                           b.status() if b else {}, start=dict(self.start) if self.start else None)
        if self.prober is not None:
            st["probes"] = self.prober.status()
        self.written = st["state"]
        if self.cfg is not None:
            self.reporter.write(self.cfg.front, st, b.metrics if b else None)

    # -- main loop ---------------------------------------------------------
    def run(self):
        self.cfg = self.build_config()
        self.lock_fd = instance.daemon_lock(self.cfg.front)
        self.backend = self._backend(self.cfg)
        for sig, handler in ((signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop),
                             (signal.SIGHUP, self._on_hup), (signal.SIGUSR1, self._on_usr1),
                             (signal.SIGUSR2, self._on_usr2)):
            signal.signal(sig, handler)
        events = routes.Netlink(groups=EVENT_GROUPS, rcvbuf=self.rcvbuf)
        try:
            events.join(routes.RTNLGRP_NEXTHOP)  # nexthop objects (FRR): routes name them
        except OSError as e:  # a kernel before nexthop objects (5.3): none to follow
            self.log(f"nexthop objects not followed: {e.strerror}")
        try:
            # said before a route is read: a daemon killed during its start
            # sync (the longest phase at a full table, and the likeliest to
            # meet the OOM killer) leaves "starting" and a dead pid, which
            # `wgbpf status` shows as died starting, the maps partial
            self.start = {"phase": "attach", "since": time.time(), "routes_read": 0, "entries_written": 0}
            self.start_status(force=True)
            self.attach()
            self.start_status("sync", force=True)
            self.resync("start")  # its status write says running
            instance.sd_notify("READY=1")
            self.loop(events)
            self.revive_all()
            self.write_status("stopped")
            self.log("stopped; the data plane keeps running on the pinned maps")
        except BaseException as e:
            # whatever killed us, the status must not go on saying "running",
            # nor an older daemon's "stopped" when we failed to start (an
            # attach refused): `status --check` reports a failed daemon
            self.stats["error"] = str(e) or type(e).__name__
            with self.start_lock:  # failed at start: the status keeps where, and says no more
                try:
                    self.write_status("failed")
                except Exception:
                    pass  # the original error is the one to report
                self.start = None
            raise
        finally:
            events.close()
            self.backend.close()
            if self.prober is not None:
                self.prober.close()

    def loop(self, events):
        last_status = time.monotonic()
        while not self.stop:
            if self.reload:
                self.reload = False
                self.reload_config()
            now = time.monotonic()
            try:
                if self.retry_at is not None:  # a failure's resync is due: nothing else until then
                    why = "retry after a failure" if self.retry_due(now) else None
                else:
                    why = self.backend.tick(now)
            except InstanceError:
                raise
            except Exception as e:
                self.failed("the backend's tick", e)
                why = None
            if why:
                self.resync(why)
            elif self.backend.state() != self.written:
                self.write_status()  # detached, or attached again: said at once
            timeout = self.liveness.timeout()
            wish = self.backend.wait()
            if self.retry_at is not None:
                due = max(0.0, self.retry_at - time.monotonic())
                wish = due if wish is None else min(wish, due)
            probe_fds = []
            if self.prober is not None:
                probe_fds = self.prober.fds()
                wish = max(0.0, self.prober.next_due() - time.monotonic()) if wish is None else \
                    min(wish, max(0.0, self.prober.next_due() - time.monotonic()))
            try:
                ready, _, _ = select.select([events, *probe_fds], [], [],
                                            timeout if wish is None else min(timeout, wish))
            except InterruptedError:
                continue
            if self.prober is not None:
                now = time.monotonic()
                for fd in ready:
                    if fd is not events:
                        self.prober.read(fd, now)
                self.prober.due(now)
            if events in ready:
                self.read_events(events)
            self.check_liveness()
            if time.monotonic() - last_status >= 1.0:
                self.check_gone()
                self.write_status()
                last_status = time.monotonic()

    def _on_stop(self, *_):
        self.stop = True

    def _on_hup(self, *_):
        self.reload = True

    def _on_usr1(self, *_):
        if self.backend is not None:
            self.backend.wake("maps written")

    def _on_usr2(self, *_):
        if self.backend is not None:
            self.backend.wake("attached")


def front_addresses(front):
    """The front's own addresses (a probe's source: the spokes route the
    answer back through the tunnel, where a member has none)."""
    try:
        ifindex = socket.if_nametoindex(front)
    except OSError:
        return []
    nl = routes.Netlink()
    try:
        return [local for index, local, _peer in routes.dump_addrs(nl) if index == ifindex and local]
    finally:
        nl.close()


def stderr_log(msg):
    print(f"wgbpf daemon: {msg}", file=sys.stderr, flush=True)

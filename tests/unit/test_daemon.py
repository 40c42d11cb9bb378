# SPDX-License-Identifier: GPL-2.0-or-later
"""The daemon's loop, through the Backend interface with a fake backend:
what it hands the backend and when, reloads (refused means untouched),
overruns, the status file it writes, the front gone for good. No root, no
kernel state touched."""
import errno
import glob
import json
import os
import socket
import struct

import pytest

from wgbpf import config, daemon, dataplane, instance, routes, sync
from wgbpf.backends.base import Backend
from wgbpf.config import PeerConfig


def rta(kind, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + bytes((-n) % 4)


def route_event(mtype, prefix, plen, gateway, flags=0x600):
    """As the event socket reads it: the header (nlmsg_flags) before the body."""
    body = (struct.pack("=BBBBBBBBI", socket.AF_INET, plen, 0, 0, 254, 4, 0, routes.RTN_UNICAST, 0)
            + rta(routes.RTA_DST, socket.inet_aton(prefix)) + rta(routes.RTA_GATEWAY, socket.inet_aton(gateway))
            + rta(routes.RTA_OIF, struct.pack("=i", 7)))
    msg = struct.pack("=IHHII", 16 + len(body), mtype, flags, 0, 0) + body
    return (mtype, msg, 16, len(msg))


class FakeNetlink:
    """An event socket: `script` is a list of what each queued() returns
    (a list of messages, or an OSError to raise); select() sees it
    readable while anything is left."""

    def __init__(self, *a, **kw):
        self.a, self.b = socket.socketpair()
        self.script = list(FakeNetlink.script)
        self.discarded = 0
        if self.script:
            self.b.send(b"x")

    def fileno(self):
        return self.a.fileno()

    def join(self, group):
        self.joined = group

    def queued(self, most=64):
        if not self.script:
            self.a.recv(16, socket.MSG_DONTWAIT) if self._readable() else None
            return []
        got = self.script.pop(0)
        if isinstance(got, OSError):
            raise got
        return got

    def _readable(self):
        import select
        return bool(select.select([self.a], [], [], 0)[0])

    def discard(self):
        self.discarded += 1

    def close(self):
        self.a.close()
        self.b.close()


FakeNetlink.script = []


class FakeBackend(Backend):
    """Records every call the loop makes; `script(daemon, call, *args)`
    decides what happens (stop, reload, raise)."""
    name = "fake"

    def __init__(self, d, script):
        super().__init__(sync.Filter(), d.log, d.liveness)
        self.d, self.script = d, script
        self.calls = []
        self.ticks = []

    def attach(self, cfg):
        self.calls.append(("attach", cfg))
        if not cfg.peers[0].member.startswith("wg-"):
            raise dataplane.AttachError(f"member {cfg.peers[0].member!r} does not exist")
        self.cfg = cfg
        return cfg

    def full_sync(self, why):
        self.calls.append(("full_sync", why))
        self.script(self.d, "full_sync", why)

    def apply(self, changes, t_read):
        self.calls.append(("apply", changes))
        return bool(self.script(self.d, "apply", changes))

    def tick(self, now):
        self.ticks.append(now)
        return self.script(self.d, "tick", now)

    def wake(self, reason):
        self.calls.append(("wake", reason))

    def status(self):
        return {"prefixes": 3, "map_writes": 5}

    def metrics(self, metric, series, st):
        metric("fake_total", "the fake backend's own family", 11)

    def close(self):
        self.calls.append(("close",))


def make(configs, script, **kw):
    configs = list(configs)
    logged = []
    d = daemon.Daemon(lambda: configs.pop(0), sync.Filter(), logged.append,
                      make_backend=lambda cfg: FakeBackend(d, script), **kw)
    d.gone_after = 0  # its front is no real device: never "gone for good"
    d.logged = logged
    return d


@pytest.fixture
def rundir(tmp_path, monkeypatch):
    d = tmp_path / "run"
    monkeypatch.setattr(instance, "RUN_DIR", str(d))
    monkeypatch.setattr(daemon.routes, "Netlink", FakeNetlink)
    monkeypatch.setattr(daemon.signal, "signal", lambda *a: None)
    monkeypatch.setattr(FakeNetlink, "script", [])
    return d


def status(d):
    (path,) = glob.glob(str(d / "**" / "*.json"), recursive=True)  # per namespace or not
    with open(path) as f:
        return json.load(f)


def cfg(member="wg-alice", front="wg0"):
    return config.Config(front, [PeerConfig("alice", member)])


def stop_after_start(d, call, *args):
    if call == "full_sync":
        d.stop = True


def test_start_attaches_syncs_and_writes_the_backends_status(rundir):
    d = make([cfg()], stop_after_start)
    d.run()
    b = d.backend
    assert [c[0] for c in b.calls] == ["attach", "full_sync", "close"]
    assert b.calls[1] == ("full_sync", "start")
    st = status(rundir)
    assert st["state"] == "stopped" and st["resyncs"] == 1
    assert st["prefixes"] == 3 and st["map_writes"] == 5  # the backend's fields
    assert st["pid"] == os.getpid() and st["front"] == "wg0"


def test_events_reach_the_backend_classified_in_order(rundir, monkeypatch):
    new = route_event(routes.RTM_NEWROUTE, "10.1.0.0", 16, "10.255.0.1", flags=0xC00)  # append
    gone = route_event(routes.RTM_DELROUTE, "10.2.0.0", 16, "10.255.0.2", flags=0)
    up = struct.pack("=BxHiII", 0, 0, 7, routes.IFF_UP, 0)  # ifinfomsg: ifindex 7, up
    link = (routes.RTM_NEWLINK, up, 0, len(up))
    monkeypatch.setattr(FakeNetlink, "script", [[new, link], [gone]])

    def script(d, call, *args):
        if call == "apply":
            d.stop = True
    d = make([cfg()], script)
    d.run()
    (changes,) = [c[1] for c in d.backend.calls if c[0] == "apply"]  # one batch: both reads
    assert [(socket.inet_ntoa(r.dst), r.dst_len, deleted, flags) for r, deleted, flags in changes.routes] == [
        ("10.1.0.0", 16, False, 0xC00), ("10.2.0.0", 16, True, 0)]
    assert [kind for kind, _step in changes.steps] == [routes.ROUTE, routes.ROUTE]
    assert changes.events == 2 and changes.links and not changes.hooks and not changes.silent
    assert d.stats["events"] == 2


def test_an_overrun_is_a_full_resync(rundir, monkeypatch):
    monkeypatch.setattr(FakeNetlink, "script", [OSError(errno.ENOBUFS, "No buffer space")])
    syncs = []

    def script(d, call, *args):
        if call == "full_sync":
            syncs.append(args[0])
            d.stop = len(syncs) == 2
    d = make([cfg()], script)
    d.run()
    assert syncs == ["start", "overrun or tag change"]
    assert d.stats["overruns"] == 1 and status(rundir)["resyncs"] == 2
    assert not any(c[0] == "apply" for c in d.backend.calls)  # nothing half-applied
    assert any("netlink overrun" in m for m in d.logged)


def test_a_backend_asking_for_a_resync_gets_one(rundir):
    """tick() returns a reason (an attach under us, say): the loop resyncs."""
    syncs = []

    def script(d, call, *args):
        if call == "tick":
            return "attach" if len(syncs) == 1 else None
        if call == "full_sync":
            syncs.append(args[0])
            d.stop = len(syncs) == 2
    d = make([cfg()], script)
    d.run()
    assert syncs == ["start", "attach"]


def test_signals_wake_the_backend(rundir):
    d = make([cfg()], stop_after_start)
    d.backend = FakeBackend(d, stop_after_start)
    d._on_usr1()
    d._on_usr2()
    assert d.backend.calls == [("wake", "maps written"), ("wake", "attached")]


def test_refused_reload_keeps_the_old_config_in_memory(rundir):
    good, bad = cfg(), cfg(member="gone")

    def script(d, call, *args):
        if call == "full_sync":
            if args[0] != "start":
                raise AssertionError(f"a full sync after a refused reload ({args[0]})")
            d.reload = True
    d = make([good, bad], script)
    d.log = lambda m: (d.logged.append(m), setattr(d, "stop", "refused" in m))
    d.run()
    assert d.cfg is good and d.backend.cfg is good
    assert any("reload refused, keeping the running config" in m and "'gone' does not exist" in m
               for m in d.logged), d.logged
    assert status(rundir)["state"] == "stopped"


def test_reload_may_not_change_the_front(rundir):
    def script(d, call, *args):
        if call == "full_sync":
            d.reload = args[0] == "start"
    d = make([cfg(), cfg(front="wg1")], script)
    d.log = lambda m: (d.logged.append(m), setattr(d, "stop", "refused" in m))
    d.run()
    assert d.cfg.front == "wg0"
    assert [c[1] for c in d.backend.calls if c[0] == "attach"] == [d.cfg]
    assert any("restart the daemon" in m and "wg1" in m for m in d.logged), d.logged


def test_good_reload_is_taken(rundir):
    new = cfg(member="wg-alice2")

    def script(d, call, *args):
        if call == "full_sync":
            d.reload = args[0] == "start"
            d.stop = args[0] == "config reload"
    d = make([cfg(), new], script)
    d.run()
    assert d.cfg is new and d.backend.cfg is new


def test_a_dead_daemon_does_not_say_running(rundir):
    def script(d, call, *args):
        raise KeyError("alice")
    d = make([cfg()], script)
    with pytest.raises(KeyError):
        d.run()
    st = status(rundir)
    assert st["state"] == "failed" and "alice" in st["error"]
    assert d.backend.calls[-1] == ("close",)


def test_a_daemon_that_fails_at_start_leaves_status_failed(rundir):
    """Its attach refused: the status says failed with the error, so that
    `status --check` reports it (no instance may be there to list)."""
    d = make([cfg(member="gone")], lambda d, call, *a: None)
    with pytest.raises(dataplane.AttachError) as e:
        d.run()
    st = status(rundir)
    assert st["state"] == "failed" and st["error"] == str(e.value)


def test_a_second_daemon_is_refused(rundir):
    d = make([cfg()], stop_after_start)
    fd = instance.daemon_lock("wg0")
    try:
        with pytest.raises(instance.InstanceError, match=rf"another wgbpf daemon \(pid {os.getpid()}\)"):
            d.run()
    finally:
        os.close(fd)


def test_unwritable_metrics_are_logged_not_fatal(rundir, tmp_path):
    mdir = tmp_path / "metrics"
    mdir.mkdir()
    prom = mdir / "wgbpf.prom"
    d = make([cfg()], stop_after_start, metrics_file=str(prom))
    d.run()
    text = prom.read_text()
    assert "wgbpf_route_events_total" in text and 'wgbpf_fake_total{front="wg0"} 11' in text
    os.unlink(prom)
    mdir.rmdir()
    d.write_status("running")
    d.write_status("running")
    warned = [m for m in d.logged if "cannot write the metrics file" in m]
    assert len(warned) == 1 and str(mdir) in warned[0], d.logged
    assert status(rundir)["state"] == "running"


# -- the front gone for good ---------------------------------------------------

def test_exits_when_the_front_is_gone_for_good(monkeypatch):
    d = make([], stop_after_start)
    d.cfg = cfg(front="nosuchfront0")
    d.gone_after = 5
    now = [100.0]
    monkeypatch.setattr(daemon.time, "monotonic", lambda: now[0])
    d.check_gone()
    assert d.logged == ["front nosuchfront0 does not exist: exiting unless it is back within 5s"]
    now[0] += 4.9
    d.check_gone()  # not yet
    now[0] += 0.2
    with pytest.raises(instance.InstanceError, match="nosuchfront0 does not exist for 5s: gone for good"):
        d.check_gone()


def test_a_front_that_comes_back_resets_the_clock():
    d = make([], stop_after_start)
    d.cfg = cfg(front="lo")
    d.gone_after = 30
    d.gone_since = 1.0  # was gone
    d.check_gone()
    assert d.gone_since is None and d.logged == ["back: staying"]
    d.gone_after = 0  # never
    d.cfg.front = "nosuchfront0"
    d.check_gone()
    assert d.gone_since is None


def test_exits_when_its_netns_name_is_gone(tmp_path):
    d = make([], stop_after_start)
    d.cfg = cfg(front="lo")
    d.gone_after = 1
    d.netns_path = str(tmp_path / "gone")
    d.check_gone()
    assert "network namespace" in d.logged[0] and "is gone" in d.logged[0]
    d.netns_path = "/proc/self/ns/net"  # ours: fine
    d.check_gone()
    assert d.gone_since is None


# -- a failed event never ends the daemon -----------------------------------

def test_a_backend_that_raises_on_an_event_costs_a_resync_not_the_daemon(rundir, monkeypatch):
    """The backend's apply raises (a bug, a map write refused): logged with
    its traceback, counted in the status and the metrics, a full resync
    follows at once, and the next event is applied as usual."""
    ev = route_event(routes.RTM_NEWROUTE, "10.1.0.0", 16, "10.255.0.1")
    monkeypatch.setattr(FakeNetlink, "script", [[ev], [], [ev]])
    seen = []

    def script(d, call, *args):
        seen.append(call)
        if call == "apply" and seen.count("apply") == 1:
            raise IndexError("list index out of range")
        if call == "apply" and seen.count("apply") == 2:
            d.stop = True
    d = make([cfg()], script, metrics_file=None)
    d.run()
    calls = [c[0] if c[0] != "full_sync" else c for c in d.backend.calls]
    assert calls[:4] == ["attach", ("full_sync", "start"), "apply", ("full_sync", "retry after a failure")], calls
    assert calls.count("apply") == 2  # the daemon lived on to apply the next one
    st = status(rundir)
    assert st["state"] == "stopped" and st["failures"] == 1 and "retry_in" not in st
    assert st["last_failure"] == "applying route events: IndexError: list index out of range"
    (err,) = [m for m in d.logged if m.startswith("error in applying route events")]
    assert "failure 1, full resync now" in err and "Traceback (most recent call last)" in err, err


def test_repeated_failures_back_off_and_log_their_traceback_once(monkeypatch):
    d = make([], stop_after_start)
    d.cfg = cfg()
    d.backend = FakeBackend(d, stop_after_start)
    now = [1000.0]
    monkeypatch.setattr(daemon.time, "monotonic", lambda: now[0])
    delays = []
    for _ in range(9):
        try:
            raise RuntimeError("map write refused")
        except RuntimeError as e:
            d.failed("applying route events", e)
        delays.append(d.retry_at - now[0])
        now[0] += 5
    assert delays == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert sum("Traceback" in m for m in d.logged) == 1 and len(d.logged) == 9
    now[0] += daemon.FAIL_CALM  # calm for a while: the next failure resyncs at once
    try:
        raise RuntimeError("map write refused")
    except RuntimeError as e:
        d.failed("applying route events", e)
    assert d.retry_at == now[0] and d.stats["failures"] == 10
    for _ in range(1100):  # a storm of failures (each 5 ms apart): the backoff stays bounded
        now[0] += 0.005
        try:
            raise RuntimeError("map write refused")
        except RuntimeError as e:
            d.failed("applying route events", e)
    assert d.retry_at - now[0] == daemon.FAIL_MAX


def test_a_failing_resync_is_retried_later_and_said_by_status_check(rundir, monkeypatch):
    """After the start, a resync that raises does not end the daemon: it
    is due again (1 s later for a second failure), `status` says so and
    `--check` lists it until one succeeds."""
    from wgbpf import inspect, report
    ev = route_event(routes.RTM_NEWROUTE, "10.1.0.0", 16, "10.255.0.1")
    monkeypatch.setattr(FakeNetlink, "script", [[ev]])
    syncs, snap = [], {}

    def script(d, call, *args):
        if call == "apply":
            raise ValueError("bad value")
        if call == "full_sync":
            syncs.append(args[0])
            if len(syncs) == 2:
                snap.update(status(rundir))  # the apply's failure, before its resync
                raise OSError(errno.ENOSPC, "No space left on device")
            d.stop = len(syncs) == 3
    d = make([cfg()], script)
    d.run()
    assert syncs == ["start", "retry after a failure", "retry after a failure"]
    assert d.stats["failures"] == 2 and d.stats["resyncs"] == 3
    assert snap["retry_in"] == 0 and snap["state"] == "running"
    (problem,) = inspect.problems({"front": "wg0", "daemon": snap})
    assert problem == "wg0: daemon failing, its full resync due: applying route events: ValueError: bad value"
    assert "its full resync is DUE" in report.failure_lines(snap)[0]
    st = status(rundir)
    assert "retry_in" not in st and inspect.problems({"front": "wg0", "daemon": st}) == []
    assert report.failure_lines(st)[0].startswith("failures: 2 (last") and "resynced since" in report.failure_lines(st)[0]
    assert "[Errno 28] No space left on device" in st["last_failure"]
    assert any("failure 2, full resync in 1s" in m for m in d.logged), d.logged


def test_a_failed_start_sync_still_ends_the_daemon_and_one_writer_still_exits(rundir, monkeypatch):
    """Only what fails after the start is retried: a start that cannot sync
    exits (systemd says so), and an InstanceError (another daemon holds the
    pins) ends it at any time."""
    ev = route_event(routes.RTM_NEWROUTE, "10.1.0.0", 16, "10.255.0.1")
    monkeypatch.setattr(FakeNetlink, "script", [[ev]])

    def script(d, call, *args):
        if call == "apply":
            raise instance.InstanceError("another wgbpf daemon follows the instance")
    d = make([cfg()], script)
    with pytest.raises(instance.InstanceError):
        d.run()
    assert status(rundir)["state"] == "failed" and d.stats["failures"] == 0


def test_the_failures_metric_is_written(rundir, tmp_path):
    prom = tmp_path / "wgbpf.prom"
    d = make([cfg()], stop_after_start, metrics_file=str(prom))
    d.run()
    assert 'wgbpf_failures_total{front="wg0"} 0' in prom.read_text()

# SPDX-License-Identifier: GPL-2.0-or-later
"""A daemon says "starting" with its pid before it reads a route, and its
progress while the start sync runs (throttled); one killed then (-9, the
OOM killer) is shown as died starting and fails `status --check` (exit 2),
since the maps it left are partial. A later clean start says running. No
root: a fake backend, the status file in a temp run dir."""
import json
import os
import signal
import time

import pytest
from click.testing import CliRunner

from wgbpf import cli, config, daemon, inspect, instance, report, status, sync
from wgbpf.backends.base import Backend
from wgbpf.config import PeerConfig


class FakeNetlink:
    def __init__(self, *a, **kw):
        self.r, self.w = os.pipe()

    def fileno(self):
        return self.r

    def join(self, group):
        pass

    def close(self):
        os.close(self.r)
        os.close(self.w)


class StartBackend(Backend):
    """A backend whose start sync reports progress as the maps backend's
    does (dump_tables, the writer), then runs `during(daemon)`."""
    name = "fake"

    def __init__(self, d, during):
        super().__init__(sync.Filter(), d.log, d.liveness, progress=d.on_progress)
        self.d, self.during = d, during
        self.seen = {}

    def attach(self, cfg):
        self.seen["attach"] = read(cfg.front)
        self.cfg = cfg
        return cfg

    def full_sync(self, why):
        if why != "start":
            return
        self.seen["sync"] = read(self.cfg.front)
        time.sleep(daemon.START_STATUS_EVERY + 0.01)  # past the throttle
        self.progress("dump", 65536)
        self.seen["dump"] = read(self.cfg.front)
        time.sleep(daemon.START_STATUS_EVERY + 0.01)  # past the throttle
        self.progress("write", 4096)
        self.seen["write"] = read(self.cfg.front)
        self.during(self.d)

    def status(self):
        return {"prefixes": 0, "ignored": 0, "map_writes": 0}


def read(front):
    with open(instance.status_path(front)) as f:
        return json.load(f)


@pytest.fixture
def rundir(tmp_path, monkeypatch):
    monkeypatch.setattr(instance, "RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(daemon.routes, "Netlink", FakeNetlink)
    monkeypatch.setattr(daemon.signal, "signal", lambda *a: None)
    return tmp_path


def make(during, front="wgstart0"):
    d = daemon.Daemon(lambda: config.Config(front, [PeerConfig("alice", "wg-alice")]), sync.Filter(),
                      lambda m: None, make_backend=lambda cfg: StartBackend(d, during))
    d.gone_after = 0
    return d


def stop(d):
    d.stop = True


def test_starting_is_said_before_a_route_is_read_and_progress_while_syncing(rundir):
    d = make(stop)
    d.run()
    seen = d.backend.seen
    assert seen["attach"]["state"] == "starting" and seen["attach"]["pid"] == os.getpid()
    assert seen["attach"]["start"]["phase"] == "attach"
    assert seen["sync"]["start"]["phase"] == "sync"
    assert seen["dump"]["start"]["routes_read"] == 65536
    assert seen["write"]["start"] == dict(seen["write"]["start"], phase="write", routes_read=65536,
                                          entries_written=4096)
    st = read("wgstart0")
    assert st["state"] == "stopped" and "start" not in st  # done starting: no more progress


def test_progress_writes_are_throttled(rundir):
    writes = []

    def burst(d):
        n = len(writes)
        for i in range(1000):
            d.on_progress("write", i)
        burst.extra = len(writes) - n
        d.stop = True
    d = make(burst)
    real = d.reporter.write
    d.reporter.write = lambda *a: (writes.append(a[1]["state"]), real(*a))
    d.run()
    assert burst.extra <= 1  # 1000 reports within far less than a second
    assert writes[0] == "starting" and writes[-1] == "stopped"


def test_progress_after_the_start_writes_nothing(rundir):
    def later(d):
        d.stop = True
    d = make(later)
    d.run()
    d.start_written = 0
    d.on_progress("dump", 65536)  # a later resync's progress (an overrun)
    assert read("wgstart0")["state"] == "stopped"


def child_daemon(front):
    """A daemon in a child that blocks in its start sync; returns its pid
    once its status says it is writing the maps."""
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        try:
            make(lambda d: time.sleep(60), front).run()
        finally:
            os._exit(1)
    deadline = time.monotonic() + 10
    while True:
        try:
            if read(front)["start"]["phase"] == "write":
                return pid
        except (OSError, ValueError, KeyError):
            pass
        assert time.monotonic() < deadline, "the child never said it was starting"
        time.sleep(0.01)


def entry(front):
    """The status entry `wgbpf status` builds for an instance (inspect's,
    without the pins a unit test cannot make)."""
    return {"front": front, "members_only": True, "lookup": "lpm", "fib_table": None, "source": "strict",
            "no_route": "drop", "pin_dir": "/sys/fs/bpf/x", "members": [], "maps": {}, "counters": {},
            "daemon": instance.read_status(front)}


def run_status(monkeypatch, front, *args):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(inspect, "namespace_status", lambda f=None: [entry(front)])
    return CliRunner().invoke(cli.main, ["status", *args], prog_name="wgbpf")


def test_a_daemon_killed_in_its_start_sync_died_starting(rundir, monkeypatch):
    front = "wgstart1"
    pid = child_daemon(front)
    try:
        alive = mark(front)
        assert alive["state"] == "starting"  # it holds its lock: starting, no problem
        assert report.start_problems({"front": front, "daemon": alive}) == []
        assert report.daemon_lines(alive)[0].startswith(f"daemon: starting (pid {pid}) for ")
        r = run_status(monkeypatch, front, "--check")
        assert r.exit_code == 0, r.output
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    dead = mark(front)
    assert dead["state"] == "died starting" and dead["pid"] == pid
    r = run_status(monkeypatch, front, "--check")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output == (f"{front}: daemon died starting (pid {pid}, writing: 65536 routes read, 4096 entries "
                        f"written): the maps are partial until a daemon starts again and syncs\n")
    text = run_status(monkeypatch, front).output
    assert f"daemon: DIED STARTING (pid {pid}, writing: 65536 routes read, 4096 entries written, " \
           f"last heard " in text and "the maps are partial" in text
    r = run_status(monkeypatch, front, "--json")
    assert json.loads(r.output)[0]["daemon"]["state"] == "died starting"
    # a clean start later: running, then stopped; the check passes
    d = make(stop, front)
    d.run()
    assert mark(front)["state"] == "stopped"
    assert run_status(monkeypatch, front, "--check").exit_code == 0


def mark(front):
    return status.mark_died_starting([{"front": front, "daemon": instance.read_status(front)}])[0]["daemon"]


def test_a_starting_status_with_a_dead_pid_and_no_lock_died_starting(rundir):
    front = "wgstart2"
    os.makedirs(instance.run_dir())
    st = {"state": "starting", "pid": 2 ** 22 + 1, "front": front, "written": 12.5,
          "start": {"phase": "dump", "since": 10.0, "routes_read": 131072, "entries_written": 0}}
    with open(instance.status_path(front), "w") as f:
        json.dump(st, f)
    dead = mark(front)
    assert dead["state"] == "died starting"
    assert report.daemon_lines(dead) == [
        f"daemon: DIED STARTING (pid {2 ** 22 + 1}, reading routes: 131072 routes read, 0 entries written, "
        f"last heard 2.5s into its start): the maps are partial until a daemon starts again and syncs"]
    # other states are instance.read_status's: untouched here
    for state in ("running", "stopped", "failed"):
        with open(instance.status_path(front), "w") as f:
            json.dump(dict(st, state=state), f)
        assert mark(front)["state"] != "died starting"


def test_an_absent_lag_is_a_dash_in_text_and_null_in_json():
    dmn = {"state": "running", "pid": 7, "tables": ["main"], "prefixes": 0, "ignored": 0, "events": 0,
           "resyncs": 1, "overruns": 0, **status.Lag().stats()}
    line = report.daemon_lines(dmn)[0]
    assert "event lag p50/p99/max -/-/- ms" in line and "None" not in line
    lag = status.Lag()
    lag.append(1.25)
    line = report.daemon_lines(dict(dmn, **lag.stats()))[0]
    assert "event lag p50/p99/max 1.25/1.25/1.25 ms" in line
    assert status.Lag().stats()["lag_ms_p50"] is None  # --json: null

# SPDX-License-Identifier: GPL-2.0-or-later
"""What a running daemon tells the world: its status file (read by `wgbpf
status`) and its Prometheus metrics file, both written whole and renamed
into place. The loop's own figures and the backend's are merged here; a
file that cannot be written is logged once, never fatal (the data plane
matters more than the report on it).
"""
import collections
import json
import os
import time

from . import files, instance
from .version import VERSION


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


class Reporter:
    """Writes the status file and the metrics file of one daemon."""

    def __init__(self, log, metrics_file=None):
        self.log = log
        self.metrics_file = metrics_file
        self.errors = {}  # file -> the last failure to write it, logged once

    def write(self, front, st, backend_metrics=None):
        """`st`: the whole status; `backend_metrics(metric, series, st)`
        adds the backend's own families to the metrics file."""
        try:
            os.makedirs(instance.run_dir(), exist_ok=True)
            files.write_atomic(instance.status_path(front), json.dumps(st, indent=2))
            self._written("status file")
        except OSError as e:
            self._written("status file", e)
        if self.metrics_file:
            try:
                files.write_atomic(self.metrics_file, metrics_text(st, backend_metrics))
                self._written("metrics file")
            except OSError as e:
                self._written("metrics file", e)

    def _written(self, what, error=None):
        """Log a file write failing, once until it works again."""
        msg = (f"{what} {error.filename or ''}: {error.strerror or error}".replace(" :", ":")
               if error else None)
        if msg and self.errors.get(what) != msg:
            self.log(f"warning: cannot write the {msg}")
        elif not msg and self.errors.get(what):
            self.log(f"{what} written again")
        self.errors[what] = msg


def status(loop_stats, lag, state, front, tables, liveness, config_source, backend_status, start=None):
    """The status file's fields: the loop's, then the backend's; `start`:
    while the start sync runs, its phase and progress."""
    st = dict(loop_stats, **lag.stats(), **backend_status, state=state, pid=os.getpid(),
              version=VERSION, front=front, tables=tables, written=time.time(),
              liveness=liveness, config=config_source)
    if start is not None:
        st["start"] = start
    return st


def metrics_text(st, backend_metrics=None):
    """The one Prometheus writer of both backends: the loop's figures,
    then the backend's own."""
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
    metric("failures_total", "exceptions while applying events or resyncing (each logged, then a full "
           "resync)", st.get("failures", 0))
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
    if backend_metrics is not None:
        backend_metrics(metric, series, st)
    return "\n".join(lines) + "\n"


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
    probes = st.get("probes") or {}
    for metric, key, help_ in (("peer_rtt_seconds", "rtt", "probed round-trip time, moving average"),
                               ("peer_loss_ratio", "loss", "probes lost over the last 20")):
        have = [(name, pr[key]) for name, pr in sorted(probes.items()) if pr.get(key) is not None]
        if have:
            lines += [f"# HELP wgbpf_{metric} {help_}", f"# TYPE wgbpf_{metric} gauge"]
            lines += [f'wgbpf_{metric}{{front="{front}",peer="{name}"}} {v}' for name, v in have]
    return lines


# -- read back: `wgbpf status` -------------------------------------------

def mark_died_starting(entries):
    """A daemon whose status still says "starting" while it holds its lock
    no more (killed -9, the OOM killer, during its start sync) died
    starting: its state says so, in --json too. instance.read_status does
    the same for "running" ("not running"); a start is told apart because
    the maps it left are partial."""
    for s in entries:
        dmn = s.get("daemon")
        if dmn and dmn.get("state") == "starting" and not instance.daemon_alive(
                s["front"], s.get("netns"), dmn.get("pid")):
            dmn["state"] = "died starting"
    return entries

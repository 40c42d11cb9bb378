#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Control-plane benchmark: how fast wgbpf follows a full routing table.

Run as root (make bench). In a throwaway network namespace holding a TUN
front and four TUN members (attached with `wgbpf attach`), it fills the main
table with internet-like IPv4 and IPv6 routes naming the peers, then measures
side by side, in the same run:

  a  `ip route show` (the kernel's own dump, the floor)
  b  pyroute2 IPRoute().get_routes() (on a subset when the table is big)
  c  wgbpf's raw rtnetlink parser (routes.dump_routes)
  d  `wgbpf daemon` start into empty maps: dump -> Table -> diff -> batch writes
  e  a second daemon start against the filled maps (must write nothing)
  f  steady state: K route replaces then K deletes while the daemon runs
  g  event-to-map lag of single route additions (sent over raw netlink, so
     no `ip` process start is in the figure; the map is polled in a loop)
  h  the maps equal the kernel table afterwards

With --nexthops N the table is installed FRR's way: N kernel nexthop
objects (single nexthops via the peers' tags, and a group for every tenth
of them) and every route `nhid X`, with net.ipv4.nexthop_compat_mode set
by --compat (1: the kernel's default, route messages carry the expanded
gateways too; 0: the id alone). Its part `nhreplace` replaces one object
and times until every route through it is in the maps with the new peer,
beside the kernel's own replace.

Progress goes to stderr, a table to stdout, everything to
bench-results/sync.json; --profile adds cProfile reports of the sync and of
the daemon's event path (bench-results/sync-profile*.txt). Peak RSS is
VmHWM. The load average is recorded: the figures mean something only on an
otherwise idle machine. The namespace, the pins and the daemon status files
are removed at the end, also on error or Ctrl-C.

    bench_sync.py [--v4 N] [--v6 N] [--quick] [--changes K] [--profile]

Not a test: pytest must never collect it (its name is bench_*.py).
"""
import argparse
import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # wgbpf of this tree
    sys.path.insert(0, REPO)
from benchutil import gen_v4, gen_v6, log, prefix_text, sh, v4_ok  # noqa: E402
from wgbpf import nsenter  # noqa: E402

NPEERS = 4
RESULTS_DIR = os.path.join(REPO, "bench-results")


def wgbpf_cmd():
    """The wgbpf CLI of this tree (the one the benchmark sits in)."""
    return [sys.executable, "-m", "wgbpf.cli"]


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def fmt_rate(n, s):
    return f"{n / s:,.0f}" if s else "-"


def tag4(i):
    return f"100.64.0.{i + 1}"


def tag6(i):
    return f"fe80::{i + 1}"


def nexthop_ids(n, v6):
    """(single ids, group ids) of --nexthops n objects of one family."""
    base = 1_000_000 if v6 else 1
    singles = [base + i for i in range(n - n // 10)]
    return singles, [base + 500_000 + g for g in range(n // 10)]


def nexthop_lines(n, front, v6):
    """ip -batch lines making the objects: singles via the peers' tags in
    turn, then groups of two consecutive singles."""
    singles, groups = nexthop_ids(n, v6)
    for k, i in enumerate(singles):
        via = f"via {tag6(k % NPEERS)} dev {front}" if v6 else f"via {tag4(k % NPEERS)} dev {front} onlink"
        yield f"nexthop add id {i} {via}\n"
    for k, g in enumerate(groups):
        yield f"nexthop add id {g} group {singles[(2 * k) % len(singles)]}/{singles[(2 * k + 1) % len(singles)]}\n"


def nexthop_route_lines(prefixes, n, v6):
    """Prefix j through object j % (the objects): a group or a single."""
    singles, groups = nexthop_ids(n, v6)
    ids = singles + groups
    for j, p in enumerate(prefixes):
        yield f"route add {p} nhid {ids[j % len(ids)]}\n"


def route_lines(verb, prefixes, front, v6, start=0, shift=0):
    """ip -batch lines; prefix number j names peer (j + shift) % 4."""
    for j, p in enumerate(prefixes, start):
        i = (j + shift) % NPEERS
        if verb == "del":
            yield f"route del {p}\n"
        elif v6:
            yield f"route {verb} {p} via {tag6(i)} dev {front}\n"
        else:
            yield f"route {verb} {p} via {tag4(i)} dev {front} onlink\n"


def write_batches(tmp, name, lines, chunk):
    files, buf, k = [], [], 0
    for line in lines:
        buf.append(line)
        if len(buf) >= chunk:
            files.append(_write(tmp, f"{name}-{k}", buf))
            buf, k = [], k + 1
    if buf:
        files.append(_write(tmp, f"{name}-{k}", buf))
    return files


def _write(tmp, name, lines):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.writelines(lines)
    return path


def ip_batch(ns, files, v6=False):
    """Run chunked `ip -batch` files; returns seconds."""
    t0 = time.perf_counter()
    for path in files:
        cmd = ["ip", "-n", ns] + (["-6"] if v6 else []) + ["-batch", path]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()[:500]}")
    return time.perf_counter() - t0


# -- measured subprocesses ----------------------------------------------------

def vmhwm_mib(pid="self"):
    """Peak RSS of one process image (VmHWM is per address space: unlike
    wait4's ru_maxrss it does not carry the RSS of the process that forked
    and exec'd it)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_measured(cmd, timeout=None, env=None):
    """Run cmd with stdout to a file; (seconds, peak RSS MiB, rc, stdout, stderr).

    The peak RSS is the child's VmHWM sampled every millisecond while it runs
    (the last sample before it exits; it only grows)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)  # returns once exec'd
        hwm = 0.0
        while True:
            pid, status, _ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            hwm = max(hwm, vmhwm_mib(p.pid))
            if timeout is not None and time.perf_counter() > t0 + timeout:
                p.kill()
                os.wait4(p.pid, 0)
                p.returncode = -9
                return None, hwm, "timeout", "", ""
            time.sleep(0.001)
        dt = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return dt, hwm, p.returncode, out.read().decode(), err.read().decode()


def run_child(kind, *args, timeout=None):
    """Run this script's child mode; returns its JSON result."""
    cmd = [sys.executable, os.path.abspath(__file__), "_child", kind, *map(str, args)]
    dt, rss, rc, out, err = run_measured(cmd, timeout=timeout, env=child_env())
    if rc == "timeout":
        return {"timeout": True, "wall_seconds": timeout}
    if rc != 0:
        raise RuntimeError(f"child {kind} failed (exit {rc}): {err.strip()[-1500:]}")
    res = json.loads(out.strip().splitlines()[-1])
    res["wall_seconds"] = round(dt, 3)
    res.setdefault("peak_rss_mib", round(rss, 1))
    return res


def child_main(argv):
    kind = argv[0]
    if kind in ("raw", "pyroute2"):
        ns, family = argv[1], int(argv[2])
        fam = socket.AF_INET if family == 4 else socket.AF_INET6
        if kind == "raw":
            from wgbpf import routes
        else:
            from pyroute2 import IPRoute
        with nsenter.entered(ns):
            t0 = time.perf_counter()
            if kind == "raw":
                nl = routes.Netlink()
                n = sum(1 for _ in routes.dump_routes(nl, fam))
                nl.close()
            else:
                with IPRoute() as ipr:
                    n = len(ipr.get_routes(family=fam))
            dt = time.perf_counter() - t0
        print(json.dumps({"routes": n, "seconds": round(dt, 3), "peak_rss_mib": round(vmhwm_mib(), 1)}))
    elif kind == "profile":
        child_profile(*argv[1:])
    else:
        raise SystemExit(f"unknown child {kind}")


def child_profile(ns, front, out_path, *peer_args):
    """Clear the kernel-origin map entries, then cProfile the maps backend's full_sync."""
    import cProfile
    import io
    import pstats
    from wgbpf import abi, config as configmod, liveness, sync
    from wgbpf.backends.maps import MapsBackend
    from wgbpf.links import Links
    from wgbpf.maps import Maps, pin_dir
    with nsenter.entered(ns):
        m = Maps.open(pin_dir(front))
        entries = m.tries.entries()
        d = sync.Diff()
        d.delete = [k for k, (o, _) in entries.items() if o == abi.Origin.KERNEL]
        t0 = time.perf_counter()
        m.tries.apply(d)
        t_clear = time.perf_counter() - t0
        lines = []
        dm = MapsBackend(sync.Filter(), lambda msg: lines.append(msg), liveness.Liveness())
        dm.cfg = configmod.build(front, peer_args)
        dm.maps = m
        dm.links = Links(front, dm.log, dm.liveness, dm.stats)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.runcall(dm.full_sync, "profile")
        dt = time.perf_counter() - t0
        prof2 = cProfile.Profile()
        t0 = time.perf_counter()
        prof2.runcall(dm.full_sync, "profile, maps filled")
        dt2 = time.perf_counter() - t0
        m.close()
    prof.dump_stats(out_path + ".pstats")
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s)
    st.sort_stats("tottime").print_stats(25)
    st.sort_stats("cumulative").print_stats(30)
    s2 = io.StringIO()
    st = pstats.Stats(prof2, stream=s2)
    st.sort_stats("tottime").print_stats(20)
    with open(out_path, "w") as f:
        f.write(f"# cProfile of Daemon.full_sync into empty maps ({lines[-2]})\n")
        f.write(s.getvalue())
        f.write(f"\n\n# cProfile of a second Daemon.full_sync, maps already equal ({lines[-1]})\n")
        f.write(s2.getvalue())
    print(json.dumps({"deleted": len(d.delete), "clear_seconds": round(t_clear, 3),
                      "profiled_seconds": round(dt, 3), "profiled_second_seconds": round(dt2, 3),
                      "log": lines}))


# -- the daemon under test ----------------------------------------------------

SYNC_RE = re.compile(r"sync \((?P<why>[^)]*)\): (?P<read>\d+) routes read, (?P<prefixes>\d+) prefixes "
                     r"name peers, (?P<ignored>\d+) ignored(?: \(\d+ TOS/source-specific\))?, (?P<writes>\d+) map writes \((?P<put>\d+) "
                     r"put, (?P<deleted>\d+) deleted\) in (?P<secs>[\d.]+)s \(dump (?P<dump>[\d.]+)s\)")


class DaemonRun:
    """`wgbpf --netns NS daemon FRONT --peer ...` with its stderr collected."""

    def __init__(self, ns, front, peer_args, prefix=None, extra=()):
        cmd = ((prefix + ["-m", "wgbpf.cli"]) if prefix else wgbpf_cmd()) + ["--netns", ns, "daemon", front]
        cmd += [a for p in peer_args for a in ("--peer", p)] + list(extra)
        self.lines = []
        self.synced = threading.Event()
        self.sync_line = None
        self.t_sync = None
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, bufsize=1, env=child_env())
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            now = time.perf_counter()
            line = line.rstrip("\n")
            self.lines.append(line)
            if "sync (start)" in line and not self.synced.is_set():
                self.sync_line, self.t_sync = line, now
                self.synced.set()

    def wait_sync(self, timeout):
        """Seconds from launch to the 'sync (start)' line, and its fields."""
        deadline = time.perf_counter() + timeout
        while not self.synced.wait(0.2):
            if self.proc.poll() is not None:
                self.reader.join(2)
                raise RuntimeError("daemon exited before syncing:\n  " + "\n  ".join(self.lines[-20:]))
            if time.perf_counter() > deadline:
                raise RuntimeError(f"daemon did not sync within {timeout}s:\n  " + "\n  ".join(self.lines[-20:]))
        m = SYNC_RE.search(self.sync_line)
        if not m:
            raise RuntimeError(f"unexpected sync line: {self.sync_line!r}")
        f = m.groupdict()
        fields = {k: (v if k == "why" else float(v) if "." in v else int(v)) for k, v in f.items()}
        return self.t_sync - self.t0, fields

    def memory(self):
        """{VmHWM, VmRSS} in MiB from /proc/PID/status."""
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    k, v = line.split(":")
                    out[k] = round(int(v.split()[0]) / 1024, 1)
        return out

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(2)
        return self.proc.returncode


def read_status(front, ns):
    from wgbpf.instance import status_path
    try:
        with open(status_path(front, ns)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def wait_status_after(front, ns, t_wall, timeout=5.0):
    """The daemon's status file once written after wall time t_wall."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = read_status(front, ns)
        if st and st.get("written", 0) > t_wall:
            return st
        time.sleep(0.05)
    return read_status(front, ns)


# -- netlink route add for the single-change lag ------------------------------

def nl_route_add4(sock, seq, net, gw, oif):
    """RTM_NEWROUTE (create, excl, onlink) over a raw socket; waits for the ack."""
    rtmsg = struct.pack("=BBBBBBBBI", socket.AF_INET, net.prefixlen, 0, 0, 254, 3, 0, 1, 4)  # RTNH_F_ONLINK
    attrs = b""
    for kind, data in ((1, net.network_address.packed), (5, gw.packed), (4, struct.pack("=i", oif))):
        attrs += struct.pack("=HH", 4 + len(data), kind) + data
    body = rtmsg + attrs
    hdr = struct.pack("=IHHII", 16 + len(body), 24, 0x1 | 0x4 | 0x200 | 0x400, seq, 0)
    sock.send(hdr + body)
    data = sock.recv(65536)
    err = -struct.unpack_from("=i", data, 16)[0]
    if err:
        raise OSError(err, f"route add {net}: {os.strerror(err)}")


class StormProbe:
    """Route additions sent one at a time while a storm runs, each timed
    from its send to its entry in the map: the event-to-map lag end to end,
    time queued in the daemon's socket included (the daemon itself cannot
    see that part: netlink carries no receive timestamp)."""

    def __init__(self, bench, maps, first):
        self.bench, self.maps, self.next = bench, maps, first
        self.lags = []
        self.stop = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def _run(self):
        b = self.bench
        try:
            with nsenter.entered(b.ns):  # this thread only: setns() moves the caller
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
            try:
                while not self.stop.is_set():
                    i = self.next
                    self.next += 1
                    net = ipaddress.ip_network(f"10.{200 + i // 256}.{i % 256}.0/24")
                    pid = b.peer_ids[f"p{i % NPEERS + 1}"]
                    t0 = time.perf_counter()
                    nl_route_add4(sock, i + 1, net, ipaddress.ip_address(tag4(i % NPEERS)), b.front_ifindex)
                    while True:
                        r = self.maps.tries.get_route(net)
                        if r is not None and self.maps.route_peers(r) == [pid]:
                            break
                        if time.perf_counter() - t0 > 30:
                            raise RuntimeError(f"probe {net}: not in the map after 30s")
                        time.sleep(0.0005)
                    self.lags.append((time.perf_counter() - t0) * 1000)
                    self.stop.wait(0.01)
            finally:
                sock.close()
        except Exception as e:
            self.error = e

    def summary(self):
        if self.error:
            raise self.error
        s = sorted(self.lags)
        if not s:
            return {"probes": 0}
        q = lambda f: round(s[min(len(s) - 1, int(f * len(s)))], 1)  # noqa: E731
        return {"probes": len(s), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": round(s[-1], 1)}


# -- the benchmark --------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        run = uuid.uuid4().hex[:6]
        self.ns = f"wgbench-{run}"
        self.ns_sub = None
        self.front = f"wgb{run}"
        self.members = [f"wgm{i + 1}" for i in range(NPEERS)]
        self.peer_args = [f"p{i + 1}={self.members[i]},{tag4(i)},{tag6(i)}" for i in range(NPEERS)]
        self.daemons = []
        self.tmp = tempfile.mkdtemp(prefix="wgbench-")
        self.probes = 0  # storm probes sent so far (each its own prefix)
        self.res = {"params": {"v4": args.v4, "v6": args.v6, "changes": args.changes,
                               "singles": args.singles, "seed": args.seed,
                               "pyroute2_limit": args.pyroute2_limit},
                    "machine": {"kernel": os.uname().release, "cpus": os.cpu_count(),
                                "python": sys.version.split()[0]},
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.rows = []  # (work, size, seconds, rate, rss, note)

    def row(self, work, size, seconds, n=None, rss=None, note=""):
        rate = fmt_rate(n, seconds) if (n is not None and seconds) else ""
        self.rows.append((work, f"{size:,}" if isinstance(size, int) else str(size),
                          f"{seconds:.2f}" if isinstance(seconds, float) else str(seconds or "-"),
                          rate, f"{rss:,.0f}" if rss else "", note))

    # -- namespace ---------------------------------------------------------
    def make_ns(self, ns, front, members):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")  # IPv4 onlink gateways need the local table
        for dev in [front] + members:
            sh("ip", "-n", ns, "tuntap", "add", "dev", dev, "mode", "tun")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        if self.args.nexthops:
            # a nexthop object needs its device's carrier: the front's TUN held open
            import fcntl
            with nsenter.entered(ns):
                fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
                fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", front.encode(), 0x0001 | 0x1000))  # TUNSETIFF
            self.tun_fds = getattr(self, "tun_fds", []) + [fd]

    def cleanup(self):
        for d in self.daemons:
            with contextlib.suppress(Exception):
                d.stop(timeout=10)
        from wgbpf.instance import run_dir
        from wgbpf.maps import pin_dir
        pins = run = None
        with contextlib.suppress(OSError):  # per namespace: found before it goes
            pins, run = pin_dir(self.front, self.ns), run_dir(self.ns)
        for ns in (self.ns, self.ns_sub):
            if not ns or not os.path.exists(f"/run/netns/{ns}"):
                continue
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)
        if pins and os.path.isdir(pins):
            for e in os.listdir(pins):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(pins, e))
            with contextlib.suppress(OSError):
                os.rmdir(pins)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(pins))  # the namespace's pin directory, once empty
        for suffix in (".json", ".json.tmp", ".lock", ".writer", ".build"):
            with contextlib.suppress(OSError, TypeError):
                os.unlink(os.path.join(run, f"{self.front}{suffix}"))
        with contextlib.suppress(OSError, TypeError):
            os.rmdir(run)  # the namespace's run directory, once empty
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- steps ---------------------------------------------------------------
    def setup(self):
        log(f"netns {self.ns}: front {self.front}, members {', '.join(self.members)}")
        self.make_ns(self.ns, self.front, self.members)
        cmd = wgbpf_cmd() + ["--netns", self.ns, "attach", self.front, "--json"]
        for p in self.peer_args:
            cmd += ["--peer", p]
        t0 = time.perf_counter()
        r = sh(*cmd, env=child_env())
        dt = time.perf_counter() - t0
        log(f"attached in {dt:.1f}s")
        self.res["attach_seconds"] = round(dt, 3)
        from wgbpf.maps import Maps, pin_dir
        with Maps.open(pin_dir(self.front, self.ns), readonly=True) as m:
            self.peer_ids = {p.name.decode(): i for i, p in m.peers().items()}
        with nsenter.entered(self.ns):
            self.front_ifindex = socket.if_nametoindex(self.front)
        self.res["attach"] = json.loads(r.stdout)

    def daemon_start(self, label, timeout, extra=()):
        d = DaemonRun(self.ns, self.front, self.peer_args, extra=extra)
        self.daemons.append(d)
        wall, f = d.wait_sync(timeout)
        mem = d.memory()
        log(f"{label}: sync line after {wall:.2f}s: {d.sync_line.split('wgbpf daemon: ')[-1]}; "
            f"VmHWM {mem.get('VmHWM')} MiB, VmRSS {mem.get('VmRSS')} MiB")
        child = re.search(r"child peak RSS (\d+) MiB", d.sync_line)
        return d, {"wall_to_sync_seconds": round(wall, 3), "sync": f,
                   "vmhwm_mib": mem.get("VmHWM"), "vmrss_mib": mem.get("VmRSS"),
                   "child_peak_mib": int(child.group(1)) if child else None}

    def baseline(self):
        log("daemon start on an empty table (baseline: imports, attach/BCC compile)")
        d, r = self.daemon_start("baseline", 300)
        d.stop()
        self.daemons.remove(d)
        self.res["daemon_empty"] = r
        self.row("daemon start, empty table (imports + attach/compile)", 0,
                 r["wall_to_sync_seconds"], None, r["vmhwm_mib"],
                 f"sync itself {r['sync']['secs']:.2f}s")

    def fill(self):
        a = self.args
        rng = random.Random(a.seed)
        log(f"generating {a.v4:,} IPv4 and {a.v6:,} IPv6 prefixes (seed {a.seed})")
        t0 = time.perf_counter()
        self.v4 = [prefix_text(p, plen, False) for p, plen in gen_v4(rng, a.v4)]
        self.v6 = [prefix_text(p, plen, True) for p, plen in gen_v6(rng, a.v6)]
        lens = {}
        for p in self.v4:
            L = int(p.rsplit("/", 1)[1])
            lens[L] = lens.get(L, 0) + 1
        self.res["v4_length_histogram"] = {str(k): v for k, v in sorted(lens.items())}
        log(f"generated in {time.perf_counter() - t0:.1f}s; /24 share {lens.get(24, 0) / max(1, a.v4):.0%}")
        if a.nexthops:
            sh("ip", "netns", "exec", self.ns, "sysctl", "-qw", f"net.ipv4.nexthop_compat_mode={a.compat}")
            objs = write_batches(self.tmp, "nh", [*nexthop_lines(a.nexthops, self.front, False),
                                                  *nexthop_lines(a.nexthops, self.front, True)], a.chunk)
            t = ip_batch(self.ns, objs)
            log(f"{2 * a.nexthops:,} nexthop objects in {t:.2f}s (compat mode {a.compat})")
            f4 = write_batches(self.tmp, "add4", nexthop_route_lines(self.v4, a.nexthops, False), a.chunk)
            f6 = write_batches(self.tmp, "add6", nexthop_route_lines(self.v6, a.nexthops, True), a.chunk)
        else:
            f4 = write_batches(self.tmp, "add4", route_lines("add", self.v4, self.front, False), a.chunk)
            f6 = write_batches(self.tmp, "add6", route_lines("add", self.v6, self.front, True), a.chunk)
        log(f"ip -batch insert of {a.v4:,} IPv4 routes ({len(f4)} files)")
        t4 = ip_batch(self.ns, f4)
        log(f"  {t4:.2f}s ({fmt_rate(a.v4, t4)}/s)")
        log(f"ip -6 -batch insert of {a.v6:,} IPv6 routes ({len(f6)} files)")
        t6 = ip_batch(self.ns, f6, v6=True)
        log(f"  {t6:.2f}s ({fmt_rate(a.v6, t6)}/s)")
        self.res["insert"] = {"v4_seconds": round(t4, 3), "v6_seconds": round(t6, 3)}
        self.row("ip -batch insert IPv4", a.v4, t4, a.v4)
        self.row("ip -6 -batch insert IPv6", a.v6, t6, a.v6)
        for p in f4 + f6:
            os.unlink(p)

    def ip_show(self):
        out = {}
        for fam, flag in ((4, []), (6, ["-6"])):
            n = self.args.v4 if fam == 4 else self.args.v6
            dt, rss, rc, _o, err = run_measured(["ip", "-n", self.ns] + flag + ["route", "show"])
            if rc != 0:
                raise RuntimeError(f"ip route show: {err}")
            log(f"ip -{fam} route show: {dt:.2f}s, peak RSS {rss:.1f} MiB")
            out[f"v{fam}"] = {"seconds": round(dt, 3), "peak_rss_mib": round(rss, 1)}
            self.row(f"ip -{fam} route show > /dev/null", n, dt, n, rss)
        self.res["ip_show"] = out

    def raw_parser(self):
        out = {}
        for fam in (4, 6):
            r = run_child("raw", self.ns, fam)
            log(f"raw parser IPv{fam}: {r['routes']:,} routes in {r['seconds']:.2f}s "
                f"({fmt_rate(r['routes'], r['seconds'])}/s), peak RSS {r['peak_rss_mib']} MiB")
            out[f"v{fam}"] = r
            self.row(f"wgbpf routes.dump_routes IPv{fam} (iterate)", r["routes"], r["seconds"],
                     r["routes"], r["peak_rss_mib"], "all tables, unicast")
        self.res["raw_parser"] = out

    def pyroute2(self):
        a = self.args
        limit = a.pyroute2_limit
        if limit <= 0:
            return
        ns = self.ns
        size = a.v4
        note = "same netns"
        if a.v4 > limit:
            self.ns_sub = self.ns + "-p"
            size = limit
            note = f"second netns holding the first {limit:,} of the IPv4 routes"
            log(f"pyroute2: {note}")
            self.make_ns(self.ns_sub, self.front, self.members)
            files = write_batches(self.tmp, "sub4", route_lines("add", self.v4[:limit], self.front, False), a.chunk)
            ip_batch(self.ns_sub, files)
            ns = self.ns_sub
        log(f"pyroute2 IPRoute().get_routes(family=AF_INET) over {size:,} routes")
        r = run_child("pyroute2", ns, 4, timeout=a.pyroute2_timeout)
        if r.get("timeout"):
            log(f"  timed out after {a.pyroute2_timeout}s")
            self.row("pyroute2 get_routes IPv4", size, f">{a.pyroute2_timeout}", None, None, "timeout; " + note)
        else:
            log(f"  {r['routes']:,} routes in {r['seconds']:.2f}s ({fmt_rate(r['routes'], r['seconds'])}/s), "
                f"peak RSS {r['peak_rss_mib']} MiB")
            self.row("pyroute2 get_routes IPv4", r["routes"], r["seconds"], r["routes"], r["peak_rss_mib"], note)
        r["note"] = note
        self.res["pyroute2"] = r
        if self.ns_sub:
            sh("ip", "netns", "del", self.ns_sub, check=False)
            self.ns_sub = None

    def initial_sync(self):
        log("daemon start into empty maps (initial full sync)")
        d, r = self.daemon_start("initial sync", 1800)
        d.stop()
        self.daemons.remove(d)
        f = r["sync"]
        self.res["daemon_initial"] = r
        n = f["read"]
        base = self.res.get("daemon_empty", {}).get("vmrss_mib") or 0
        self.row("daemon initial sync (dump+table+diff+writes)", n, f["secs"], n, r["vmhwm_mib"],
                 f"dump {f['dump']:.2f}s, {f['writes']:,} writes; start->sync line {r['wall_to_sync_seconds']:.1f}s"
                 f"; RSS after {r['vmrss_mib']:.0f} MiB (+{r['vmrss_mib'] - base:.0f} over an empty table)")
        return f

    def dir24(self):
        """The same table in DIR-24-8 mode (`--lookup dir24`, as the README
        recommends for full IPv4 tables): a first start into maps emptied of
        kernel entries (LPM writes and the arrays built from them), then a
        restart against the filled maps."""
        from wgbpf import abi, sync
        from wgbpf.maps import Maps, pin_dir
        with Maps.open(pin_dir(self.front, self.ns)) as m:
            d = sync.Diff()
            d.delete = [k for k, origin, _v in m.tries.scan() if origin == abi.Origin.KERNEL]
            m.tries.apply(d)
        out = {}
        for label, key in (("initial sync", "initial"), ("restart", "restart")):
            log(f"dir24 mode: daemon {label}")
            d, r = self.daemon_start(f"dir24 {label}", 1800, extra=["--lookup", "dir24"])
            d.stop()
            self.daemons.remove(d)
            out[key] = r
            f = r["sync"]
            self.row(f"dir24: daemon {label} (routes + IPv4 arrays)", f["read"], f["secs"], f["read"],
                     r["vmhwm_mib"], f"{f['writes']:,} map writes; start->sync line {r['wall_to_sync_seconds']:.1f}s; "
                     f"arrays compiled by a child process, its peak RSS {r.get('child_peak_mib', '?')} MiB")
        self.res["dir24"] = out

    def nhreplace(self):
        """One nexthop object replaced (its peer moved) under the daemon:
        seconds until every route through it is in the maps with the new
        peer (the maps polled on a sample, then checked whole), beside
        `ip nexthop replace` itself. The routes name the object's peer
        set, so the daemon rewrites the set (one write) and no route: the
        daemon's own counters say how many of each it wrote."""
        a = self.args
        singles, _groups = nexthop_ids(a.nexthops, False)
        ids = singles + _groups
        mine = [p for j, p in enumerate(self.v4) if ids[j % len(ids)] == singles[0]]
        if not mine:
            return
        d, _r = self.daemon_start("daemon for the replace", 1800)
        from wgbpf.maps import Maps, pin_dir
        want = [self.peer_ids["p2"]]  # tag4(1) is p2's

        def peers(net):
            r = m.tries.get_route(net)
            return None if r is None else m.route_peers(r)
        rng = random.Random(a.seed)
        sample = [ipaddress.ip_network(p) for p in rng.sample(mine, min(200, len(mine)))]
        st0 = wait_status_after(self.front, self.ns, 0) or {}
        with Maps.open(pin_dir(self.front, self.ns), readonly=True) as m:
            t0 = time.perf_counter()
            sh("ip", "-n", self.ns, "nexthop", "replace", "id", str(singles[0]), "via", tag4(1),
               "dev", self.front, "onlink")
            t_ip = time.perf_counter() - t0
            while any(peers(n) != want for n in sample):
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError("the replaced object's routes did not reach the maps in 120 s")
                time.sleep(0.001)
            t_maps = time.perf_counter() - t0
            late = sum(1 for p in mine if peers(ipaddress.ip_network(p)) != want)
        time.sleep(1.5)  # the status file is written every second
        st = wait_status_after(self.front, self.ns, time.time() - 0.2) or {}
        writes = {k: st.get(k, 0) - st0.get(k, 0) for k in ("map_writes", "set_writes")}
        d.stop()
        self.daemons.remove(d)
        self.res["nhreplace"] = {"routes": len(mine), "ip_seconds": round(t_ip, 4),
                                 "maps_seconds": round(t_maps, 4), "after_ip_ms": round(1000 * (t_maps - t_ip), 1),
                                 "late_after_sample": late, **writes}
        self.row("one nexthop object replaced: ip nexthop replace", len(mine), t_ip, None, None,
                 "the kernel's own (it tells each route, compat mode 1)")
        self.row("  ... every route through it steered to the new peer", len(mine), t_maps, len(mine), None,
                 f"{1000 * (t_maps - t_ip):.0f} ms after ip returned; {late} wrong after; "
                 f"{writes['set_writes']} set writes, {writes['map_writes']} route writes")

    def second_start(self, first=False):
        """The daemon the storm runs against: a restart over the maps the
        initial sync filled, or (`first`: --only storm) a first start."""
        if first:
            log("daemon start into empty maps, for the storm")
            d, r = self.daemon_start("first start", 1800)
            f = r["sync"]
            self.row("daemon start for the storm, empty maps", f["read"], f["secs"], f["read"], r["vmhwm_mib"],
                     f"{f['writes']} map writes; start->sync line {r['wall_to_sync_seconds']:.1f}s")
            return d
        log("second daemon start against the filled maps (must write nothing)")
        d, r = self.daemon_start("second start", 1800)
        f = r["sync"]
        r["zero_writes"] = f["writes"] == 0
        self.res["daemon_restart"] = r
        n = f["read"]
        self.row("daemon restart, maps already filled", n, f["secs"], n, r["vmhwm_mib"],
                 f"{f['writes']} map writes ({'OK' if f['writes'] == 0 else 'EXPECTED 0'}); "
                 f"start->sync line {r['wall_to_sync_seconds']:.1f}s")
        return d

    def steady(self, label="steady state", seed=1, exclude=frozenset()):
        """K replaces moving prefixes to the next peer, then K deletes, while
        a daemon runs; returns {"replace": ..., "delete": ...}."""
        from wgbpf import abi, sync
        from wgbpf.maps import Maps, pin_dir
        a = self.args
        pool = [j for j in range(len(self.v4)) if j not in exclude] if exclude else range(len(self.v4))
        k = min(a.changes, len(pool) // 2)
        rng = random.Random(a.seed + seed)
        idx = rng.sample(pool, k)
        prefixes = [self.v4[j] for j in idx]
        # prefix j names peer j % 4; move each to the next one
        rep = [f"route replace {self.v4[j]} via {tag4((j + 1) % NPEERS)} dev {self.front} onlink\n" for j in idx]
        rep_files = write_batches(self.tmp, "rep", rep, a.chunk)
        del_files = write_batches(self.tmp, "del", (f"route del {p}\n" for p in prefixes), a.chunk)
        last = ipaddress.ip_network(prefixes[-1])
        last_pid = self.peer_ids[f"p{(idx[-1] + 1) % NPEERS + 1}"]
        out = {"changes": k}
        with Maps.open(pin_dir(self.front, self.ns), readonly=True) as m:
            for phase, files, done in (
                    ("replace", rep_files, lambda: (lambda r: r is not None and m.route_peers(r) == [last_pid])(m.tries.get_route(last))),
                    ("delete", del_files, lambda: m.tries.get_route(last) is None)):
                st0 = wait_status_after(self.front, self.ns, 0) or {}
                ev0 = st0.get("events", 0)
                log(f"{label}: {phase} {k:,} routes via ip -batch while the daemon runs")
                probe = StormProbe(self, m, self.probes)
                probe.__enter__()
                t0 = time.perf_counter()
                procs = iter(files)
                cur = None
                t_ip = t_map = None
                while t_ip is None or t_map is None:
                    if cur is None and t_ip is None:
                        f = next(procs, None)
                        if f is None:
                            t_ip = time.perf_counter() - t0
                        else:
                            cur = subprocess.Popen(["ip", "-n", self.ns, "-batch", f],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    if cur is not None and cur.poll() is not None:
                        if cur.returncode != 0:
                            raise RuntimeError(f"ip -batch {phase}: {cur.stderr.read().decode()[:500]}")
                        cur.stderr.close()
                        cur = None
                        continue
                    if t_map is None and done():
                        t_map = time.perf_counter() - t0
                    if time.perf_counter() - t0 > 1800:
                        raise RuntimeError(f"{phase}: maps did not follow within 1800s")
                    time.sleep(0.001)
                probe.__exit__()
                self.probes = probe.next
                lag = probe.summary()
                st = wait_status_after(self.front, self.ns, time.time() + 0.05, timeout=5) or {}
                ev = st.get("events", 0) - ev0 - lag["probes"]
                entry = {"ip_batch_seconds": round(t_ip, 3), "maps_done_seconds": round(t_map, 3),
                         "tail_after_ip_ms": round((t_map - t_ip) * 1000, 1),
                         "events_counted": ev, "lag_ms_max_since_start": st.get("lag_ms_max"),
                         "daemon_lag_ms_p50": st.get("lag_ms_p50"), "daemon_lag_ms_p99": st.get("lag_ms_p99"),
                         "probe_lag": lag,
                         "maps_vs_ip": round(t_ip / t_map, 2),
                         "overruns": st.get("overruns"), "resyncs": st.get("resyncs")}
                # every changed prefix, not only the last one
                entries = m.peer_entries()
                bad = 0
                for j in idx:
                    net = ipaddress.ip_network(self.v4[j])
                    key = sync.pkey(socket.AF_INET, net.network_address.packed, net.prefixlen)
                    have = entries.get(key)
                    if phase == "replace":
                        want = (int(abi.Origin.KERNEL), (self.peer_ids[f"p{(j + 1) % NPEERS + 1}"],))
                        bad += have != want
                    else:
                        bad += have is not None
                entry["wrong_after"] = bad
                out[phase] = entry
                log(f"  ip -batch {t_ip:.2f}s ({fmt_rate(k, t_ip)}/s); maps followed all at {t_map:.2f}s "
                    f"({fmt_rate(k, t_map)}/s, {entry['tail_after_ip_ms']} ms after ip finished); "
                    f"events {ev:,}, lag_ms_max {st.get('lag_ms_max')}, overruns {st.get('overruns')}, "
                    f"wrong entries {bad}")
                self.row(f"{label}: {phase} (ip -batch | maps follow)", k,
                         f"{t_ip:.2f} | {t_map:.2f}", None, None,
                         f"keeps up: {'yes' if t_map - t_ip <= 0.25 else 'NO'} (the last change in the map "
                         f"{(t_map - t_ip) * 1000:.0f} ms after ip finished; maps can only trail ip, so rates "
                         f"ip {fmt_rate(k, t_ip)}/s, "
                         f"maps {fmt_rate(k, t_map)}/s; events {ev:,}; lag (route add -> map, {lag['probes']} probes "
                         f"during the storm) p50 {lag.get('p50_ms')} ms, p99 {lag.get('p99_ms')} ms (target <= 50), "
                         f"max {lag.get('max_ms')} ms (target <= 250); daemon's own read->map lag p99 {st.get('lag_ms_p99')} ms; "
                         f"overruns {st.get('overruns')}; wrong {bad}")
        for f in rep_files + del_files:
            os.unlink(f)
        return out, set(idx)

    def singles(self):
        """Single route additions: send -> visible in the LPM map."""
        from wgbpf.maps import Maps, pin_dir
        a = self.args
        rng = random.Random(a.seed + 2)
        have = set(self.v4)
        picks = []
        while len(picks) < a.singles:
            addr = rng.getrandbits(24) << 8
            p = f"{socket.inet_ntoa(struct.pack('!I', addr))}/24"
            if v4_ok(addr) and p not in have:
                have.add(p)
                picks.append(ipaddress.ip_network(p))
        lags = []
        with Maps.open(pin_dir(self.front, self.ns), readonly=True) as m:
            with nsenter.entered(self.ns):
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
            try:
                for i, net in enumerate(picks):
                    pi = i % NPEERS
                    pid = self.peer_ids[f"p{pi + 1}"]
                    t0 = time.perf_counter()
                    nl_route_add4(sock, i + 1, net, ipaddress.ip_address(tag4(pi)), self.front_ifindex)
                    while True:
                        r = m.tries.get_route(net)
                        if r is not None and m.route_peers(r) == [pid]:
                            break
                        if time.perf_counter() - t0 > 10:
                            raise RuntimeError(f"single add {net}: not in the map after 10s")
                    lags.append((time.perf_counter() - t0) * 1000)
                    time.sleep(0.02)  # let the daemon go back to select()
            finally:
                sock.close()
        samples = list(lags)
        lags.sort()
        med = statistics.median(lags)
        p95 = lags[min(len(lags) - 1, int(round(0.95 * (len(lags) - 1))))]
        log(f"single adds: {len(lags)} lags median {med:.2f} ms, p95 {p95:.2f} ms, max {lags[-1]:.2f} ms")
        self.res["singles"] = {"count": len(lags), "median_ms": round(med, 3), "p95_ms": round(p95, 3),
                               "max_ms": round(lags[-1], 3), "min_ms": round(lags[0], 3),
                               "samples_ms": [round(x, 3) for x in samples]}
        self.row("single route add -> in map (netlink send to map)", len(lags), "", None, None,
                 f"median {med:.2f} ms, p95 {p95:.2f} ms, max {lags[-1]:.2f} ms")

    def verify(self):
        from wgbpf import abi, routes as rt, sync
        from wgbpf.maps import Maps, pin_dir
        by_addr = {}
        for i in range(NPEERS):
            pid = self.peer_ids[f"p{i + 1}"]
            by_addr[ipaddress.ip_address(tag4(i)).packed] = pid
            by_addr[ipaddress.ip_address(tag6(i)).packed] = pid
        with nsenter.entered(self.ns):
            by_oif = {socket.if_nametoindex(dev): self.peer_ids[f"p{i + 1}"] for i, dev in enumerate(self.members)}
            nl = rt.Netlink()
            want = {}
            n = 0
            for fam in (socket.AF_INET, socket.AF_INET6):
                for r in rt.dump_routes(nl, fam):
                    if r.table != rt.RT_TABLE_MAIN:
                        continue
                    n += 1
                    peers = set()
                    for h in r.nexthops:  # (gateway, oif[, weight])
                        gw, oif = h[0], h[1]
                        pid = by_addr.get(gw) if gw is not None else None
                        if pid is None:
                            pid = by_oif.get(oif)
                        if pid is not None:
                            peers.add(pid)
                    if peers:
                        want[sync.pkey(fam, r.dst, r.dst_len)] = tuple(sorted(peers))
            nl.close()
        with Maps.open(pin_dir(self.front, self.ns), readonly=True) as m:
            have = {k: p for k, (o, p) in m.peer_entries().items() if o == abi.Origin.KERNEL}
        missing = [k for k in want if k not in have]
        extra = [k for k in have if k not in want]
        wrong = [k for k in want if k in have and have[k] != want[k]]
        ok = not (missing or extra or wrong)
        ex = [str(sync.pkey_network(k)) for k in (missing + extra + wrong)[:5]]
        log(f"maps == kernel: {'yes' if ok else 'NO'} ({len(want):,} kernel prefixes naming peers, "
            f"{len(have):,} kernel-origin map entries; missing {len(missing)}, extra {len(extra)}, "
            f"wrong {len(wrong)}{'; e.g. ' + ', '.join(ex) if ex else ''})")
        self.res["verify"] = {"equal": ok, "kernel_main_routes": n, "kernel_prefixes_naming_peers": len(want),
                              "map_kernel_entries": len(have), "missing": len(missing), "extra": len(extra),
                              "wrong": len(wrong), "examples": ex}
        self.row("maps == kernel", len(want), "", None, None, "yes" if ok else
                 f"NO: missing {len(missing)}, extra {len(extra)}, wrong {len(wrong)}")

    def profile(self):
        os.makedirs(RESULTS_DIR, exist_ok=True)
        out = os.path.join(RESULTS_DIR, "sync-profile.txt")
        log("profiling Daemon.full_sync into emptied maps (cProfile)")
        r = run_child("profile", self.ns, self.front, out, *self.peer_args)
        log(f"  cleared {r['deleted']:,} entries in {r['clear_seconds']:.2f}s; profiled syncs "
            f"{r['profiled_seconds']:.2f}s (empty maps) and {r['profiled_second_seconds']:.2f}s (filled); see {out}")
        self.res["profile"] = dict(r, file=out)

    def profile_events(self):
        """The daemon itself under cProfile: its restart sync, then a round of
        replaces and deletes (other prefixes than the measured ones)."""
        import io
        import pstats
        path = os.path.join(RESULTS_DIR, "sync-profile-daemon")
        log("profiling the daemon process (restart sync + events) under cProfile")
        d = DaemonRun(self.ns, self.front, self.peer_args,
                      prefix=[sys.executable, "-m", "cProfile", "-o", path + ".pstats"])
        self.daemons.append(d)
        d.wait_sync(3600)
        out, _ = self.steady("events under cProfile", seed=3, exclude=self.changed)
        d.stop(timeout=120)
        self.daemons.remove(d)
        s = io.StringIO()
        st = pstats.Stats(path + ".pstats", stream=s)
        st.sort_stats("tottime").print_stats(25)
        st.sort_stats("cumulative").print_stats(35)
        with open(path + ".txt", "w") as f:
            f.write(f"# cProfile of `wgbpf daemon`: {d.sync_line}\n# then events: {json.dumps(out)}\n")
            f.write(s.getvalue())
        self.res["profile_daemon"] = {"events": out, "sync_line": d.sync_line, "file": path + ".txt"}
        log(f"  see {path}.txt")

    def run(self):
        t_all = time.perf_counter()
        self.res["loadavg_start"] = os.getloadavg()
        only = set(self.args.only.split(","))
        self.setup()
        self.baseline()
        self.fill()
        self.ip_show()
        if "sync" in only:
            self.raw_parser()
            self.pyroute2()
            self.initial_sync()
        if only & {"sync", "storm"}:
            d = self.second_start(first="sync" not in only)
        if "storm" in only:
            self.res["steady"], self.changed = self.steady()
            self.singles()
            time.sleep(0.2)
            self.verify()
        if only & {"sync", "storm"}:
            d.stop()
            self.daemons.remove(d)
        if "dir24" in only:
            self.dir24()
        if "nhreplace" in only:
            self.nhreplace()
        if self.args.profile:
            self.profile()
            self.profile_events()
        self.res["total_seconds"] = round(time.perf_counter() - t_all, 1)
        self.res["loadavg_end"] = os.getloadavg()

    def targets(self):
        """Each figure the full-table targets name, beside its target and
        whether it is met: (figure, measured, target, met) rows."""
        res, out = self.res, []
        show = res.get("ip_show", {})
        base = sum(v["seconds"] for v in show.values()) if len(show) == 2 else None

        def ratio(figure, run, most):
            if run and base:
                x = run["sync"]["secs"] / base
                out.append((figure, f"{run['sync']['secs']:.2f}s = {x:.2f}x ip route show ({base:.2f}s)",
                            f"<= {most}x", x <= most))
        ratio("initial sync, lpm", res.get("daemon_initial"), 3)
        ratio("initial sync, dir24", res.get("dir24", {}).get("initial"), 3)
        ratio("restart, lpm", res.get("daemon_restart"), 1.5)
        ratio("restart, dir24", res.get("dir24", {}).get("restart"), 1.5)
        for figure, run in (("restart, lpm", res.get("daemon_restart")),
                            ("restart, dir24", res.get("dir24", {}).get("restart"))):
            if run:
                out.append((figure + ": map writes", str(run["sync"]["writes"]), "0", run["sync"]["writes"] == 0))
        peaks = [r["vmhwm_mib"] for r in (res.get("daemon_initial"), res.get("daemon_restart"),
                                          *res.get("dir24", {}).values()) if r and r.get("vmhwm_mib")]
        if peaks:
            out.append(("daemon peak RSS (every start measured)", f"{max(peaks):.0f} MiB", "<= 200 MiB",
                        max(peaks) <= 200))
        for phase in ("replace", "delete"):
            e = res.get("steady", {}).get(phase)
            if e is None:
                continue
            lag = e["probe_lag"]
            out.append((f"{phase} storm: maps keep up", f"{e['maps_vs_ip']:.2f}x, last change "
                        f"{e['tail_after_ip_ms']:.0f} ms after ip", ">= 1.0x (trail <= 250 ms)",
                        e["tail_after_ip_ms"] <= 250))
            if lag.get("probes"):
                out.append((f"{phase} storm: lag p99 / max", f"{lag['p99_ms']} / {lag['max_ms']} ms",
                            "<= 50 / 250 ms", lag["p99_ms"] <= 50 and lag["max_ms"] <= 250))
            out.append((f"{phase} storm: overruns", str(e["overruns"]), "0", e["overruns"] == 0))
        return out

    def report(self):
        targets = self.targets()
        self.res["targets"] = [dict(zip(("figure", "measured", "target", "met"), t)) for t in targets]
        headers = ("work", "routes", "seconds", "routes/s", "peak RSS MiB", "note")
        rows = [headers] + self.rows
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = []
        for j, r in enumerate(rows):
            lines.append("  ".join(r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i])
                                   for i in range(5)) + "  " + r[5])
            if j == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 4)
        print(f"wgbpf control-plane benchmark: {self.args.v4:,} IPv4 + {self.args.v6:,} IPv6 routes, "
              f"kernel {os.uname().release}, {os.cpu_count()} CPUs, total {self.res.get('total_seconds', '?')}s")
        print("\n".join(lines))
        if targets:
            w = [max(len(t[i]) for t in targets) for i in range(3)]
            print(f"\n{'target'.ljust(w[0])}  {'measured'.ljust(w[1])}  {'wanted'.ljust(w[2])}  met"
                  + ("  (the targets are a full table's: --quick is a smoke run)" if self.args.quick else ""))
            for figure, measured, target, met in targets:
                print(f"{figure.ljust(w[0])}  {measured.ljust(w[1])}  {target.ljust(w[2])}  {'yes' if met else 'NO'}")
        la = self.res.get("loadavg_start")
        if la and la[0] > 0.5 * (os.cpu_count() or 1):
            print(f"NOTE: load average {la[0]:.1f} at the start (end {self.res.get('loadavg_end', [0])[0]:.1f}) on "
                  f"{os.cpu_count()} CPUs: other work was running, absolute figures are low; compare ratios")
        if self.res.get("error"):
            print(f"INCOMPLETE: {self.res['error'][:300]}")
        self.res["table"] = [dict(zip(headers, r)) for r in self.rows]
        os.makedirs(RESULTS_DIR, exist_ok=True)
        path = os.path.join(RESULTS_DIR, self.args.json_name)
        with open(path, "w") as f:
            json.dump(self.res, f, indent=2)
        log(f"wrote {path}")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--v4", type=int, default=1_000_000, help="IPv4 routes (default 1,000,000)")
    ap.add_argument("--v6", type=int, default=200_000, help="IPv6 routes (default 200,000)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20,000 / 5,000 routes, 5,000 changes")
    ap.add_argument("--changes", type=int, default=50_000, help="steady-state replaces, then deletes")
    ap.add_argument("--singles", type=int, default=50, help="single adds timed to the map")
    ap.add_argument("--pyroute2-limit", type=int, default=100_000,
                    help="pyroute2 dump on at most this many IPv4 routes (a second netns when the "
                         "table is bigger); 0 skips it")
    ap.add_argument("--pyroute2-timeout", type=int, default=600)
    ap.add_argument("--chunk", type=int, default=100_000, help="lines per ip -batch file")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", action="store_true",
                    help="finally cProfile Daemon.full_sync into emptied maps (bench-results/sync-profile.txt)")
    ap.add_argument("--only", default="sync,storm,dir24", metavar="PARTS",
                    help="the parts to run, of sync (lpm first start and restart), storm (replaces, "
                         "deletes, single adds, maps == kernel) and dir24 (both starts in DIR-24-8 mode); "
                         "default all")
    ap.add_argument("--json-name", default="sync.json", help="file name under bench-results/")
    ap.add_argument("--nexthops", type=int, default=0, metavar="N",
                    help="install the table FRR's way: N nexthop objects a family (a tenth of them groups), "
                         "every route through one (nhid); parts sync, nhreplace")
    ap.add_argument("--compat", type=int, choices=(0, 1), default=1,
                    help="net.ipv4.nexthop_compat_mode with --nexthops (default 1, the kernel's)")
    a = ap.parse_args(argv)
    if a.quick:
        a.v4, a.v6, a.changes = 20_000, 5_000, 5_000
    if not set(a.only.split(",")) <= {"sync", "storm", "dir24", "nhreplace"}:
        ap.error(f"--only: {a.only!r}: parts are sync, storm, dir24 and nhreplace")
    if a.nexthops and not set(a.only.split(",")) <= {"sync", "nhreplace"}:
        ap.error("--nexthops: parts sync and nhreplace only (the storms replace routes by gateway)")
    if a.nexthops and a.nexthops < 10:
        ap.error("--nexthops: at least 10 (a tenth of them are groups)")
    if a.v4 < 1 or a.v6 < 0:
        ap.error("--v4 must be at least 1 and --v6 at least 0")
    return a


def main(argv):
    if argv and argv[0] == "_child":
        return child_main(argv[1:])
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench_sync: run as root (network namespaces, BPF)")
    for tool in ("ip",):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench_sync: needs {tool} on PATH")

    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    b = Bench(args)
    ok = False
    try:
        b.run()
        ok = True
    except KeyboardInterrupt:
        log("interrupted")
        b.res["error"] = "interrupted"
    except Exception as e:
        import traceback
        traceback.print_exc()
        b.res["error"] = repr(e)
    finally:
        log("cleaning up the namespace, pins and status files")
        b.cleanup()
    b.report()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

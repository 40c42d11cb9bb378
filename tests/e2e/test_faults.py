# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: the daemon under faults (issue 23, item 5).

Every scenario ends with the maps equal to the kernel (the kernel-origin
entries equal to what the kernel's routes say, and `ip route get` on
sampled addresses agreeing with the maps' longest match, "no peer"
included) and with no forged packet delivered during the fault: alice
pings carol from an address of bob's prefix (on her lo, `ping -I`) the
whole time; every such packet must be dropped at alice's member and
counted as `spoofed`, and carol's `tx_packets` must not grow.

Scenarios (seeded: WGBPF_FAULT_SEED, default 23):
  - kill -9 at 3 random points of the start sync of a restart that moves
    every one of 50k routes (installed with `ip -batch`): two in its map
    writes (from the first prefix written on; the maps left partial), one
    in the attach before it; then a restart converges;
  - kill -9 at 2 random points of a 50k-change route storm, then a restart;
  - kill -9 at 2 random points of a reload (SIGHUP), then a restart;
  - the run dir's filesystem full (a 256 KiB tmpfs, inodes and blocks
    used up, in a private mount namespace), before the daemon ever ran
    there and after: the daemon fails in one line (the first) or runs
    fail-closed, warning (the second), and converges once space is back;
  - the pin directory removed under a running daemon: it says
    "detached", `wgbpf attach` with the same peers repairs, it resyncs;
  - two daemons started at once: exactly one runs, the other exits
    non-zero with a one-line error.

Count (one per kill point, per run dir case, and one each for the other
two): 11 tried / 11 converged on this 2-core host, ~85 s for the module.
A run prints its own count at the end ("fault scenarios: tried N /
converged M", with -s), and where each kill landed.
"""
import contextlib
import ipaddress
import json
import os
import random
import re
import signal
import subprocess
import tempfile
import time

import pytest

from wgbtest import RUN_ID
from labutil import TIME_SCALE, WGBPF, Tail, kernel_view, lab_session, run
from wgbpf import abi
from wgbpf.maps import Maps

pytestmark = [pytest.mark.root, pytest.mark.e2e,
              pytest.mark.skipif(TIME_SCALE > 1 and os.environ.get("WGBPF_E2E_SLOW") != "1",
                                 reason="slow under emulation (run on the host; WGBPF_E2E_SLOW=1 runs it here)")]

SEED = int(os.environ.get("WGBPF_FAULT_SEED") or 23)
BULK = 50000  # routes of the start sync: 100.64.0.0/10 cut in /26s
STORM = 50000
SCENARIOS = {"tried": 0, "converged": 0}


def bulk_net(i):
    return ipaddress.ip_network(f"100.64.0.0/26").network_address + (i << 6)


@pytest.fixture(scope="module")
def lab():
    with lab_session(f"f{RUN_ID}", "ping", lookup="lpm") as lab:
        lab.drop_front_routes()
        lab.route_by_tag()
        lab.attach()
        lab.spoke("alice", "ip", "addr", "add", f"{FORGED}/32", "dev", "lo")
        try:
            yield lab
        finally:
            print(f"\nfault scenarios: tried {SCENARIOS['tried']} / converged {SCENARIOS['converged']}")
            lab.ip("route", "flush", "100.64.0.0/10", check=False)


FORGED = "10.2.0.99"  # inside bob's prefix: alice does not own it


@contextlib.contextmanager
def scenario():
    """One scenario: tried on entry, converged if the block ends well."""
    SCENARIOS["tried"] += 1
    yield
    SCENARIOS["converged"] += 1


class Daemon:
    """`wgbpf daemon` in the background (its own session, so a cleanup can
    kill its attach child too); its output in a log, read by complete lines."""

    def __init__(self, lab, prefix=(), env=None, wait=True):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="wgbpf-fault-", suffix=".log")
        self.tail = Tail(self.log.name)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([*prefix, *WGBPF, "--netns", lab.hub, "daemon", lab.front,
                                      *lab.peer_args(), "--lookup", lab.lookup],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=dict(os.environ, **(env or {})))
        if wait:
            try:
                self.wait_for("sync (start)")
            except BaseException:
                self.kill()
                raise

    def text(self):
        return self.tail.text(final=self.proc.poll() is not None)

    def wait_for(self, needle, timeout=60):
        deadline = time.monotonic() + timeout * TIME_SCALE
        while needle not in self.text():
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}:\n{self.text()}"
            assert time.monotonic() < deadline, f"no {needle!r} in daemon log:\n{self.text()}"
            time.sleep(0.02)
        return time.monotonic() - self.t0

    def kill9(self):
        """SIGKILL to the daemon alone (its attach child, if any, runs on)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def kill(self):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15 * TIME_SCALE)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # and whatever child it left


@contextlib.contextmanager
def daemons():
    """Every Daemon made in the block killed at its end, whatever happened."""
    made = []
    try:
        yield made
    finally:
        for d in made:
            d.stop()


def counters(lab):
    return lab.status()["counters"]["spoofed"], lab.peer("carol")["tx_packets"]


@contextlib.contextmanager
def no_forged_delivered(lab, status=None):
    """Alice pings carol from FORGED for the whole block: no reply, every
    request counted spoofed, none steered to carol."""
    status = status or (lambda: counters(lab))
    spoofed0, tx0 = status()
    ping = subprocess.Popen(["ip", "netns", "exec", lab.peers["alice"]["ns"], "ping", "-i", "0.05", "-W", "1",
                             "-I", FORGED, lab.peers["carol"]["host4"]],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield
        time.sleep(0.2)
    finally:
        ping.send_signal(signal.SIGINT)
        out = ping.communicate(timeout=10)[0]
    sent = int(re.search(r"(\d+) packets transmitted", out).group(1))
    spoofed1, tx1 = status()
    assert "ttl=" not in out, f"a forged packet got a reply:\n{out}"
    assert tx1 == tx0, f"carol's member sent {tx1 - tx0} packets during the fault"
    assert spoofed1 - spoofed0 >= max(1, sent - 2), (sent, spoofed0, spoofed1)


def peer_of_kernel(lab, info):
    """The peer names `ip route get`'s answer names: its gateway a tag on the
    front, or its device a member; [] for none."""
    if info is None:
        return []
    for name, p in lab.peers.items():
        if info.get("dev") == p["member"]:
            return [name]
        if info.get("dev") == lab.front and info.get("gateway") in (p["tag4"], p["tag6"]):
            return [name]
    return []


def samples(lab, rng, n=48):
    out = [p["host4"] for p in lab.peers.values()] + [FORGED]
    out += [str(bulk_net(rng.randrange(BULK + 2000)) + rng.randrange(1, 63)) for _ in range(n)]
    return out


def route_get_disagreements(lab, rng):
    bad = []
    with Maps.open(lab.pin_dir(), readonly=True) as m:
        names = {i: p.name.decode() for i, p in m.peers().items()}
        for addr in samples(lab, rng):
            r = lab.ip("-j", "route", "get", addr, check=False)
            info = json.loads(r.stdout)[0] if r.returncode == 0 and r.stdout.strip() else None
            if info is not None and info.get("type", "unicast") != "unicast":
                info = None  # blackhole, unreachable...: no peer
            hit = m.tries.lookup(addr)
            got = [] if hit is None else sorted(names[i] for i in m.route_peers(hit[1]))
            want = peer_of_kernel(lab, info)
            if got != want:
                bad.append((addr, got, want, r.stdout.strip() or r.stderr.strip()))
    return bad


def converge(lab, rng, timeout=45):
    """Until the maps equal the kernel (entries, and route get on samples)."""
    deadline = time.monotonic() + timeout * TIME_SCALE
    while True:
        want, have = kernel_view(lab)
        if want == have:
            bad = route_get_disagreements(lab, rng)
            if not bad:
                return len(want)
        else:
            diff = len(set(want.items()) ^ set(have.items()))
            bad = f"{diff} entries differ ({len(want)} in the kernel, {len(have)} in the maps)"
        assert time.monotonic() < deadline, f"maps != kernel: {bad if isinstance(bad, str) else bad[:5]}"
        time.sleep(0.2)


def via(lab, peer):
    return f"via {lab.peers[peer]['tag4']} dev {lab.front} onlink"


def batch(lab, lines):
    with tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False) as f:
        f.write("".join(line + "\n" for line in lines))
    return f.name


def table_lines(lab, shift, n=BULK, verb="replace", lo=0):
    """Routes lo..n-1, peers round robin from `shift`; every 97th a
    blackhole (a "no peer" entry)."""
    peers = list(lab.peers)
    out = []
    for i in range(lo, n):
        net = f"{bulk_net(i)}/26"
        out.append(f"route {verb} blackhole {net}" if i % 97 == 0 else
                   f"route {verb} {net} {via(lab, peers[(i + shift) % 3])}")
    return out


def install(lab, lines):
    path = batch(lab, lines)
    try:
        lab.ip("-batch", path)
    finally:
        os.unlink(path)


def restart_converges(lab, made, rng):
    """A daemon started after the fault: the maps end equal to the kernel."""
    d = Daemon(lab)
    made.append(d)
    n = converge(lab, rng)
    d.stop()
    return n


def test_kill9_during_the_start_sync(lab):
    rng = random.Random(SEED)
    install(lab, table_lines(lab, 0))
    with daemons() as made, no_forged_delivered(lab):
        Daemon(lab).stop()  # the maps filled
        install(lab, table_lines(lab, 1))
        made.append(Daemon(lab, wait=False))
        full = made[-1].wait_for("sync (start)")  # a restart that moves every prefix: how long it takes here
        took = float(re.search(r"sync \(start\):.* in ([\d.]+)s", made[-1].text()).group(1))
        made[-1].stop()
        for k in range(3):
            with scenario():
                install(lab, table_lines(lab, k + 2))  # every prefix moves: the restart has it all to write
                made.append(Daemon(lab, wait=False))
                if k < 2:  # a point of the sync's writes: from the first prefix written, on
                    first, peer = ipaddress.ip_network(f"{bulk_net(1)}/26"), list(lab.peers)[(1 + k + 2) % 3]
                    with Maps.open(lab.pin_dir(), readonly=True) as m:
                        pid = next(i for i, p in m.peers().items() if p.name.decode() == peer)
                        deadline = time.monotonic() + 30 * TIME_SCALE
                        while True:
                            r = m.tries.get_route(first)
                            if r is not None and m.route_peers(r) == [pid]:
                                break
                            assert made[-1].proc.poll() is None and time.monotonic() < deadline, made[-1].text()
                            time.sleep(0.001)
                    time.sleep(rng.uniform(0.0, 0.03))  # 50k writes take ~0.05 s here
                else:  # or before the sync (the attach)
                    time.sleep(rng.uniform(0.05, 1.0) * (full - took))
                at = time.monotonic() - made[-1].t0
                made[-1].kill9()
                want, have = kernel_view(lab)
                print(f"start sync {full - took:.2f}s+{took:.2f}s killed at {at:.2f}s: "
                      f"{sum(want.get(p) == v for p, v in have.items())} of {len(want)} entries right")
                assert restart_converges(lab, made, rng) >= BULK


def test_kill9_during_a_route_storm(lab):
    rng = random.Random(SEED + 1)
    install(lab, table_lines(lab, 0))
    with daemons() as made, no_forged_delivered(lab):
        for k in range(2):
            with scenario():
                made.append(Daemon(lab))
                # STORM changes: 30k prefixes moved, 10k deleted, 10k added past the table
                lines = table_lines(lab, k + 1, n=30000) + [f"route del {bulk_net(i)}/26" for i in range(30000, 40000)]
                lines += [f"route replace {bulk_net(BULK + i)}/26 {via(lab, 'bob')}"
                          for i in range(STORM - len(lines))]
                path = batch(lab, lines)
                try:
                    storm = subprocess.Popen(["ip", "-n", lab.hub, "-batch", path], stderr=subprocess.PIPE,
                                             text=True)
                    at = rng.uniform(0.02, 0.6)
                    time.sleep(at)
                    made[-1].kill9()
                    print(f"storm killed at {at:.2f}s, the storm {'running' if storm.poll() is None else 'done'}")
                    assert storm.wait(60) == 0, storm.stderr.read()
                finally:
                    os.unlink(path)
                restart_converges(lab, made, rng)
                install(lab, table_lines(lab, k, lo=30000, n=40000))  # the deleted come back


def test_kill9_during_a_reload(lab):
    rng = random.Random(SEED + 2)
    with daemons() as made, no_forged_delivered(lab):
        for k in range(2):
            with scenario():
                d = Daemon(lab)
                made.append(d)
                t0 = time.monotonic()
                d.proc.send_signal(signal.SIGHUP)
                d.wait_for("sync (config reload)")
                took = time.monotonic() - t0
                install(lab, table_lines(lab, k + 2, n=5000))
                d.proc.send_signal(signal.SIGHUP)  # a second reload, killed at a random point of it
                at = rng.uniform(0.0, 1.0) * took
                time.sleep(at)
                d.kill9()
                print(f"reload of {took:.2f}s killed at {at:.2f}s")
                restart_converges(lab, made, rng)


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "files-there"])
def test_run_dir_full(lab, fresh):
    """A 256 KiB tmpfs over a private run dir, in a mount namespace of its
    own (a holder process keeps it; the test reaches it through
    /proc/PID/root): inodes and blocks used up, either before the daemon
    ever ran there (fresh: no namespace directory) or after (its lock and
    status file there). The daemon fails in one line or runs on
    fail-closed; space back, a daemon converges and says running."""
    rng = random.Random(SEED + 3)
    mnt = tempfile.mkdtemp(prefix=f"wgbpf-full-{RUN_ID}-")
    holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                               f"mount -t tmpfs -o size=256k,nr_inodes=64,mode=0755 wgbpf-full {mnt}"
                               f" && echo mounted && exec sleep 600"], stdout=subprocess.PIPE, text=True)
    env = {"WGBPF_RUN_DIR": mnt}
    inside = ["nsenter", "-t", str(holder.pid), "-m", "--"]
    tracebacks = []
    try:
        assert holder.stdout.readline().strip() == "mounted"
        there = f"/proc/{holder.pid}/root{mnt}"

        def status():
            r = subprocess.run([*inside, "env", f"WGBPF_RUN_DIR={mnt}", *WGBPF, "--netns", lab.hub, "status",
                                "--front", lab.front, "--json"], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)

        def forged_counters():
            return status()["counters"]["spoofed"], lab.peer("carol")["tx_packets"]

        with daemons() as made:
            if not fresh:
                Daemon(lab, prefix=inside, env=env).stop()
            with scenario(), no_forged_delivered(lab, forged_counters):
                fill = os.path.join(there, "fill")
                with contextlib.suppress(OSError):  # inodes first, then blocks
                    for i in range(1000):
                        open(f"{fill}{i}", "w").close()
                with contextlib.suppress(OSError), open(f"{fill}0", "wb") as f:
                    while True:
                        f.write(b"\0" * 4096)
                        f.flush()
                install(lab, table_lines(lab, 1 if fresh else 2, n=3000))  # for the restart to write
                d = Daemon(lab, prefix=inside, env=env, wait=False)
                made.append(d)
                deadline = time.monotonic() + 30 * TIME_SCALE
                while d.proc.poll() is None and "sync (start)" not in d.text():
                    assert time.monotonic() < deadline, d.text()
                    time.sleep(0.05)
                text = d.text()
                lines = [x for x in text.splitlines() if x.strip()]
                if d.proc.poll() is not None:  # failed: in one line
                    print(f"run dir full: the daemon exits {d.proc.returncode}: {lines[-1:]}")
                    assert d.proc.returncode != 0, text
                    if "Traceback" in text:
                        tracebacks.append(lines[-1])
                    else:
                        assert len(lines) == 1, f"not one line:\n{text}"
                else:  # it runs: fail-closed (the forged ping around), no traceback
                    print(f"run dir full: the daemon runs: {lines}")
                    time.sleep(1.5)  # a status write or two meet the full disk
                    if "Traceback" in d.text():
                        tracebacks.append(d.text())
                for f in os.listdir(there):  # space back
                    if f.startswith("fill"):
                        os.unlink(os.path.join(there, f))
                if d.proc.poll() is not None:
                    made.append(Daemon(lab, prefix=inside, env=env))
                converge(lab, rng)
                deadline = time.monotonic() + 10 * TIME_SCALE  # and its status file written again
                while status().get("daemon", {}).get("state") != "running":
                    assert time.monotonic() < deadline, (status(), made[-1].text())
                    time.sleep(0.2)
    finally:
        holder.kill()
        holder.wait()
        with contextlib.suppress(OSError):
            os.rmdir(mnt)
    assert not tracebacks, f"ENOSPC in the run dir is a traceback, not one line: {tracebacks[0]}"


def test_pin_directory_removed_under_a_running_daemon(lab):
    rng = random.Random(SEED + 4)
    pins = lab.pin_dir()
    with daemons() as made, Maps.open(pins, readonly=True) as held:
        carol = next(i for i, p in held.peers().items() if p.name.decode() == "carol")

        def frozen():  # the maps the filters still run on, the pins gone
            return held.counters()[abi.Reason.SPOOFED], held.peer_stats(carol).tx_packets

        d = Daemon(lab)
        made.append(d)
        with scenario():
            with no_forged_delivered(lab, frozen):  # the filters run on, on the maps as they were
                for f in os.listdir(pins):
                    os.unlink(os.path.join(pins, f))
                os.rmdir(pins)
                d.wait_for("detached")
                install(lab, table_lines(lab, 2, n=2000))  # events meanwhile: nothing to write them to
                time.sleep(0.3)
                r = run(*WGBPF, "--netns", lab.hub, "status", "--check")
                assert r.returncode != 0, r.stdout
            lab.attach()  # the same peers: new pins, the daemon follows them
            with no_forged_delivered(lab):
                d.wait_for("maps replaced under the daemon")
                converge(lab, rng)
                install(lab, table_lines(lab, 0, n=2000))
                converge(lab, rng)
            assert d.proc.poll() is None, d.text()


def test_two_daemons_at_once(lab):
    rng = random.Random(SEED + 5)
    with daemons() as made, scenario(), no_forged_delivered(lab):
        made += [Daemon(lab, wait=False), Daemon(lab, wait=False)]
        deadline = time.monotonic() + 60 * TIME_SCALE
        while all(d.proc.poll() is None for d in made):
            assert time.monotonic() < deadline, [d.text() for d in made]
            time.sleep(0.05)
        loser = next(d for d in made if d.proc.poll() is not None)
        winner = next(d for d in made if d is not loser)
        assert loser.proc.returncode != 0
        text = loser.text()
        assert "Traceback" not in text and len([x for x in text.splitlines() if x.strip()]) == 1, text
        assert "already running" in text or "another wgbpf daemon" in text, text
        winner.wait_for("sync (start)")
        install(lab, table_lines(lab, 1, n=3000))
        converge(lab, rng)
        st = lab.status()["daemon"]
        assert st["state"] == "running" and st["pid"] == winner.proc.pid, st


def test_a_second_daemon_with_another_run_dir_is_refused(lab, tmp_path):
    """Issue 23: two daemons given different WGBPF_RUN_DIRs each took the
    same pins for theirs, and the second deleted the first's entries.
    The one-daemon lock lives on the pin directory: the second one is
    refused in one line, and the maps keep what the first wrote."""
    rng = random.Random(SEED + 6)
    other = tmp_path / "run"
    other.mkdir(mode=0o700)
    with daemons() as made, scenario(), no_forged_delivered(lab):
        made.append(Daemon(lab))
        install(lab, table_lines(lab, 1, n=300))
        converge(lab, rng)
        before = lab.dump()["routes"]
        second = Daemon(lab, env={"WGBPF_RUN_DIR": str(other)}, wait=False)
        made.append(second)
        assert second.proc.wait(60 * TIME_SCALE) != 0, second.text()
        text = second.text()
        assert "Traceback" not in text and len([x for x in text.splitlines() if x.strip()]) == 1, text
        assert "another wgbpf daemon follows the instance pinned at" in text, text
        assert lab.dump()["routes"] == before
        converge(lab, rng)
        assert lab.status()["daemon"]["pid"] == made[0].proc.pid

# SPDX-License-Identifier: GPL-2.0-or-later
"""Failover in the lab, shared by tests/e2e/test_liveness.py and
tests/bench/bench_failover.py:

        carol --- wg-carol   hub   wg-alice --- alice  (10.9.0.1 on alice's
          UDP flows to          wg0                     and bob's lan0: an
          10.9.0.1:9999     wg-bob --- bob              ECMP prefix over both)

carol sends N UDP flows (source ports 40000..) to 10.9.0.1 through the hub;
a sink on alice and on bob prints a line whenever a flow (re)appears there,
so a flow's moves between peers are seen where its packets land, with the
time (CLOCK_MONOTONIC is the same in every namespace). With echo, the sinks
answer every packet, as a ping or a TCP flow would be answered; without it
the stream is one-way, and a live peer's rx moves only when WireGuard's
passive keepalive answers it, every 10 s (a persistent keepalive is
postponed by every packet received, so it never fires during a stream). The spokes send a
persistent keepalive every second (LAB_KEEPALIVE=1); `lab.sh kill` kills a
spoke's wireguard-go, `lab.sh recreate` brings it back.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time

from labutil import LAB, WGBPF, DaemonProc, Tail, run

ANYCAST, PREFIX, PORT = "10.9.0.1", "10.9.0.0/16", 9999
GAP = 0.3  # a flow silent this long at a sink, then back: it (re)appeared

SINK = f"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {PORT}))
ECHO = sys.argv[1] == "echo"
last = {{}}
while True:
    data, addr = s.recvfrom(2048)
    if ECHO:
        try:
            s.sendto(data, addr)
        except OSError:
            pass  # our spoke's device is gone (killed) or not up yet
    port = addr[1]
    t = time.monotonic()
    if t - last.get(port, -1e9) > {GAP}:
        print(port, repr(t), flush=True)
    last[port] = t
"""

SENDER = f"""
import socket, sys, time
n, interval = int(sys.argv[1]), float(sys.argv[2])
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 40000 + i))
    socks.append(s)
due = time.monotonic()
while True:
    for s in socks:
        try:
            s.sendto(b"x" * 64, ("{ANYCAST}", {PORT}))
        except OSError:
            pass
    due += interval
    time.sleep(max(0.0, due - time.monotonic()))
"""


def via(lab, peer):
    return ["via", lab.peers[peer]["tag4"], "dev", lab.front, "onlink"]


class Failover:
    """The scenario on an up lab (brought up with LAB_KEEPALIVE=1)."""

    def __init__(self, lab, flows=16, interval=0.02, dead_after="2", echo=True, daemon_args=()):
        self.lab, self.flows, self.interval = lab, flows, interval
        self.procs = []
        for name in ("alice", "bob"):
            lab.spoke(name, "ip", "addr", "add", f"{ANYCAST}/32", "dev", "lan0")
        for name, p in lab.peers.items():  # sources by tag: the daemon writes them
            lab.ip("route", "replace", p["prefix4"], *via(lab, name))
        lab.ip("route", "replace", PREFIX, "nexthop", *via(lab, "alice"), "nexthop", *via(lab, "bob"))
        lab.attach()
        self.daemon = DaemonProc(lab.hub, "daemon", lab.front, *lab.peer_args(), "--lookup", lab.lookup,
                                 "--dead-after", dead_after, *daemon_args)
        self.logs = [self._start(name, SINK, "echo" if echo else "sink") for name in ("alice", "bob")]
        self.sinks = {name: Tail(log.name) for name, log in zip(("alice", "bob"), self.logs)}
        self._start("carol", SENDER, str(flows), str(interval))
        self.seen = []  # (time, sink, flow port) of the sinks' lines read so far

    def _start(self, peer, script, *args):
        out = tempfile.NamedTemporaryFile("w+", prefix=f"wgbpf-failover-{peer}-")
        p = subprocess.Popen(["ip", "netns", "exec", self.lab.peers[peer]["ns"], sys.executable, "-c", script,
                              *args], stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return out

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        self.daemon.stop()
        run(*WGBPF, "--netns", self.lab.hub, "detach", self.lab.front)

    def appearances(self, since=0.0):
        """[(time, sink, flow port)] of every (re)appearance after `since`, in time order."""
        for sink, tail in self.sinks.items():
            for line in tail.read():  # complete lines: the sink may be writing the next one
                port, _, t = line.partition(" ")
                if port.isdigit():  # not a warning, say
                    self.seen.append((float(t), sink, int(port)))
        return sorted(a for a in self.seen if a[0] > since)

    def where(self):
        """{flow port: the sink it last appeared at}."""
        return {port: sink for _t, sink, port in self.appearances()}

    def moves(self, since):
        """Flows that appeared at another sink than the one they were at
        before `since`."""
        before = {port: sink for t, sink, port in self.appearances() if t <= since}
        out = []
        for t, sink, port in self.appearances(since):
            if before.get(port, sink) != sink:
                out.append((t, port, before[port], sink))
            before[port] = sink
        return out

    def interruptions(self, since):
        """Flows that (re)appeared anywhere after `since`: each moved, or
        was lost for more than GAP seconds."""
        return self.appearances(since)

    def deaths(self):
        """Peers the daemon judged dead so far (its status file)."""
        return self.lab.status()["daemon"]["peer_deaths"]

    def settle(self, timeout=10.0):
        """Wait until every flow has appeared somewhere."""
        deadline = time.monotonic() + timeout
        while len(self.where()) < self.flows:
            assert time.monotonic() < deadline, f"only {len(self.where())} of {self.flows} flows arrive"
            time.sleep(0.1)

    def lab_sh(self, *args):
        r = subprocess.run(["bash", LAB, *args], env=self.lab.env, capture_output=True, text=True)
        assert r.returncode == 0, f"lab.sh {' '.join(args)}: {r.stderr}"

    def kill(self, peer, timeout=10.0):
        """Kill `peer`'s WireGuard; returns (seconds until every flow it
        carried arrived at the other sink (None: not within timeout), the
        flows it carried)."""
        on = [port for port, sink in self.where().items() if sink == peer]
        t_kill = self._kill(self.lab.peers[peer]["spoke_dev"])
        deadline = t_kill + timeout
        while True:
            moved = {port: t for t, port, _a, _b in self.moves(t_kill) if port in on}
            if len(moved) == len(on):
                return (max(moved.values()) - t_kill if on else 0.0), on
            if time.monotonic() > deadline:
                return None, on
            time.sleep(0.02)

    def _kill(self, dev):
        """Kill dev's WireGuard; returns when it died. wireguard-go is killed
        from here (SIGKILL), so the time is not a shell's start-up late."""
        if self.lab.info["wg"] != "go":
            t = time.monotonic()
            self.lab_sh("kill", dev)
            return t
        with open(f"/run/wgbpf-lab/{self.lab.id or 'default'}/{dev}.pid") as fh:
            pid = int(fh.read())
        with open(f"/proc/{pid}/comm") as fh:
            assert fh.read().strip() == "wireguard-go", f"pid {pid} is not {dev}'s wireguard-go"
        t = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        return t

    def revive(self, peer, flows, timeout=15.0):
        """Start `peer`'s WireGuard again; returns the seconds until the
        flows it had carried were back on it (None: not within timeout)."""
        t0 = time.monotonic()
        self.lab_sh("recreate", self.lab.peers[peer]["spoke_dev"])
        deadline = t0 + timeout
        while True:
            back = {port: t for t, port, _a, sink in self.moves(t0) if port in flows and sink == peer}
            if len(back) == len(flows):
                return (max(back.values()) - t0) if flows else 0.0
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

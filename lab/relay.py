# SPDX-License-Identifier: GPL-2.0-or-later
"""A UDP relay that delays and drops datagrams: the lab's link-quality knob
(these machines have no sch_netem).

    spoke's WireGuard --> LISTEN (relay) --> TO (the hub's member)
                      <--               <--

Put between a spoke's endpoint and its hub member: the spoke's endpoint is
set to LISTEN, the member's to INNER, the relay's socket toward TO (the
member's listen address). WireGuard roams to the last source of an
authenticated packet, so each side must see only the relay: what the
member sends to INNER goes on to BACK (the spoke's own address; by
default the last one LISTEN heard from), from LISTEN. Each datagram, both
ways, waits DELAY ms (+ a uniform jitter) and is dropped with probability
LOSS, from the control file as it is now: a line `DELAY_MS LOSS [JITTER_MS]`,
re-read when it changes (write it whole and rename it into place).

Bounded whatever it is told: at most --max-pps datagrams a second each way
(more are dropped and counted) and --lifetime seconds in all, so a relay
a test forgot cannot run on. Counters go to stderr on exit.

    relay.py --listen 198.18.2.1:52002 --inner 198.18.2.1:52102 \
             --to 198.18.2.1:51802 --back 198.18.2.2:51900 --control /tmp/x.ctl
"""
import argparse
import heapq
import os
import random
import select
import socket
import sys
import time


def addr(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give HOST:PORT")
    return host.strip("[]"), int(port)


class Knob:
    """The control file's delay, loss and jitter, re-read on change."""

    def __init__(self, path):
        self.path = path
        self.mtime = None
        self.delay = self.loss = self.jitter = 0.0

    def read(self):
        if self.path is None:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if st.st_mtime_ns == self.mtime:
            return
        with open(self.path) as f:
            words = f.read().split()
        if len(words) not in (2, 3):
            return  # half written: the next read takes it
        self.mtime = st.st_mtime_ns
        delay, loss = float(words[0]), float(words[1])
        jitter = float(words[2]) if len(words) == 3 else 0.0
        if delay < 0 or jitter < 0 or not 0 <= loss <= 1:
            raise SystemExit(f"relay: bad control line {' '.join(words)!r}: DELAY_MS>=0 0<=LOSS<=1 [JITTER_MS>=0]")
        self.delay, self.loss, self.jitter = delay / 1000, loss, jitter / 1000


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=addr, required=True)
    ap.add_argument("--to", type=addr, required=True)
    ap.add_argument("--inner", type=addr, help="the member-facing socket's address (default: LISTEN's host, any port)")
    ap.add_argument("--back", type=addr, help="the spoke's address (default: the last LISTEN heard from)")
    ap.add_argument("--control", help="file with `DELAY_MS LOSS [JITTER_MS]`")
    ap.add_argument("--max-pps", type=int, default=20000)
    ap.add_argument("--lifetime", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args(argv)
    fam = socket.AF_INET6 if ":" in a.listen[0] else socket.AF_INET
    outer = socket.socket(fam, socket.SOCK_DGRAM)  # the spoke's side
    outer.bind(a.listen)
    inner = socket.socket(fam, socket.SOCK_DGRAM)  # the member's side
    inner.bind(a.inner or (a.listen[0], 0))
    knob = Knob(a.control)
    knob.read()
    rng = random.Random(a.seed)
    spoke = a.back  # where the spoke's side is: given, or the last heard from
    queue = []    # (due, seq, socket, data, destination)
    seq = 0
    count = {"in": 0, "out": 0, "lost": 0, "over_rate": 0}
    window, sent_in_window = int(time.monotonic()), {"in": 0, "out": 0}
    end = time.monotonic() + a.lifetime
    print(f"relay: {a.listen[0]}:{a.listen[1]} <-> {a.to[0]}:{a.to[1]}", file=sys.stderr, flush=True)
    while time.monotonic() < end:
        now = time.monotonic()
        timeout = min(0.2, max(0.0, queue[0][0] - now)) if queue else 0.2
        ready, _, _ = select.select([outer, inner], [], [], timeout)
        now = time.monotonic()
        if int(now) != window:
            window, sent_in_window = int(now), {"in": 0, "out": 0}
        knob.read()
        for s in ready:
            data, src = s.recvfrom(65535)
            way = "in" if s is outer else "out"
            if s is outer:
                spoke = a.back or src
                dst, via = a.to, inner
            elif spoke is None:
                continue
            else:
                dst, via = spoke, outer
            if sent_in_window[way] >= a.max_pps:
                count["over_rate"] += 1
                continue
            sent_in_window[way] += 1
            count[way] += 1
            if knob.loss and rng.random() < knob.loss:
                count["lost"] += 1
                continue
            due = now + knob.delay + (rng.uniform(0, knob.jitter) if knob.jitter else 0.0)
            seq += 1
            heapq.heappush(queue, (due, seq, via, data, dst))
        while queue and queue[0][0] <= time.monotonic():
            _due, _seq, via, data, dst = heapq.heappop(queue)
            try:
                via.sendto(data, dst)
            except OSError:
                count["lost"] += 1
    print("relay: " + ", ".join(f"{k} {v}" for k, v in count.items()), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

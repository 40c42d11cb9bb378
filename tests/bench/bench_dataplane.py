#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Data-plane benchmark: what steering and the source check cost per packet,
against one bpf_fib_lookup, at internet table sizes; kernel memory per
prefix; and real throughput through the lab.

Run as root (make bench). One run measures, side by side:

  1  In a throwaway network namespace (a TUN front and four TUN members,
     forwarding on, wgbpf attached in DIR-24-8 mode so that its arrays get
     their full size, peers tagged 100.64.0.i and fe80::i), the same
     internet-like prefixes go into the kernel FIB (`ip -batch`,
     `via <tag> dev <front> onlink`) and into wgbpf's routes4 map, at IPv4
     table sizes 0, 1k, 100k and 1M, then 200k IPv6; at each IPv4 size the
     DIR-24-8 arrays are compiled from routes4 as attach does.
  2  wgbpf.c is compiled once more with BENCH_PREFIX/BENCH_SUFFIX: the
     WGBPF_BENCH_DST/SRC hooks overwrite the parsed address with one drawn
     at random (bpf_get_prandom_u32) from 65,536 addresses of the table, and
     the suffix adds two bench programs: bench_floor (parse + draw) and
     bench_fib (one bpf_fib_lookup).
  3  front_egress and member_ingress (strict) run in each lookup mode
     (config.lookup switched between lpm, fib and dir24; dir24 is IPv4
     only), with bench_floor and bench_fib, through BPF_PROG_TEST_RUN:
     median of 3 runs of --repeat packets, the methods interleaved within
     each round so that noise from other work on the machine hits all of
     them alike, for one repeated address (cache-hot) and for random
     addresses of the table.
  4  Slab (SReclaimable + SUnreclaim) and Percpu from /proc/meminfo around
     each fill of the kernel FIB and of the LPM maps, the maps' memlock,
     and the memlock of the DIR-24-8 arrays (fixed, whatever the table).
  5  iperf3 (3 runs x 3 s) and ping (50 x 0.05 s) between two spokes of
     lab/lab.sh, alternating: wgbpf LPM, wgbpf FIB, and the baseline
     without wgbpf (hub routes straight to the member devices).

Progress goes to stderr, tables to stdout, everything to
bench-results/dataplane.json and a plot to bench-results/dataplane.png. The
namespace, the pins and the lab are removed at the end, also on error.

    bench_dataplane.py [--quick] [--no-lab] [--repeat N] [--rounds N]

Not a test: pytest must never collect it (its name is bench_*.py).
"""
import argparse
import contextlib
import ctypes
import ipaddress
import json
import os
import random
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
for p in (REPO, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

from benchutil import gen_v4, gen_v6, log, prefix_text, sh, v4_ok  # noqa: E402
from wgbpf import nsenter  # noqa: E402

NPEERS = 4
RESULTS_DIR = os.path.join(REPO, "bench-results")
LAB = os.path.join(REPO, "lab", "lab.sh")
NADDR = 65536                 # addresses the programs draw from (& 0xffff)
SKB_CTX_SIZE = 192            # sizeof(struct __sk_buff)
SKB_CTX_IFINDEX = 40          # offsetof(struct __sk_buff, ifindex)

# -- the programs ---------------------------------------------------------------

BENCH_PREFIX = r"""
/* ---- tests/bench/bench_dataplane.py: before wgbpf.c ---- */
struct bench_addr {
	unsigned char a[16];
};
/* Addresses the hooks draw from: destinations for front_egress and the
 * bench programs, sources for member_ingress. */
BPF_ARRAY(bench_dst, struct bench_addr, 65536);
BPF_ARRAY(bench_src, struct bench_addr, 65536);

static __always_inline void bench_draw_dst(unsigned char *to)
{
	unsigned int k = bpf_get_prandom_u32() & 0xffff;
	struct bench_addr *a = bench_dst.lookup(&k);
	if (a)
		__builtin_memcpy(to, a->a, 16);
}

static __always_inline void bench_draw_src(unsigned char *to)
{
	unsigned int k = bpf_get_prandom_u32() & 0xffff;
	struct bench_addr *a = bench_src.lookup(&k);
	if (a)
		__builtin_memcpy(to, a->a, 16);
}

#define WGBPF_BENCH_DST(p) bench_draw_dst((p)->dst)
#define WGBPF_BENCH_SRC(p) bench_draw_src((p)->src)
/* ---- end of the bench prefix ---- */
"""

BENCH_SUFFIX = r"""
/* ---- tests/bench/bench_dataplane.py: after wgbpf.c ---- */
#define BENCH_HIT 0
#define BENCH_MISS 1
#define BENCH_FLOOR 2
#define BENCH_ERROR 3

BPF_PERCPU_ARRAY(bench_hits, u64, 4);

static __always_inline void bench_count(__u32 i)
{
	u64 *c = bench_hits.lookup(&i);
	if (c)
		*c += 1;
}

/* parse + the random draw, nothing else: what every figure is taken over */
int bench_floor(struct __sk_buff *skb)
{
	struct packet p = {};

	if (parse(skb, &p) < 0)
		return TC_ACT_SHOT;
	WGBPF_BENCH_DST(&p);
	/* read what was drawn, so the copy is not optimised away */
	bench_count(p.dst[15] == 0xee && p.dst[0] == 0xee ? BENCH_MISS : BENCH_FLOOR);
	return TC_ACT_OK;
}

/* parse + draw + exactly one bpf_fib_lookup on the destination */
int bench_fib(struct __sk_buff *skb)
{
	struct packet p = {};
	struct bpf_fib_lookup fib = {};
	int rc;

	if (parse(skb, &p) < 0)
		return TC_ACT_SHOT;
	WGBPF_BENCH_DST(&p);
	fib.family = p.family;
	fib.l4_protocol = p.proto;
	fib.sport = p.sport;
	fib.dport = p.dport;
	fib.tot_len = skb->len;
	fib.ifindex = skb->ifindex;
	if (p.family == AF_INET) {
		__builtin_memcpy(&fib.ipv4_src, p.src, 4);
		__builtin_memcpy(&fib.ipv4_dst, p.dst, 4);
	} else {
		__builtin_memcpy(fib.ipv6_src, p.src, 16);
		__builtin_memcpy(fib.ipv6_dst, p.dst, 16);
	}
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib),
			    WGBPF_FIB_LOOKUP_DIRECT | WGBPF_FIB_LOOKUP_SKIP_NEIGH);
	if (rc < 0 || rc == BPF_FIB_LKUP_RET_FWD_DISABLED)
		bench_count(BENCH_ERROR);
	else if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		bench_count(BENCH_HIT);
	else
		bench_count(BENCH_MISS);
	return TC_ACT_OK;
}

/* ---- end of the bench suffix ---- */
"""

BENCH_PROGS = ("bench_floor", "bench_fib")

# name: (program, lookup mode for config.lookup or None, ctx device, what it is)
METHODS = {
    "floor": ("bench_floor", None, "front", "parse + random draw (subtracted from the rest)"),
    "egress_lpm": ("front_egress", "lpm", "front", "front_egress, LPM mode"),
    "egress_fib": ("front_egress", "fib", "front", "front_egress, FIB mode"),
    "ingress_lpm": ("member_ingress", "lpm", "member", "member_ingress strict, LPM mode"),
    "ingress_fib": ("member_ingress", "fib", "member", "member_ingress strict, FIB mode"),
    "fib_lookup": ("bench_fib", None, "front", "one bpf_fib_lookup"),
    "egress_dir24": ("front_egress", "dir24", "front", "front_egress, DIR-24-8 mode"),
    "ingress_dir24": ("member_ingress", "dir24", "member", "member_ingress strict, DIR-24-8 mode"),
}
V6_METHODS = ("floor", "egress_lpm", "egress_fib", "ingress_lpm", "ingress_fib", "fib_lookup")

# -- helpers -------------------------------------------------------------------




def meminfo():
    """{field: bytes} of the fields that move with routes."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k in ("Slab", "SReclaimable", "SUnreclaim", "Percpu", "MemAvailable"):
                out[k] = int(v.split()[0]) * 1024
    return out


def mem_delta(before, after):
    d = {k: after[k] - before[k] for k in ("SReclaimable", "SUnreclaim", "Percpu")}
    d["slab"] = d["SReclaimable"] + d["SUnreclaim"]
    d["total"] = d["slab"] + d["Percpu"]
    return d


def settle():
    """Let RCU callbacks of earlier work run before reading /proc/meminfo."""
    time.sleep(1.0)


def memlock(fd):
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    return None


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


# -- addresses to look up ------------------------------------------------------


def random_public_v4(rng):
    while True:
        a = rng.getrandbits(32)
        if v4_ok(a):
            return a


def addr_in(rng, a, plen, bits):
    return a | (rng.getrandbits(bits - plen) if plen < bits else 0)


# -- the namespace under test ---------------------------------------------------


class Net:
    """A namespace with a TUN front and NPEERS TUN members, wgbpf attached
    (LPM mode) and the bench programs compiled against its maps."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.ns = f"wgbd-{tag}"
        self.front = f"bdf{tag}"
        self.members = [f"bdm{tag}{i}" for i in range(NPEERS)]
        self.peer_names = [f"p{i}" for i in range(NPEERS)]
        self.pin_dir = None
        self.maps = None
        self.bpf = None
        self.fds = {}
        self.created = False
        self.attached = False

    def tag4(self, i):
        return f"100.64.0.{i + 1}"

    def tag6(self, i):
        return f"fe80::{i + 1}"

    def up(self):
        from wgbpf import abi, config, dataplane, maps as mapsmod
        sh("ip", "netns", "add", self.ns)
        self.created = True
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        for k in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                  "net.ipv6.conf.default.forwarding=1", "net.ipv4.conf.all.send_redirects=0"):
            sh("ip", "netns", "exec", self.ns, "sysctl", "-qw", k)
        for dev in [self.front] + self.members:
            sh("ip", "-n", self.ns, "tuntap", "add", "dev", dev, "mode", "tun")
            sh("ip", "-n", self.ns, "link", "set", dev, "up")
        for fam in ("ipv4", "ipv6"):
            sh("ip", "netns", "exec", self.ns, "sysctl", "-qw", f"net.{fam}.conf.{self.front}.forwarding=1")
        with nsenter.entered(self.ns):
            self.ifindex = {d: socket.if_nametoindex(d) for d in [self.front] + self.members}
        # attached in DIR-24-8 mode, so its arrays get their full size; the
        # measurements switch config.lookup between the modes
        cfg = config.Config(front=self.front, peers=[
            config.PeerConfig(self.peer_names[i], self.members[i],
                              [ipaddress.ip_address(self.tag4(i)), ipaddress.ip_address(self.tag6(i))])
            for i in range(NPEERS)], lookup=abi.Lookup.DIR24)
        config.validate(cfg)
        self.pin_dir = mapsmod.pin_dir(self.front, self.ns)
        t0 = time.perf_counter()
        with nsenter.entered(self.ns):
            dataplane.attach(cfg)
        self.attached = True
        log(f"attached wgbpf to {self.front} in {self.ns} ({time.perf_counter() - t0:.1f}s)")
        self.maps = mapsmod.Maps.open(self.pin_dir)
        by_name = {p.name.decode(): pid for pid, p in self.maps.peers().items()}
        self.peer_ids = [by_name[n] for n in self.peer_names]

        t0 = time.perf_counter()
        from bcc import BPF
        self.bpf, fds = dataplane.compile_programs(self.pin_dir, prefix=BENCH_PREFIX, suffix=BENCH_SUFFIX)
        self.fds = dict(fds)
        for name in BENCH_PROGS:
            self.fds[name] = self.bpf.load_func(name.encode(), BPF.SCHED_CLS).fd
        self.compile_seconds = time.perf_counter() - t0
        log(f"compiled the bench programs ({self.compile_seconds:.1f}s)")
        self.map_fd = {name: self.bpf[name].map_fd for name in
                       ("bench_dst", "bench_src", "bench_hits")}
        self.lookup_mode = None

    def down(self):
        from wgbpf import dataplane
        errors = []
        if self.maps is not None:
            with contextlib.suppress(Exception):
                self.maps.close()
        if self.bpf is not None:
            with contextlib.suppress(Exception):
                self.bpf.cleanup()
        if self.attached:
            try:
                with nsenter.entered(self.ns):
                    dataplane.detach(self.front)
            except Exception as e:
                errors.append(f"detach: {e}")
        if self.pin_dir and os.path.isdir(self.pin_dir):
            shutil.rmtree(self.pin_dir, ignore_errors=True)
        if self.created:
            r = sh("ip", "netns", "del", self.ns, check=False)
            if r.returncode:
                errors.append(f"netns del: {r.stderr.strip()}")
        return errors

    # -- state ---------------------------------------------------------------
    def set_lookup(self, mode):
        from wgbpf import abi
        if mode is None or mode == self.lookup_mode:
            return
        c = self.maps.config()
        c.lookup = int({"lpm": abi.Lookup.LPM, "fib": abi.Lookup.FIB, "dir24": abi.Lookup.DIR24}[mode])
        self.maps.set_config(c)
        self.lookup_mode = mode

    def fill_addrs(self, which, addrs, v6):
        """Write the 65,536 addresses a hook draws from (ints)."""
        from wgbpf import bpfsys
        n = len(addrs)
        assert n == NADDR
        keys = (ctypes.c_uint32 * n)(*range(n))
        vals = ((ctypes.c_uint8 * 16) * n)()
        size = 16 if v6 else 4
        for i, a in enumerate(addrs):
            ctypes.memmove(vals[i], a.to_bytes(size, "big"), size)
        bpfsys.update_batch(self.map_fd[which], keys, vals)

    def counters(self):
        return {r.name.lower(): v for r, v in self.maps.counters().items()}

    def hits(self):
        from wgbpf import bpfsys
        ncpu = bpfsys.possible_cpus()
        out = []
        for i in range(4):
            buf = (ctypes.c_uint64 * ncpu)()
            bpfsys.lookup(self.map_fd["bench_hits"], ctypes.c_uint32(i), buf)
            out.append(sum(buf))
        return dict(zip(("hit", "miss", "floor", "error"), out))

    def lpm_peer(self, addr, v6):
        """The peer ids of the longest match in routes4/routes6 (tuple)."""
        from wgbpf import abi, bpfsys
        if v6:
            k = abi.Key6(prefixlen=128)
            ctypes.memmove(k.addr, addr.to_bytes(16, "big"), 16)
            fd = self.maps.fds["routes6"]
        else:
            k = abi.Key4(prefixlen=32)
            ctypes.memmove(k.addr, addr.to_bytes(4, "big"), 4)
            fd = self.maps.fds["routes4"]
        r = abi.Route()
        if not bpfsys.lookup(fd, k, r):
            return ()
        return tuple(self.maps.sets.members(r.set))

    def test_run(self, prog, frame, repeat, device):
        from wgbpf import bpfsys
        ctx = bytearray(SKB_CTX_SIZE)
        struct.pack_into("=I", ctx, SKB_CTX_IFINDEX, self.ifindex[device])
        retval, duration, _ = bpfsys.test_run(self.fds[prog], frame, repeat, bytes(ctx))
        return retval, duration


# -- routes into the kernel and the maps ------------------------------------------


def kernel_insert(net, prefixes, start, v6, tmp):
    """ip -batch `route add` of prefixes (numbered from `start`: prefix j
    goes to peer j % NPEERS); returns seconds."""
    chunk = 100_000
    files = []
    for c in range(0, len(prefixes), chunk):
        path = os.path.join(tmp, f"routes-{'6' if v6 else '4'}-{start + c}")
        with open(path, "w") as f:
            for j, (a, plen) in enumerate(prefixes[c:c + chunk], start + c):
                i = j % NPEERS
                if v6:
                    f.write(f"route add {prefix_text(a, plen, True)} via {net.tag6(i)} dev {net.front}\n")
                else:
                    f.write(f"route add {prefix_text(a, plen, False)} via {net.tag4(i)} dev {net.front} onlink\n")
        files.append(path)
    t0 = time.perf_counter()
    for path in files:
        sh("ip", "-n", net.ns, *(["-6"] if v6 else []), "-batch", path)
    dt = time.perf_counter() - t0
    for path in files:
        os.unlink(path)
    return dt


def maps_insert(net, prefixes, start, v6):
    """The same prefixes into routes4/routes6 with Tries.apply (batches)."""
    from wgbpf import sync
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    size = 16 if v6 else 4
    from wgbpf.setmaps import KernelSets
    sets = KernelSets(net.maps.sets)  # one set a peer, as the daemon interns them
    sid = [sets.interned((net.peer_ids[i],)) for i in range(NPEERS)]
    d = sync.Diff()
    for j, (a, plen) in enumerate(prefixes, start):
        d.put[sync.pkey(fam, a.to_bytes(size, "big"), plen)] = sid[j % NPEERS]
    t0 = time.perf_counter()
    net.maps.tries.apply(d)
    return time.perf_counter() - t0


# -- packets ---------------------------------------------------------------------


def frame4(src, dst):
    udp = struct.pack("!HHHH", 40000, 443, 8 + 18, 0) + bytes(18)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x1234, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return bytes(12) + struct.pack("!H", 0x0800) + ip + udp


def frame6(src, dst):
    udp = struct.pack("!HHHH", 40000, 443, 8 + 18, 0) + bytes(18)
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64,
                     socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst))
    return bytes(12) + struct.pack("!H", 0x86DD) + ip + udp


# -- addresses ---------------------------------------------------------------------


def pick_addresses(net, rng, prefixes, v6, target):
    """65,536 destinations drawn from the table, and 65,536 sources whose
    longest match names only peer `target` (what member_ingress strict on
    that peer's member accepts). Returns (dst, src, src_valid_fraction)."""
    bits = 128 if v6 else 32
    n = len(prefixes)
    if n == 0:
        dst = [random_public_v4(rng) if not v6 else (0x2 << 124) | rng.getrandbits(124)
               for _ in range(NADDR)]
        return dst, list(dst), 0.0
    dst = []
    for _ in range(NADDR):
        a, plen = prefixes[rng.randrange(n)]
        dst.append(addr_in(rng, a, plen, bits))
    tid = net.peer_ids[target]
    mine = [prefixes[j] for j in range(target, n, NPEERS)]
    src, tries = [], 0
    while len(src) < NADDR and tries < 4 * NADDR and mine:
        tries += 1
        a, plen = mine[rng.randrange(len(mine))]
        x = addr_in(rng, a, plen, bits)
        if net.lpm_peer(x, v6) == (tid,):
            src.append(x)
    valid = len(src)
    if not src:
        src = list(dst)
    while len(src) < NADDR:
        src.append(src[len(src) % max(valid, 1)])
    return dst, src, valid / NADDR


# -- measuring ----------------------------------------------------------------------


def summarize(delta, total):
    """Counter deltas as {reason: fraction} (fractions of `total` runs)."""
    return {k: round(v / total, 4) for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v}


def verdict_text(v):
    if not v:
        return "-"
    k, f = next(iter(v.items()))
    return f"{k} {f * 100:.0f}%" + ("" if f >= 0.995 else " +")


def measure(net, methods, frame, repeat, rounds, target_member):
    """{method: {"runs": [ns...], "ns": median, "verdicts": {...}}}, the
    methods interleaved within each round (their order rotated per round)."""
    res = {m: {"runs": [], "verdicts": {}} for m in methods}
    order = list(methods)
    for rnd in range(rounds):
        for m in order[rnd % len(order):] + order[:rnd % len(order)]:
            prog, mode, dev, _ = METHODS[m]
            net.set_lookup(mode or "lpm")
            device = net.front if dev == "front" else target_member
            c0, h0 = net.counters(), net.hits()
            with nsenter.entered(net.ns):
                _, ns = net.test_run(prog, frame, repeat, device)
            c1, h1 = net.counters(), net.hits()
            res[m]["runs"].append(ns)
            delta = {k: c1[k] - c0[k] for k in c1}
            delta.update({f"bench_{k}": h1[k] - h0[k] for k in h1})
            res[m]["verdicts"] = summarize(delta, repeat)
    net.set_lookup("lpm")
    for m in methods:
        res[m]["ns"] = statistics.median(res[m]["runs"])
    return res


def add_over_floor(res):
    floor = res["floor"]["ns"]
    for m, r in res.items():
        r["over_floor"] = r["ns"] - floor if m != "floor" else 0
    return res


def ratios(res):
    """Steer + source check per mode over one bpf_fib_lookup (goal <= 2)."""
    fib = res["fib_lookup"]["over_floor"]
    out = {"fib_lookup_over_floor": fib}
    if fib <= 0:
        return out

    def r(x):
        return round(x / fib, 3)
    out["lpm"] = r(res["egress_lpm"]["over_floor"] + res["ingress_lpm"]["over_floor"])
    out["fib"] = r(res["egress_fib"]["over_floor"] + res["ingress_fib"]["over_floor"])
    if "egress_dir24" in res:
        out["dir24_mode"] = r(res["egress_dir24"]["over_floor"] + res["ingress_dir24"]["over_floor"])
    return out


# -- the lab: iperf3 and ping ----------------------------------------------------------


class LabRun:
    def __init__(self):
        self.id = "bd" + uuid.uuid4().hex[:3]
        self.env = dict(os.environ, LAB_ID=self.id, LAB_WG=os.environ.get("WGBPF_LAB_WG", "go"))
        self.info = json.loads(sh("bash", LAB, "info", env=self.env).stdout)
        self.hub = self.info["hub_ns"]
        self.front = self.info["front"]
        self.peers = {p["name"]: p for p in self.info["peers"]}
        self.server = None
        self.attached = False
        self.mode = None

    def wgbpf(self, *args, check=True):
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return sh(sys.executable, "-m", "wgbpf.cli", "--netns", self.hub, *args, check=check, env=env)

    def peer_args(self):
        out = []
        for name, p in self.peers.items():
            out += ["--peer", f"{name}={p['member']},{p['tag4']},{p['tag6']}"]
        return out

    def up(self):
        sh("bash", LAB, "down", env=self.env, check=False)
        sh("bash", LAB, "up", env=self.env)
        bob = self.peers["bob"]
        # `ip netns exec` execs iperf3 itself: this pid is the server's
        self.server = subprocess.Popen(["ip", "netns", "exec", bob["ns"], "iperf3", "-s"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def down(self):
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait()
        if self.attached:
            self.wgbpf("detach", self.front, check=False)
        from wgbpf import maps as mapsmod
        with contextlib.suppress(OSError):  # per namespace: while the hub is there
            shutil.rmtree(mapsmod.pin_dir(self.front, self.hub), ignore_errors=True)
        sh("bash", LAB, "down", env=self.env, check=False)

    def hub_routes(self, how):
        for name, p in self.peers.items():
            if how == "front":
                via = ["dev", self.front]
            elif how == "tag":
                via = ["via", p["tag4"], "dev", self.front, "onlink"]
            else:
                via = ["dev", p["member"]]
            sh("ip", "-n", self.hub, "route", "replace", p["prefix4"], *via)

    def set_mode(self, mode):
        """baseline: no wgbpf, hub routes to the members; lpm: wgbpf (LPM)
        with `wgbpf route add`; fib: wgbpf in FIB mode, hub routes via tags."""
        t0 = time.perf_counter()
        if mode == "baseline":
            if self.attached:
                self.wgbpf("detach", self.front)
                self.attached = False
            self.hub_routes("member")
        elif mode == "lpm":
            self.wgbpf("attach", self.front, *self.peer_args(), "--lookup", "lpm")
            self.attached = True
            for name, p in self.peers.items():
                self.wgbpf("route", "add", p["prefix4"], name, "--front", self.front)
            self.hub_routes("front")
        elif mode == "fib":
            self.wgbpf("attach", self.front, *self.peer_args(), "--lookup", "fib")
            self.attached = True
            self.hub_routes("tag")
        self.mode = mode
        return time.perf_counter() - t0

    def bob_tx_bytes(self):
        if not self.attached:
            return None
        d = json.loads(self.wgbpf("dump", "--front", self.front, "--json").stdout)
        return next(p["tx_bytes"] for p in d["peers"] if p["name"] == "bob")

    def spoke(self, name, *cmd, timeout=60):
        return sh("ip", "netns", "exec", self.peers[name]["ns"], *cmd, check=False, timeout=timeout)

    def ping(self, count=50, interval="0.05"):
        r = self.spoke("alice", "ping", "-q", "-c", str(count), "-i", interval, "-W", "2",
                       self.peers["bob"]["host4"])
        m = re.search(r"(\d+)% packet loss", r.stdout)
        rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", r.stdout)
        out = {"loss_pct": float(m.group(1)) if m else None}
        if rtt:
            out.update(zip(("min_ms", "avg_ms", "max_ms", "mdev_ms"), map(float, rtt.groups())))
        return out

    def member_tx(self, name):
        """(packets, bytes) the hub sent out of a peer's member device: a
        GSO super-packet counts once, so bytes/packets shows whether the
        path kept them whole."""
        j = json.loads(sh("ip", "-n", self.hub, "-j", "-s", "link", "show", "dev",
                          self.peers[name]["member"]).stdout)[0]
        tx = j["stats64"]["tx"]
        return tx["packets"], tx["bytes"]

    def iperf(self, seconds):
        before = self.bob_tx_bytes()
        tx0 = self.member_tx("bob")
        r = self.spoke("alice", "iperf3", "-c", self.peers["bob"]["host4"], "-t", str(seconds), "-J",
                       timeout=seconds + 30)
        if r.returncode != 0:
            return {"error": (r.stdout + r.stderr).strip()[-300:]}
        j = json.loads(r.stdout)
        end = j["end"]
        out = {"bits_per_second": end["sum_received"]["bits_per_second"],
               "bytes": end["sum_received"]["bytes"],
               "retransmits": end.get("sum_sent", {}).get("retransmits")}
        after = self.bob_tx_bytes()
        tx1 = self.member_tx("bob")
        if tx1[0] > tx0[0]:
            out["member_tx_bytes_per_packet"] = round((tx1[1] - tx0[1]) / (tx1[0] - tx0[0]))
        if before is not None:
            out["steered_by_wgbpf"] = after - before >= out["bytes"]
        return out


def run_lab(args):
    lab = LabRun()
    res = {"lab_id": lab.id, "wg": lab.env["LAB_WG"], "runs": [], "modes": {}}
    log(f"lab {lab.id}: up")
    try:
        lab.up()
        for rnd in range(args.lab_rounds):
            for mode in ("baseline", "lpm", "fib"):
                setup = lab.set_mode(mode)
                warm = lab.ping(count=3, interval="0.2")
                if warm.get("loss_pct") == 100:
                    warm = lab.ping(count=5, interval="0.5")
                p = lab.ping()
                ip = lab.iperf(args.iperf_seconds)
                res["runs"].append({"round": rnd, "mode": mode, "setup_seconds": round(setup, 2),
                                    "ping": p, "iperf3": ip})
                log(f"lab round {rnd + 1} {mode:8s}: "
                    f"{ip.get('bits_per_second', 0) / 1e6:8.1f} Mbit/s, "
                    f"ping avg {p.get('avg_ms', float('nan')):.3f} ms, loss {p.get('loss_pct')}%"
                    + (f", {ip['error']}" if "error" in ip else ""))
    finally:
        lab.down()
        log(f"lab {lab.id}: down")
    for mode in ("baseline", "lpm", "fib"):
        runs = [r for r in res["runs"] if r["mode"] == mode]
        bps = [r["iperf3"]["bits_per_second"] for r in runs if "bits_per_second" in r["iperf3"]]
        avg = [r["ping"]["avg_ms"] for r in runs if "avg_ms" in r["ping"]]
        res["modes"][mode] = {
            "mbit_s_median": round(statistics.median(bps) / 1e6, 1) if bps else None,
            "mbit_s_runs": [round(b / 1e6, 1) for b in bps],
            "ping_avg_ms_median": round(statistics.median(avg), 3) if avg else None,
            "ping_avg_ms_runs": avg,
            "steered_by_wgbpf": all(r["iperf3"].get("steered_by_wgbpf", True) for r in runs),
            "member_tx_bytes_per_packet": [r["iperf3"].get("member_tx_bytes_per_packet") for r in runs],
        }
    base = res["modes"]["baseline"]
    for mode in ("lpm", "fib"):
        m = res["modes"][mode]
        if base["mbit_s_median"] and m["mbit_s_median"]:
            m["throughput_vs_baseline"] = round(m["mbit_s_median"] / base["mbit_s_median"], 3)
        if base["ping_avg_ms_median"] and m["ping_avg_ms_median"]:
            m["latency_vs_baseline"] = round(m["ping_avg_ms_median"] / base["ping_avg_ms_median"], 3)
    return res


# -- output ------------------------------------------------------------------------------


def size_label(n):
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def print_tables(out, sizes):
    cols = [("v4", n) for n in sizes] + ([("v6", out["v6"]["size"])] if out.get("v6") else [])

    def cell(fam, n, mode, m):
        if fam == "v4":
            r = out["v4"][str(n)]["modes"][mode]
        else:
            r = out["v6"]["modes"][mode]
        if m not in r:
            return "-"
        x = r[m]
        if m == "floor":
            return f"{x['ns']:.0f}"
        return f"{x['ns']:.0f} ({x['over_floor']:+.0f})"

    heads = [f"IPv4 {size_label(n)}" if f == "v4" else f"IPv6 {size_label(n)}" for f, n in cols]
    for mode in ("repeated", "random"):
        print(f"\nns per packet, {mode} address{'es' if mode == 'random' else ''}: "
              f"median of {out['rounds']} x {out['repeat']:,} runs (over the floor)")
        print(f"{'method':<15}" + "".join(f"{h:>17}" for h in heads))
        for m in METHODS:
            print(f"{m:<15}" + "".join(f"{cell(f, n, mode, m):>17}" for f, n in cols))
    if 0 in sizes:
        print("  (IPv4 0: the table is empty, 'random' addresses are random public IPv4; DIR-24-8 then\n"
              "   reads its 32 MiB tbl24 at random, which is what a miss costs, not a hit)")
    print("\nsteer + source check over one bpf_fib_lookup (goal <= 2.0), "
          "(egress + ingress over floor) / (fib_lookup over floor)")
    rcols = [(f, n) for f, n in cols if n]  # an empty table: the denominator is no lookup at all
    print(f"{'mode':<28}" + "".join(f"{h:>12}" for (f, n), h in zip(cols, heads) if n))
    for addr_mode in ("repeated", "random"):
        for key, label in (("lpm", "LPM"), ("fib", "FIB"), ("dir24_mode", "DIR-24-8")):
            row = []
            for f, n in rcols:
                r = (out["v4"][str(n)] if f == "v4" else out["v6"])["ratios"][addr_mode]
                row.append(f"{r[key]:.2f}" if key in r else "-")
            print(f"{label + ', ' + addr_mode:<28}" + "".join(f"{x:>12}" for x in row))
    print("\nverdicts, random addresses (counter or bench hit share; '+' = others too)")
    print(f"{'method':<15}" + "".join(f"{h:>17}" for h in heads))
    for m in METHODS:
        row = []
        for f, n in cols:
            r = (out["v4"][str(n)] if f == "v4" else out["v6"])["modes"]["random"]
            row.append(verdict_text(r[m]["verdicts"]) if m in r else "-")
        print(f"{m:<15}" + "".join(f"{x:>17}" for x in row))

    print("\nkernel memory per prefix (Slab + Percpu deltas around each fill; bytes)")
    for fam, mem in out["memory"].items():
        for what, d in mem.items():
            if d.get("prefixes"):
                print(f"  {fam} {what:<12} {d['prefixes']:>9,} prefixes: slab {d['slab_per_prefix']:7.1f} "
                      f"+ percpu {d['percpu_per_prefix']:6.1f} = {d['total_per_prefix']:7.1f} B/prefix"
                      + (f"; memlock {d['memlock_per_prefix']:.1f} B/prefix" if d.get("memlock_per_prefix") else ""))
    dz = out.get("dir24_mode")
    if dz:
        print(f"  DIR-24-8 mode at {size_label(dz['prefixes'])}: dir24 + dir8 + sets memlock "
              f"{dz['memlock_total'] / 2**20:.1f} MiB (fixed), compiled from routes4 in "
              f"{dz['compile_seconds']:.2f}s ({dz['groups']:,} dir8 groups, {dz['sets']} peer sets)")
    if out.get("lab"):
        lab = out["lab"]
        print(f"\nlab ({lab['wg']}): iperf3 alice -> bob, {out['iperf_seconds']} s x {len(lab['runs']) // 3}, "
              f"ping 50 x 0.05 s, medians")
        for mode in ("baseline", "lpm", "fib"):
            m = lab["modes"][mode]
            extra = ""
            if "throughput_vs_baseline" in m:
                extra = (f"  throughput {m['throughput_vs_baseline'] * 100:.1f}% of baseline, "
                         f"latency {m.get('latency_vs_baseline', float('nan')):.2f}x")
            print(f"  {mode:<9} {m['mbit_s_median']} Mbit/s {m['mbit_s_runs']}  ping avg "
                  f"{m['ping_avg_ms_median']} ms{extra}; bytes/packet out of bob's member "
                  f"{m['member_tx_bytes_per_packet']}"
                  + ("" if m["steered_by_wgbpf"] else "  (NOT all bytes counted as steered)"))


def plot(out, sizes, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = [max(n, 100) for n in sizes]
    lines = [("egress_lpm", "front_egress LPM"), ("egress_fib", "front_egress FIB"),
             ("ingress_lpm", "member_ingress LPM"), ("ingress_fib", "member_ingress FIB"),
             ("fib_lookup", "one bpf_fib_lookup"),
             ("egress_dir24", "front_egress DIR-24-8"), ("ingress_dir24", "member_ingress DIR-24-8")]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for m, label in lines:
        ys = [max(out["v4"][str(n)]["modes"]["random"][m]["over_floor"], 1) for n in sizes]
        ax.plot(xs, ys, marker="o", label=label)
    floor = [out["v4"][str(n)]["modes"]["random"]["floor"]["ns"] for n in sizes]
    ax.plot(xs, floor, marker="s", linestyle="--", color="grey", label="floor (absolute ns)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([size_label(n) if n else "0" for n in sizes])
    ax.set_xlabel("IPv4 prefixes in the table")
    ax.set_ylabel("ns per packet over the floor (random addresses)")
    ax.set_title("wgbpf data plane, BPF_PROG_TEST_RUN, median of "
                 f"{out['rounds']} x {out['repeat']:,}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------


def bench_family(net, rng, prefixes, fam, sizes, args, out, tmp):
    v6 = fam == "v6"
    prev = 0
    target = 1  # member_ingress runs as this peer's member
    target_member = net.members[target]
    mem = out["memory"].setdefault(fam, {"kernel_fib": {}, "lpm_map": {}})
    for k in ("kernel_fib", "lpm_map"):
        mem[k].setdefault("steps", [])
    frame = frame6("2001:db8::1", "2001:db8::2") if v6 else frame4("192.0.2.1", "198.51.100.2")
    methods = V6_METHODS if v6 else tuple(METHODS)
    for n in sizes:
        new = prefixes[prev:n]
        step = {"size": n}
        if new:
            settle()
            m0 = meminfo()
            t = kernel_insert(net, new, prev, v6, tmp)
            settle()
            m1 = meminfo()
            d = mem_delta(m0, m1)
            mem["kernel_fib"]["steps"].append({"from": prev, "to": n, **d})
            log(f"{fam} {size_label(n)}: kernel FIB +{len(new):,} in {t:.1f}s "
                f"({len(new) / t:,.0f}/s), slab {d['slab'] / 2**20:+.1f} MiB, percpu {d['Percpu'] / 2**20:+.1f} MiB")
            m0 = meminfo()
            tm = maps_insert(net, new, prev, v6)
            settle()
            m1 = meminfo()
            d = mem_delta(m0, m1)
            mem["lpm_map"]["steps"].append({"from": prev, "to": n, **d})
            log(f"{fam} {size_label(n)}: LPM map +{len(new):,} in {tm:.2f}s, "
                f"slab {d['slab'] / 2**20:+.1f} MiB, percpu {d['Percpu'] / 2**20:+.1f} MiB")
            step.update(kernel_insert_seconds=round(t, 2), map_insert_seconds=round(tm, 2))
        table = prefixes[:n]
        if not v6:
            # DIR-24-8 mode's arrays, compiled from routes4 as attach does
            t0 = time.perf_counter()
            d24 = net.maps.dir24.rebuild()
            dz = {"prefixes": n, "compile_seconds": round(time.perf_counter() - t0, 3),
                  "groups": len(d24.groups), "sets": len(net.maps.sets.all()),
                  "memlock_total": sum(memlock(net.maps.fds[x]) or 0 for x in ("dir24", "dir8", "sets"))}
            step["dir24_mode"] = dz
            out["dir24_mode"] = dz
            log(f"v4 {size_label(n)}: DIR-24-8 arrays compiled from routes4 in {dz['compile_seconds']:.2f}s "
                f"({dz['groups']:,} groups, {dz['sets']} sets)")
        t0 = time.perf_counter()
        dst, src, valid = pick_addresses(net, rng, table, v6, target)
        step["src_accepted_fraction"] = valid
        if not v6 and n:
            # the DIR-24-8 arrays against the LPM map, on the destinations drawn
            sets_peers = {sid: peers for sid, (peers, _w) in net.maps.sets.peers().items()}
            bad = sum(1 for a in dst[:8192] if sets_peers.get(d24.lookup(a), ()) != net.lpm_peer(a, False))
            step["dir24_mismatches_of_8192"] = bad
            if bad:
                log(f"WARNING: DIR-24-8 disagrees with the LPM map on {bad} of 8192 addresses")
        log(f"{fam} {size_label(n)}: addresses drawn ({time.perf_counter() - t0:.1f}s; "
            f"{valid * 100:.0f}% of the sources pass the strict check)")
        step["modes"] = {}
        step["ratios"] = {}
        for mode in ("repeated", "random"):
            if mode == "repeated":
                net.fill_addrs("bench_dst", [dst[0]] * NADDR, v6)
                net.fill_addrs("bench_src", [src[0]] * NADDR, v6)
            else:
                net.fill_addrs("bench_dst", dst, v6)
                net.fill_addrs("bench_src", src, v6)
            t0 = time.perf_counter()
            res = add_over_floor(measure(net, methods, frame, args.repeat, args.rounds, target_member))
            step["modes"][mode] = res
            step["ratios"][mode] = ratios(res)
            log(f"{fam} {size_label(n)} {mode}: " + ", ".join(
                f"{m} {r['ns']:.0f}" for m, r in res.items()) + f" ns ({time.perf_counter() - t0:.0f}s)")
        if v6:
            out["v6"] = step
        else:
            out["v4"][str(n)] = step
        prev = n
    # per-prefix figures over every step of this family
    for what in ("kernel_fib", "lpm_map"):
        steps = mem[what]["steps"]
        total = sum(s["to"] - s["from"] for s in steps)
        if not total:
            continue
        slab = sum(s["slab"] for s in steps)
        pcpu = sum(s["Percpu"] for s in steps)
        mem[what].update(prefixes=total, slab_bytes=slab, percpu_bytes=pcpu,
                         slab_per_prefix=round(slab / total, 1), percpu_per_prefix=round(pcpu / total, 1),
                         total_per_prefix=round((slab + pcpu) / total, 1))
    ml = memlock(net.maps.fds["routes6" if v6 else "routes4"])
    n = sizes[-1]
    if ml is not None and n:
        mem["lpm_map"]["memlock_bytes"] = ml
        mem["lpm_map"]["memlock_per_prefix"] = round(ml / n, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="sizes 0, 1k, 20k, 5k IPv6; fewer repeats; short lab runs (development)")
    ap.add_argument("--no-lab", action="store_true", help="skip the iperf3/ping lab part")
    ap.add_argument("--repeat", type=int, help="packets per test run (default 1,000,000; --quick 200,000)")
    ap.add_argument("--rounds", type=int, default=3, help="test runs per figure (median)")
    ap.add_argument("--v4", type=int, nargs="+", help="IPv4 table sizes (default 0 1000 100000 1000000)")
    ap.add_argument("--v6", type=int, help="IPv6 table size (default 200000; 0: skip)")
    ap.add_argument("--seed", type=int, default=20261125)
    ap.add_argument("--out", default=os.path.join(RESULTS_DIR, "dataplane.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_dataplane.py: needs root (BPF, tc, network namespaces)")
    sizes = sorted(set(args.v4 or ([0, 1000, 20000] if args.quick else [0, 1000, 100_000, 1_000_000])))
    v6size = args.v6 if args.v6 is not None else (5000 if args.quick else 200_000)
    args.repeat = args.repeat or (200_000 if args.quick else 1_000_000)
    args.iperf_seconds = 1 if args.quick else 3
    args.lab_rounds = 1 if args.quick else 3
    os.makedirs(RESULTS_DIR, exist_ok=True)

    t_start = time.perf_counter()
    out = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "kernel": os.uname().release,
           "cpus": os.cpu_count(), "loadavg_start": loadavg(), "quick": args.quick,
           "repeat": args.repeat, "rounds": args.rounds, "iperf_seconds": args.iperf_seconds,
           "sizes_v4": sizes, "size_v6": v6size, "v4": {}, "memory": {},
           "methods": {m: v[3] for m, v in METHODS.items()}}
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    p4 = gen_v4(rng, sizes[-1]) if sizes[-1] else []
    p6 = gen_v6(rng, v6size) if v6size else []
    log(f"generated {len(p4):,} IPv4 and {len(p6):,} IPv6 prefixes ({time.perf_counter() - t0:.1f}s)")

    net = Net()
    tmp = tempfile.mkdtemp(prefix="wgbpf-bench-")
    errors = []
    try:
        net.up()
        out["compile_seconds"] = round(net.compile_seconds, 2)
        bench_family(net, rng, p4, "v4", sizes, args, out, tmp)
        if v6size:
            bench_family(net, rng, p6, "v6", [v6size], args, out, tmp)
    finally:
        errors += net.down()
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"namespace {net.ns} removed" + (f" (errors: {errors})" if errors else ""))
    if not args.no_lab:
        out["lab"] = run_lab(args)
    out["loadavg_end"] = loadavg()
    out["seconds"] = round(time.perf_counter() - t_start, 1)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    png = os.path.splitext(args.out)[0] + ".png"
    plot(out, sizes, png)
    print_tables(out, sizes)
    print(f"\nload average at start {out['loadavg_start']}, at end {out['loadavg_end']} "
          f"({out['cpus']} CPUs); total {out['seconds']:.0f}s")
    print(f"results: {args.out}\nplot: {png}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The allowedips backend against WireGuard's own tool, side by side.

Run as root. In a throwaway network namespace, one WireGuard device (the
kernel's when `ip link add type wireguard` works, else wireguard-go) with
two peers; the main table gets N routes (default 100,000) via the first
peer's tag. Measured in the same run:

  a  full sync: the daemon's first sync (dump N routes, plan, write N
     allowed IPs) into an empty peer
  b  `wg syncconf` of the whole list (N allowed IPs): how an operator hands
     WireGuard a changed list. (`wg set ... allowed-ips LIST` cannot take
     it: one argument is at most 128 KiB, and N prefixes are ~1.5 MB.)
  c  one route added: the daemon's handling of that RTM_NEWROUTE event
     (parse, plan, write one allowed IP), the peer holding N
  d  one route deleted: the same for RTM_DELROUTE, by the daemon's choice:
     WGALLOWEDIP_F_REMOVE_ME where the device has it (Linux 6.16+), else a
     throwaway peer (created holding the prefix, then removed)
  d0 the removal of the throwaway peer, which the daemon does with its
     status write (about once a second), for all the deletes meanwhile
  d1 / d2 / d2a / d3  one route deleted, each removal path forced: the
     flag (only where the device has it), the throwaway peer (removed
     later, as d0), the throwaway peer removed at once after each delete,
     the whole-list rewrite (what every removal cost before)
  e  the daemon's own whole-list rewrite (what d3 writes), for comparison
     with b

Progress goes to stderr, a table to stdout, everything to
bench-results/allowedips-<kernel|go>.json (or $WGBPF_BENCH_OUT/). Ratios are what to read: under emulation
(the vm tier) absolute times mean little.

    bench_allowedips.py [--routes N] [--repeat R] [--wg kernel|go|auto]

The target: one delete costs at most 2x one add (d / c) on every kernel.

Not a test: pytest never collects bench_*.py.
"""
import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # wgbpf of this tree
    sys.path.insert(0, REPO)
from benchutil import log, sh  # noqa: E402

from wgbpf import config as configmod, liveness, nsenter, routes as rt, sync, wireguard as wg  # noqa: E402
from wgbpf.backends.allowedips import AllowedIPsBackend  # noqa: E402

RESULTS_DIR = os.environ.get("WGBPF_BENCH_OUT") or os.path.join(REPO, "bench-results")
TAG, OTHER_TAG = "10.255.0.1", "10.255.0.2"




def prefix(i):
    """The i-th /24 of 11.0.0.0 upwards."""
    return f"{11 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24"


class Bench:
    def __init__(self, args):
        self.args = args
        rid = uuid.uuid4().hex[:4]
        self.ns = f"wgbpf-aipb-{rid}"
        self.dev = f"wgaipb{rid}"
        self.tmp = tempfile.mkdtemp(prefix="wgbpf-aipb-")
        self.wggo = None
        self.rows = []

    # -- setup ---------------------------------------------------------------
    def key(self, name):
        priv = sh("wg", "genkey").stdout.strip()
        pub = sh("wg", "pubkey", input=priv).stdout.strip()
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(priv + "\n")
        return path, priv, pub

    def setup(self):
        sh("ip", "netns", "add", self.ns)
        kind = self.args.wg
        if kind in ("auto", "kernel"):
            if sh("ip", "-n", self.ns, "link", "add", self.dev, "type", "wireguard", check=False).returncode == 0:
                kind = "kernel"
            elif kind == "kernel":
                raise SystemExit("no kernel WireGuard here (--wg go uses wireguard-go)")
        if kind != "kernel":
            kind = "go"
            self.wggo = subprocess.Popen(["ip", "netns", "exec", self.ns, "wireguard-go", "-f", self.dev],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sock = os.path.join(wg.UAPI_DIR, f"{self.dev}.sock")
            for _ in range(200):
                if os.path.exists(sock):
                    break
                time.sleep(0.05)
        self.kind = kind
        self.keyfile, self.priv, _ = self.key("dev")
        _, _, self.peer = self.key("peer")
        _, _, self.other = self.key("other")
        sh("ip", "netns", "exec", self.ns, "wg", "set", self.dev, "listen-port", "51999",
           "private-key", self.keyfile, "peer", self.peer, "peer", self.other)
        sh("ip", "-n", self.ns, "link", "set", self.dev, "up")
        # an address gives the device its IPv4 config, which onlink gateways need
        sh("ip", "-n", self.ns, "addr", "add", "10.255.0.254/32", "dev", self.dev)
        n = self.args.routes
        log(f"{kind} WireGuard in {self.ns}; {n} routes via the peer's tag")
        batch = os.path.join(self.tmp, "routes.batch")
        with open(batch, "w") as f:
            for i in range(n):
                f.write(f"route add {prefix(i)} via {TAG} dev {self.dev} onlink\n")
        sh("ip", "-n", self.ns, "-batch", batch, timeout=3600)

    def cleanup(self):
        if self.wggo:
            self.wggo.terminate()
            self.wggo.wait()
        from wgbpf.instance import run_dir
        try:
            run = run_dir(self.ns)  # per namespace: found before it goes
        except OSError:
            run = None
        sh("ip", "netns", "del", self.ns, check=False)
        for f in (f"{self.dev}.json", f"{self.dev}.lock"):
            try:
                os.unlink(os.path.join(run, f))
            except (OSError, TypeError):
                pass
        try:
            os.unlink(os.path.join(wg.UAPI_DIR, f"{self.dev}.sock"))
        except OSError:
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- measurements ----------------------------------------------------------
    def row(self, work, seconds, note=""):
        self.rows.append({"work": work, "seconds": seconds, "note": note})
        log(f"{work}: {seconds * 1000:.2f} ms {note}")

    def daemon(self):
        peers = [f"peer={self.peer},{TAG}", f"other={self.other},{OTHER_TAG}"]
        d = AllowedIPsBackend(sync.Filter(), lambda m: log(f"daemon: {m}"), liveness.Liveness())
        d.attach(configmod.build(self.dev, peers, backend="allowedips"))
        return d

    def allowed_count(self):
        """The peer's allowed IPs as the device reports them (call in the netns)."""
        dev = wg.open_device(self.dev)
        try:
            return len(dev.peers()[base64.b64decode(self.peer)])
        finally:
            dev.close()

    def event(self, events, verb, p):
        sh("ip", "-n", self.ns, "route", verb, p, "via", TAG, "dev", self.dev, "onlink")
        got = []
        while not got:
            got = [(m, bytes(b[o:e]), 0, e - o) for m, b, o, e in events.messages()
                   if m in (rt.RTM_NEWROUTE, rt.RTM_DELROUTE)]
        return got

    def syncconf(self, n):
        path = os.path.join(self.tmp, "wg.conf")
        with open(path, "w") as f:
            f.write(f"[Interface]\nPrivateKey = {self.priv}\nListenPort = 51999\n\n"
                    f"[Peer]\nPublicKey = {self.other}\nAllowedIPs = {OTHER_TAG}/32\n\n"
                    f"[Peer]\nPublicKey = {self.peer}\nAllowedIPs = {TAG}/32, "
                    + ", ".join(prefix(i) for i in range(n)) + "\n")
        t0 = time.perf_counter()
        sh("ip", "netns", "exec", self.ns, "wg", "syncconf", self.dev, path, timeout=3600)
        return time.perf_counter() - t0

    def run(self):
        n, rep = self.args.routes, self.args.repeat
        with nsenter.entered(self.ns):
            d = self.daemon()
            t0 = time.perf_counter()
            d.full_sync("bench")
            self.row("a full sync (dump, plan, write all)", time.perf_counter() - t0, f"{n} routes")
            self.row("a1 of which the route dump into the table", d.stats["last_sync_dump_seconds"],
                     "the kernel FIB read; wg syncconf reads no routes")
            assert self.allowed_count() == n + 1, "the full sync did not write every prefix"
            log(f"device: WGALLOWEDIP_F_REMOVE_ME {'yes' if d.can_remove else 'no'}; removal by {d.removal}")

            events = rt.Netlink(groups=rt.RTMGRP_IPV4_ROUTE)
            adds, dels = [], []
            try:
                for i in range(rep):
                    extra = prefix(n + i)
                    msgs = self.event(events, "add", extra)
                    t0 = time.perf_counter()
                    d.apply(rt.classify(msgs), None)
                    adds.append(time.perf_counter() - t0)
                    msgs = self.event(events, "del", extra)
                    t0 = time.perf_counter()
                    d.apply(rt.classify(msgs), None)
                    dels.append(time.perf_counter() - t0)
            finally:
                events.close()
            assert self.allowed_count() == n + 1
            self.row("c one route added (event -> allowed IP)", statistics.median(adds), f"median of {rep}")
            self.row("d one route deleted", statistics.median(dels), f"median of {rep}; by {d.removal}")
            if d.sink is not None:
                t0 = time.perf_counter()
                d.bury()
                self.row("d0 throwaway peer's removal", time.perf_counter() - t0,
                         "once a second (with the status), not per delete")
            chosen = self.removal = d.removal
            paths = (["flag"] if d.can_remove else []) + ["throwaway", "throwaway-at-once", "rewrite"]
            events = rt.Netlink(groups=rt.RTMGRP_IPV4_ROUTE)
            try:
                for path in paths:
                    label = {"flag": "d1", "throwaway": "d2", "throwaway-at-once": "d2a", "rewrite": "d3"}[path]
                    d.removal = path.split("-")[0]
                    d.bury_at_once = path == "throwaway-at-once"
                    dels = []
                    for i in range(rep):
                        extra = prefix(n + i)
                        d.apply(rt.classify(self.event(events, "add", extra)), None)
                        msgs = self.event(events, "del", extra)
                        t0 = time.perf_counter()
                        d.apply(rt.classify(msgs), None)
                        dels.append(time.perf_counter() - t0)
                    self.row(f"{label} one route deleted, by {path}", statistics.median(dels), f"median of {rep}")
                    d.bury()
            finally:
                events.close()
                d.removal = chosen
                d.bury_at_once = False
            assert self.allowed_count() == n + 1
            assert len(d.device.peers()) == 2, "a throwaway peer was left behind"

            key = base64.b64decode(self.peer)
            full = sorted(d.dev.peers[key])
            rewrites = []
            for _ in range(rep):
                t0 = time.perf_counter()
                d.device.apply([wg.PeerChange(key, add=full, replace=True)])
                rewrites.append(time.perf_counter() - t0)
            self.row("e wgbpf whole-list rewrite", statistics.median(rewrites), f"median of {rep}")
            d.device.close()
            confs = [self.syncconf(n) for _ in range(rep)]
            self.row("b wg syncconf, whole list", statistics.median(confs), f"median of {rep}")
            assert self.allowed_count() == n + 1
        return d.can_remove

    def report(self, can_remove):
        by = {r["work"].split()[0]: r["seconds"] for r in self.rows}
        paths = {r["work"].split()[0]: r["work"].split()[-1] for r in self.rows if r["work"].startswith("d")}
        ratios = {"full sync / wg syncconf": by["a"] / by["b"],
                  "one delete / one add (target <= 2)": by["d"] / by["c"],
                  **{f"one delete by {paths[k]} / one add": by[k] / by["c"] for k in ("d1", "d2", "d2a", "d3") if k in by},
                  "full sync less route dump / wg syncconf": (by["a"] - by["a1"]) / by["b"],
                  "one add / wg syncconf": by["c"] / by["b"],
                  "one delete / wg syncconf": by["d"] / by["b"],
                  "wgbpf rewrite / wg syncconf": by["e"] / by["b"]}
        print(f"\nallowedips backend, {self.kind} WireGuard ({os.uname().release}), "
              f"{self.args.routes} allowed IPs on one peer; WGALLOWEDIP_F_REMOVE_ME: {'yes' if can_remove else 'no'}")
        print(f"{'work':45} {'ms':>10}  note")
        for r in self.rows:
            print(f"{r['work']:45} {r['seconds'] * 1000:10.2f}  {r['note']}")
        print()
        for k, v in ratios.items():
            print(f"{k:45} {v:10.4f}")
        os.makedirs(RESULTS_DIR, exist_ok=True)
        out = {"kernel": os.uname().release, "wireguard": self.kind, "routes": self.args.routes,
               "repeat": self.args.repeat, "single_removal": can_remove, "removal": self.removal, "rows": self.rows,
               "ratios": ratios, "loadavg": os.getloadavg()}
        path = os.path.join(RESULTS_DIR, f"allowedips-{self.kind}.json")
        with open(path, "w") as f:
            json.dump(out, f, indent=2)
        log(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", type=int, default=100000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--wg", choices=("auto", "kernel", "go"), default="auto")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    b = Bench(args)
    try:
        b.setup()
        b.report(b.run())
    finally:
        b.cleanup()


if __name__ == "__main__":
    main()

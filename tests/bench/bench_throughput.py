#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Throughput through wgbpf against plain per-peer routing, settled the way
a noisy shared machine needs: interleaved A/B pairs, the median of the
per-pair ratios, and a bootstrap confidence interval on it.

Single iperf3 runs on a busy machine spread from 70% to 108% of each other,
so one run of each proves nothing. Here every wgbpf run has a baseline run
right beside it (same minute, same neighbours' load), their ratio is one
sample, and the order within a pair alternates (AB, BA, AB, ...) so that a
trend over the pair favours neither side.

  lab/lab.sh (alice, bob, carol over wireguard-go), TCP iperf3 alice -> bob
  through the hub, --seconds each (after a 1 s omitted warm-up):
    baseline      no wgbpf: the hub's clsact qdiscs removed, routes
                  `dev wg-<peer>` (plain per-peer routing)
    lpm, fib, dir24   wgbpf attached in that lookup mode, routes on the front
    lpm+monitor       lpm, with `wgbpf monitor` listening (drops only: the
                      data plane checks the monitor map on every packet)
    lpm+monitor-all   lpm, with `wgbpf monitor --all` (every packet goes
                      through the per-CPU token bucket; 1000 events/s are
                      written)
  Switching to baseline removes wgbpf's tc hooks; switching back is
  `wgbpf attach` again on the pinned programs (no compile, but dir24's
  arrays are resized, which does compile).

For each mode: the pairs' ratios wgbpf/baseline, their median, and a 95%
percentile-bootstrap interval of the median (resampling the pairs, 10,000
times). The verdict on the ">= 95% of plain routing" goal: met if the
interval's low end is >= 0.95, missed if its high end is < 0.95, else
undecided (the interval is too wide to say).

Progress on stderr, the table on stdout, everything in
bench-results/throughput.json.

    bench_throughput.py [--pairs N] [--seconds S] [--modes lpm,fib,...]

Not a test: pytest must never collect it (its name is bench_*.py).
"""
import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
for p in (REPO, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_dataplane import LabRun, loadavg  # noqa: E402
from benchutil import log, sh  # noqa: E402

RESULTS_DIR = os.path.join(REPO, "bench-results")
MODES = ["lpm", "fib", "dir24", "lpm+monitor", "lpm+monitor-all"]
GOAL = 0.95
BOOT = 10_000


class Lab(LabRun):
    monitor = None

    def baseline(self):
        """Plain per-peer routing: none of wgbpf's hooks on the hub's devices
        (its pins stay, so attaching again needs no compile)."""
        self.stop_monitor()
        for dev in [self.front] + [p["member"] for p in self.peers.values()]:
            sh("tc", "-n", self.hub, "qdisc", "del", "dev", dev, "clsact", check=False)
        self.hub_routes("member")

    def wgbpf_mode(self, mode):
        lookup = mode.split("+")[0]
        self.stop_monitor()
        self.wgbpf("attach", self.front, *self.peer_args(), "--lookup", lookup)
        self.attached = True
        if lookup == "fib":
            self.hub_routes("tag")
        else:
            for name, p in self.peers.items():
                self.wgbpf("route", "add", p["prefix4"], name, "--front", self.front)
            self.hub_routes("front")
        if "+monitor" in mode:
            env = dict(os.environ, PYTHONPATH=REPO)
            extra = ["--all"] if mode.endswith("-all") else []
            self.monitor = subprocess.Popen([sys.executable, "-m", "wgbpf.cli", "--netns", self.hub, "monitor",
                                             "--front", self.front, *extra], env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            line = self.monitor.stderr.readline()
            if "watching" not in line:
                raise RuntimeError(f"wgbpf monitor did not start: {line}{self.monitor.stderr.read()}")

    def stop_monitor(self):
        if self.monitor is not None:
            self.monitor.send_signal(signal.SIGTERM)
            self.monitor.wait(10)
            self.monitor = None

    def down(self):
        self.stop_monitor()
        super().down()

    def run(self, seconds, tries=3):
        """One iperf3 run: bits/s received, and whether wgbpf steered it. A
        run iperf3 itself fails (the server busy with a stale client, a
        control connection lost on a loaded machine) is tried again."""
        before = self.bob_tx_bytes() if self.attached_now() else None
        for attempt in range(tries):
            r = self.spoke("alice", "iperf3", "-c", self.peers["bob"]["host4"], "-t", str(seconds), "-O", "1",
                           "-J", timeout=seconds + 30)
            try:
                end = json.loads(r.stdout)["end"]["sum_received"]
                break
            except (ValueError, KeyError) as e:
                err = (json.loads(r.stdout).get("error") if r.stdout.startswith("{") else None) or \
                    (r.stdout + r.stderr).strip()[-300:] or repr(e)
                log(f"iperf3 failed ({err}); {'again' if attempt + 1 < tries else 'giving up'}")
                time.sleep(1)
        else:
            raise RuntimeError(f"iperf3 failed {tries} times")
        out = {"bps": end["bits_per_second"], "bytes": end["bytes"]}
        if before is not None:
            out["steered_by_wgbpf"] = self.bob_tx_bytes() - before >= out["bytes"]
        return out

    def attached_now(self):
        """wgbpf's filter on the front right now (not in baseline)."""
        r = sh("tc", "-n", self.hub, "filter", "show", "dev", self.front, "egress", check=False)
        return f"wgbpf-{self.front}" in r.stdout


def bootstrap_median(ratios, rng, n=BOOT):
    """95% percentile-bootstrap interval of the median of `ratios`."""
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def verdict(lo, hi):
    if lo >= GOAL:
        return "met"
    if hi < GOAL:
        return "missed"
    return "undecided"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=10, help="A/B pairs per mode (default 10)")
    ap.add_argument("--seconds", type=int, default=3, help="iperf3 seconds per run (default 3)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"wgbpf modes (default {','.join(MODES)})")
    ap.add_argument("--seed", type=int, default=20261129)
    ap.add_argument("--out", default=os.path.join(RESULTS_DIR, "throughput.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_throughput.py: needs root (tc, network namespaces)")
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        sys.exit(f"bench_throughput.py: unknown mode(s) {', '.join(bad)}; known: {', '.join(MODES)}")
    rng = random.Random(args.seed)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    out = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "kernel": os.uname().release,
           "cpus": os.cpu_count(), "loadavg_start": loadavg(), "pairs": args.pairs,
           "seconds": args.seconds, "goal": GOAL, "runs": [], "modes": {}}
    t0 = time.perf_counter()
    lab = Lab()
    log(f"lab {lab.id}: up")
    try:
        lab.up()
        lab.wgbpf_mode("lpm")  # compile once; later attaches reuse the pinned programs
        for i in range(args.pairs):
            order = modes[:]
            rng.shuffle(order)  # no mode always runs first, or right after another
            for mode in order:
                sides = ["baseline", mode] if i % 2 == 0 else [mode, "baseline"]
                got = {}
                for side in sides:
                    lab.baseline() if side == "baseline" else lab.wgbpf_mode(mode)
                    got[side] = lab.run(args.seconds)
                if got[mode].get("steered_by_wgbpf") is False:
                    raise RuntimeError(f"{mode}: bob's traffic did not go through wgbpf")
                ratio = got[mode]["bps"] / got["baseline"]["bps"]
                out["runs"].append({"pair": i, "mode": mode, "order": sides,
                                    "baseline_bps": got["baseline"]["bps"], "wgbpf_bps": got[mode]["bps"],
                                    "ratio": ratio})
                log(f"pair {i + 1}/{args.pairs} {mode:16s} baseline {got['baseline']['bps'] / 1e6:7.1f} "
                    f"wgbpf {got[mode]['bps'] / 1e6:7.1f} Mbit/s  ratio {ratio:.3f}")
    except Exception as e:  # the pairs done so far are still a result: shown, then exit 1
        out["error"] = f"{type(e).__name__}: {e}"
        log(f"stopped: {out['error']}")
    finally:
        lab.down()
        log(f"lab {lab.id}: down")
    for mode in modes:
        runs = [r for r in out["runs"] if r["mode"] == mode]
        ratios = [r["ratio"] for r in runs]
        if not ratios:
            continue
        lo, hi = bootstrap_median(ratios, rng)
        out["modes"][mode] = {
            "pairs": len(ratios), "median_ratio": round(statistics.median(ratios), 4),
            "ci95": [round(lo, 4), round(hi, 4)], "verdict": verdict(lo, hi),
            "ratio_min": round(min(ratios), 4), "ratio_max": round(max(ratios), 4),
            "baseline_mbit_s_median": round(statistics.median(r["baseline_bps"] for r in runs) / 1e6, 1),
            "wgbpf_mbit_s_median": round(statistics.median(r["wgbpf_bps"] for r in runs) / 1e6, 1),
        }
    out["loadavg_end"] = loadavg()
    out["total_seconds"] = round(time.perf_counter() - t0, 1)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)

    print(f"\nthroughput vs plain per-peer routing: iperf3 TCP alice -> bob, {args.seconds} s runs, "
          f"{args.pairs} interleaved A/B pairs per mode, 95% bootstrap CI of the median ratio")
    print(f"{'MODE':16s} {'PAIRS':>5s} {'BASE Mb/s':>10s} {'WGBPF Mb/s':>10s} {'MEDIAN':>7s} "
          f"{'95% CI':>15s} {'RANGE':>13s}  >= {GOAL:.0%}?")
    for mode, m in out["modes"].items():
        print(f"{mode:16s} {m['pairs']:5d} {m['baseline_mbit_s_median']:10.1f} {m['wgbpf_mbit_s_median']:10.1f} "
              f"{m['median_ratio']:7.3f} {m['ci95'][0]:7.3f}-{m['ci95'][1]:<7.3f} "
              f"{m['ratio_min']:6.3f}-{m['ratio_max']:<6.3f}  {m['verdict']}")
    print(f"\nload average at start {out['loadavg_start']}, at end {out['loadavg_end']} ({out['cpus']} CPUs); "
          f"total {out['total_seconds']:.0f}s")
    print(json.dumps(out["modes"], indent=1))
    print(f"results: {args.out}")
    if "error" in out:
        sys.exit(f"bench_throughput.py: stopped early: {out['error']}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Failover time: a spoke's WireGuard killed, its ECMP flows on the sibling.

Run as root. The lab (lab/lab.sh, wireguard-go here, kernel WireGuard in
the vm tier) with persistent-keepalive 1 s on the spokes; `wgbpf daemon
--dead-after 2` on the hub; carol sends 16 UDP flows (every 20 ms each) to
10.9.0.1, an ECMP prefix over alice and bob, whose sinks record where each
flow lands (tests/e2e/failover.py). Measured:

  no-move   both peers alive for 60 s: flows that moved, or stopped for
            0.3 s (the target: 0), and peers the daemon judged dead
  kills     10 times: the spoke carrying more flows is killed (SIGKILL to
            its wireguard-go); failover = from the kill until every flow it
            carried has arrived at its sibling; then it is restarted, its
            flows come back, and the hold-down (10 s) runs out
  one-way   the same 60 s, with sinks that do not answer: WireGuard's
            passive keepalive answers a one-way stream every 10 s only (a
            persistent keepalive is postponed by every packet received), so
            --dead-after 2 takes live peers for dead and flows move;
            --dead-after 12 does not

Progress on stderr, a table on stdout, everything in
bench-results/failover.json (or $WGBPF_BENCH_OUT/).

    bench_failover.py [--kills N] [--quiet-seconds S] [--quick]

Target: median and worst failover <= 3 s, 0 moves while both live.
Not a test: pytest never collects bench_*.py.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
for p in (REPO, HERE, os.path.join(REPO, "tests"), os.path.join(REPO, "tests", "e2e")):
    if p not in sys.path:
        sys.path.insert(0, p)
# the lab's own pins and run files, never the machine's instances
os.environ.setdefault("WGBPF_PIN_ROOT", f"/sys/fs/bpf/wgbpf-bench-{os.getpid()}")
os.environ.setdefault("WGBPF_RUN_DIR", f"/tmp/wgbpf-bench-{os.getpid()}")

from benchutil import log  # noqa: E402
from failover import Failover  # noqa: E402
from labutil import Lab, run  # noqa: E402
from wgbpf.liveness import HOLD_FACTOR  # noqa: E402

RESULTS_DIR = os.environ.get("WGBPF_BENCH_OUT") or os.path.join(REPO, "bench-results")
DEAD_AFTER = 2.0


def quiet(f, seconds):
    """Both peers alive for `seconds`: flows moved, flows moved or lost
    for a while (GAP), peers judged dead."""
    t0, deaths = time.monotonic(), f.deaths()
    time.sleep(seconds)
    return {"moves": len(f.moves(t0)), "interruptions": len(f.interruptions(t0)),
            "deaths": f.deaths() - deaths}


def kills(f, n):
    out = []
    for i in range(n):
        where = f.where()
        victim = max(("alice", "bob"), key=lambda p: sum(1 for s in where.values() if s == p))
        took, flows = f.kill(victim)
        back = f.revive(victim, flows)
        log(f"kill {i + 1}/{n}: {victim} ({len(flows)} flows): failover "
            + (f"{took:.2f}s" if took is not None else "NONE") + ", back "
            + (f"{back:.2f}s" if back is not None else "NONE"))
        out.append({"victim": victim, "flows": len(flows), "failover_s": took, "back_s": back})
        time.sleep(HOLD_FACTOR * DEAD_AFTER + 1)  # the hold-down runs out (and more)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--quiet-seconds", type=float, default=60.0)
    ap.add_argument("--quick", action="store_true", help="3 kills, 10 s quiet runs")
    args = ap.parse_args()
    if args.quick:
        args.kills, args.quiet_seconds = 3, 10.0
    if os.geteuid() != 0:
        sys.exit("bench_failover: run as root")
    lab = Lab(f"bf{os.getpid() % 1000}")
    lab.env["LAB_KEEPALIVE"] = "1"
    lab.down()
    res = {"wg": lab.info["wg"], "kernel": os.uname().release, "dead_after": DEAD_AFTER,
           "keepalive": 1, "flows": 16, "packet_interval_s": 0.02}
    f = None
    try:
        log("lab up")
        lab.up()
        log("answered flows (echo), --dead-after 2")
        f = Failover(lab, dead_after=str(DEAD_AFTER))
        f.settle()
        res["quiet_seconds"] = args.quiet_seconds
        res["while_alive"] = quiet(f, args.quiet_seconds)
        log(f"{res['while_alive']} in {args.quiet_seconds:.0f}s with both alive")
        res["kills"] = kills(f, args.kills)
        f.close()
        for d in ("2", "12"):
            log(f"one-way flows, --dead-after {d}")
            f = Failover(lab, dead_after=d, echo=False)
            f.settle()
            res[f"oneway_dead_after_{d}"] = quiet(f, args.quiet_seconds)
            log(f"{res[f'oneway_dead_after_{d}']}")
            f.close()
        f = None
    finally:
        if f is not None:
            f.close()
        lab.down()
        run("rm", "-rf", lab.pin_dir(), *lab.run_files())
        shutil.rmtree(os.environ["WGBPF_PIN_ROOT"], ignore_errors=True)  # this run's own
        shutil.rmtree(os.environ["WGBPF_RUN_DIR"], ignore_errors=True)
    times = [k["failover_s"] for k in res["kills"] if k["failover_s"] is not None]
    backs = [k["back_s"] for k in res["kills"] if k["back_s"] is not None]
    res["failover_median_s"] = statistics.median(times) if times else None
    res["failover_worst_s"] = max(times) if len(times) == len(res["kills"]) and times else None
    res["back_median_s"] = statistics.median(backs) if backs else None
    res["met"] = (res["failover_worst_s"] is not None and res["failover_worst_s"] <= 3.0
                  and res["while_alive"]["interruptions"] == 0)

    def fmt(x):
        return f"{x:.2f} s" if x is not None else "none"
    print(f"\nfailover, {res['wg']} WireGuard ({res['kernel']}), {len(res['kills'])} kills, "
          f"16 flows, persistent-keepalive 1 s on the spokes")
    print(f"{'approach':52} {'median':>9} {'worst':>9}")
    print(f"{'wgbpf --dead-after 2 (answered traffic, measured)':52} {fmt(res['failover_median_s']):>9} "
          f"{fmt(res['failover_worst_s']):>9}")
    print(f"{'BFD over WireGuard (300 ms x 3; not measured here)':52} {'~0.6 s':>9} {'~0.9 s':>9}")
    print(f"{'wg show handshake-age polling (not measured here)':52} {'>= 180 s':>9} {'':>9}")
    q = res["while_alive"]
    print(f"\nboth alive for {args.quiet_seconds:.0f} s: {q['moves']} flows moved, {q['interruptions']} moved or "
          f"interrupted, {q['deaths']} peers judged dead")
    print(f"flows back on the restarted peer after (median): {fmt(res['back_median_s'])}")
    for d in ("2", "12"):
        q = res[f"oneway_dead_after_{d}"]
        print(f"one-way flows, --dead-after {d:2}, both alive {args.quiet_seconds:.0f} s: {q['moves']} moved, "
              f"{q['interruptions']} moved or interrupted, {q['deaths']} peers judged dead")
    print(f"target (worst <= 3 s, 0 moves): {'met' if res['met'] else 'NOT met'}")
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, "failover.json")
    with open(path, "w") as fh:
        json.dump(res, fh, indent=2)
    log(f"wrote {path}")
    return 0 if res["met"] else 1


if __name__ == "__main__":
    sys.exit(main())

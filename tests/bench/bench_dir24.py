#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""DIR-24-8 compile time at full-table size, no root, no maps: Dir24 over
bytearrays, from N internet-like IPv4 prefixes (benchutil's length mix,
mostly /24, /22, /23, /20, /16, 2% longer than /24) on a few peer sets.

  rebuild(dict)            the daemon's and attach's input form today
  rebuild_keys(keys, ...)  from the sync engine's prefix keys
  again, unchanged         the restart case: compares, writes nothing
  --old REV                the same with dir24.py of a git revision, and
                           whether both compile the same bytes

    bench_dir24.py [--prefixes N] [--old HEAD~1]

Not a test: pytest never collects bench_*.py.
"""
import argparse
import hashlib
import importlib.util
import inspect
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for _p in (REPO, os.path.dirname(os.path.abspath(__file__))):
    if _p not in sys.path:
        sys.path.insert(0, _p)
from benchutil import gen_v4  # noqa: E402

from wgbpf import abi  # noqa: E402
from wgbpf.dir24 import GROUP_ENTRIES, Dir24  # noqa: E402


def gen(n, rng, nsets=10):
    """n internet-like IPv4 prefixes -> a peer set id each (as routes4
    names them: the entries are the ids)."""
    return {k: rng.randrange(1, nsets + 1) for k in gen_v4(rng, n)}


def fresh(cls):
    arrays = (bytearray(2 << 24), bytearray(2 * GROUP_ENTRIES * abi.DIR8_GROUPS))
    if "write_set" in inspect.signature(cls).parameters:  # a revision before the sets map
        return cls(*arrays, {}.__setitem__)
    return cls(*arrays)


def timed(label, fn):
    """CPU seconds (what to compare on a shared machine) and wall seconds."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"  {label:34} {cpu:7.3f} s CPU ({dt:.3f} s wall)")
    return cpu


def old_class(rev):
    src = subprocess.run(["git", "-C", REPO, "show", f"{rev}:wgbpf/dir24.py"], capture_output=True,
                         text=True, check=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "dir24_old.py")
    with open(path, "w") as f:
        f.write(src.replace("from . import abi", "from wgbpf import abi"))
    spec = importlib.util.spec_from_file_location("dir24_old", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Dir24


def run(form, rev, n):
    """One form, timed in this process (a fresh one: the first compile in a
    process pays its page faults, and each candidate should pay the same)."""
    prefixes = gen(n, random.Random(1))
    cls = old_class(rev) if rev else Dir24
    d = fresh(cls)
    if form == "keys":
        keys = [bytes((2, plen)) + addr.to_bytes(4, "big") for addr, plen in prefixes]
        peers = list(prefixes.values())
        dt = timed("rebuild_keys(keys, set ids)", lambda: d.rebuild_keys(keys, peers))
    else:
        dt = timed(f"rebuild(dict){' at ' + rev if rev else ''}", lambda: d.rebuild(prefixes))
    d.writes = 0
    again = timed("  again, unchanged", lambda: d.rebuild(dict(prefixes)))
    digest = hashlib.sha256(bytes(d.tbl24) + bytes(d.tbl8)).hexdigest()[:12]
    print(f"    {len(d.groups):,} groups, {len(set(prefixes.values()))} sets, {d.writes} bytes rewritten, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB, tables {digest}")
    return dt, again


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefixes", type=int, default=1_000_000)
    ap.add_argument("--old", metavar="REV", help="also time dir24.py of this git revision")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        form, _, rev = args.one.partition(":")
        run(form, rev, args.prefixes)
        return
    print(f"{args.prefixes:,} prefixes, load {os.getloadavg()[0]:.2f}; same tables digest = same bytes")
    for one in ["dict", "keys"] + ([f"dict:{args.old}"] if args.old else []):
        subprocess.run([sys.executable, __file__, "--prefixes", str(args.prefixes), "--one", one], check=True)


if __name__ == "__main__":
    main()

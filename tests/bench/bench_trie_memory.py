# SPDX-License-Identifier: GPL-2.0-or-later
"""Kernel memory of an LPM trie per prefix, by value size: the route value
before (20 bytes: count and 8 peer ids) and after issue 31 (8 bytes: a set
id). Slab delta around the fill, as bench_dataplane measures it; each
figure the lower of two fills. Root (map creation).

    python3 tests/bench/bench_trie_memory.py
"""
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from wgbpf import abi, bpfsys  # noqa: E402



def slab():
    for line in open("/proc/meminfo"):
        if line.startswith("Slab:"):
            return int(line.split()[1]) * 1024

def fill(key_size, value_size, n, seed):
    fd = bpfsys.map_create(abi.LPM_TRIE, key_size, value_size, n + 10, abi.NO_PREALLOC, "memcheck")
    rng = random.Random(seed)
    alen = key_size - 4
    keys = bytearray()
    for _ in range(n):
        plen = rng.choice([48, 32, 40, 44, 56, 64]) if alen == 16 else rng.choice([24, 22, 23, 20, 16])
        a = rng.getrandbits(8 * alen) & (((1 << plen) - 1) << (8 * alen - plen))
        keys += plen.to_bytes(4, "little") + a.to_bytes(alen, "big")
    values = bytes(value_size * n)
    time.sleep(0.5)
    s0 = slab()
    for i in range(0, n, 16384):
        c = min(16384, n - i)
        bpfsys.update_batch_raw(fd, bytes(keys[i * key_size:(i + c) * key_size]), values[:c * value_size], c)
    time.sleep(1.0)
    d = slab() - s0
    return fd, d / n

def main():
    import json
    out = []
    print("kernel memory per prefix of an LPM trie (slab delta; bytes)")
    for fam, ks, n in (("IPv4", 8, 1_000_000), ("IPv6", 20, 200_000)):
        for label, vs in (("before (20 B value)", 20), ("after (8 B value)", 8)):
            got = []
            for seed in (1, 2):
                fd, per = fill(ks, vs, n, seed)
                got.append(per)
                os.close(fd)
                time.sleep(1.5)
            print(f"  {fam} {n:>9,} prefixes, {label:20}: {min(got):6.1f} B/prefix "
                  f"(runs {', '.join(f'{g:.1f}' for g in got)})")
            out.append({"family": fam, "prefixes": n, "value_size": vs, "bytes_per_prefix": round(min(got), 1)})
    results = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "bench-results")
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, "trie_memory.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"results: {results}/trie_memory.json")


if __name__ == "__main__":
    main()

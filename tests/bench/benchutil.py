# SPDX-License-Identifier: GPL-2.0-or-later
"""What the benchmarks share: progress lines, commands that must work,
internet-like prefix tables."""
import socket
import subprocess
import sys
import time


def log(msg):
    """Progress, on stderr (stdout carries the result table)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*cmd, check=True, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))[:200]}: exit {r.returncode}: {r.stderr.strip()[:800]}")
    return r


# -- prefixes: internet-like tables -------------------------------------------
# A prefix is (address as int, length); a table is a shuffled list of them,
# so any leading slice has the same mix of lengths.

# Prefix lengths weighted roughly as today's BGP tables.
V4_LENGTHS = {8: 0.005, 9: 0.01, 10: 0.03, 11: 0.05, 12: 0.1, 13: 0.2, 14: 0.3, 15: 0.3,
              16: 1.3, 17: 1.0, 18: 1.5, 19: 2.5, 20: 4.0, 21: 4.5, 22: 12.0, 23: 10.0,
              24: 60.0, 25: 0.5, 26: 0.4, 27: 0.3, 28: 0.3, 29: 0.3, 30: 0.15, 31: 0.05,
              32: 0.2}
V6_LENGTHS = {32: 10.0, 33: 0.5, 34: 0.5, 35: 0.5, 36: 3.0, 37: 0.3, 38: 0.3, 39: 0.3,
              40: 5.0, 41: 0.3, 42: 0.5, 43: 0.3, 44: 6.0, 45: 0.5, 46: 1.0, 47: 1.5,
              48: 60.0, 52: 0.5, 56: 3.0, 60: 0.5, 64: 3.0}


def length_counts(total, weights):
    """{length: how many} adding up to `total`; the rounding goes to the
    commonest length."""
    s = sum(weights.values())
    counts = {L: int(total * w / s) for L, w in weights.items()}
    counts[max(weights, key=weights.get)] += total - sum(counts.values())
    return counts


def v4_ok(a):
    """Public unicast, and outside 100.64.0.0/10, where the benches' tags live."""
    first = a >> 24
    if first in (0, 10, 127) or first >= 224:
        return False
    return (a >> 22) != (100 << 2) | 1


def gen_v4_len(rng, plen, count):
    """`count` distinct random IPv4 prefixes of length `plen` (12 or more)."""
    shift = 32 - plen
    seen = set()
    out = []
    while len(out) < count:
        a = rng.getrandbits(plen) << shift
        if a not in seen and v4_ok(a):
            seen.add(a)
            out.append((a, plen))
    return out


def gen_v4(rng, n):
    """n distinct IPv4 prefixes, internet-like lengths, shuffled."""
    counts = length_counts(n, V4_LENGTHS)
    out = []
    for plen in sorted(counts):
        count = counts[plen]
        if plen < 12:  # small spaces: enumerate what is allowed
            pool = [a << (32 - plen) for a in range(1 << plen) if v4_ok(a << (32 - plen))]
            if count > len(pool) // 2:  # not that many /8s on the internet: give the rest to /24
                counts[24] += count - len(pool) // 2
                count = len(pool) // 2
            out.extend((a, plen) for a in rng.sample(pool, count))
        else:
            out.extend(gen_v4_len(rng, plen, count))
    rng.shuffle(out)
    return out


def gen_v6(rng, n):
    """n distinct IPv6 prefixes in 2000::/3, mostly /48, shuffled."""
    out = []
    for plen, count in sorted(length_counts(n, V6_LENGTHS).items()):
        seen = set()
        shift = 128 - plen
        while len(seen) < count:
            a = ((0b001 << (plen - 3)) | rng.getrandbits(plen - 3)) << shift
            if a not in seen:
                seen.add(a)
                out.append((a, plen))
    rng.shuffle(out)
    return out


def prefix_text(a, plen, v6):
    if v6:
        return f"{socket.inet_ntop(socket.AF_INET6, a.to_bytes(16, 'big'))}/{plen}"
    return f"{socket.inet_ntoa(a.to_bytes(4, 'big'))}/{plen}"

"""What the benchmarks share: progress lines and commands that must work."""
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

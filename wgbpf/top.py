# SPDX-License-Identifier: GPL-2.0-or-later
"""`wgbpf top`: per-peer rates from the pinned counters, refreshed live.

Two samples of peer_stats and counters (per-CPU, summed) a second apart
give packets and bits per second; the rest comes from where it already
lives: a peer's state from the peers map and the daemon's status file
(dead-peer detection), its last handshake from its member device
(wireguard.py), its prefixes from the route maps. Plain bpf(2) reads: no
BCC, no compile, cheap enough to run every second.

The screen is drawn with curses from the standard library: a table that
redraws in place and a key to quit is all a top needs, and curses is there
wherever Python is (no new dependency to package for Debian, as rich would
be), and works over a plain ssh terminal.
"""
import time

from . import abi

PREFIX_EVERY = 10.0  # seconds between recounts of prefixes (a full table is 1M routes)
DROPS = [r for r in abi.Reason if r not in (abi.Reason.STEERED, abi.Reason.FLOODED, abi.Reason.PASSED,
                                            abi.Reason.PASSED_FEASIBLE, abi.Reason.PASSED_LOOSE,
                                            abi.Reason.PASSED_UNCHECKED)]


def prefix_counts(m):
    """{peer id: prefixes naming it} over both route maps; None in FIB mode
    (the kernel's table is the only one)."""
    if m.config().lookup == abi.Lookup.FIB:
        return None
    out = {}
    sets = m.sets.peers()
    for version in (4, 6):
        for _, r in m.tries.routes(version):
            if r.origin == abi.Origin.TAG:
                continue  # a peer's own tag addresses: not routes anyone wrote
            for peer_id in sets.get(r.set, ((), None))[0]:
                out[peer_id] = out.get(peer_id, 0) + 1
    return out


def handshake_ages(members):
    """{member device: seconds since its peer's last handshake, or None}."""
    from . import wireguard
    now = time.time()
    out = {}
    for dev in members:
        try:
            dev_handle = wireguard.open_device(dev)
            try:
                counters = dev_handle.counters()
            finally:
                dev_handle.close()
            last = max((c[2] for c in counters.values()), default=0)
            out[dev] = round(now - last, 1) if last else None
        except Exception:  # not WireGuard, gone, an older wgbpf without counters(): shown as "-"
            out[dev] = None
    return out


def liveness(status):
    """{peer name: "alive" or "dead"} as the daemon's status file has it
    (dead-peer detection, --dead-after); {} when no daemon judges."""
    peers = (status or {}).get("liveness") or {}
    return {name: v.get("state") for name, v in peers.items() if isinstance(v, dict)}


class Sampler:
    """Reads one instance's counters; sample() returns the rates since the
    previous call."""

    def __init__(self, m, front):
        self.m, self.front = m, front
        self.prev = None
        self.prefixes, self.prefixes_at = None, 0.0

    def _read(self):
        peers = self.m.peers()
        return {"t": time.monotonic(), "peers": peers,
                "stats": {peer_id: self.m.peer_stats(peer_id) for peer_id in peers},
                "counters": self.m.counters()}

    def sample(self):
        from .instance import read_status
        cur = self._read()
        prev, self.prev = self.prev, cur
        if prev is None:
            prev = cur
        dt = max(cur["t"] - prev["t"], 1e-9)
        if time.monotonic() - self.prefixes_at >= PREFIX_EVERY:
            self.prefixes, self.prefixes_at = prefix_counts(self.m), time.monotonic()
        status = read_status(self.front)
        alive = liveness(status)
        ages = handshake_ages([p.member.decode() for p in cur["peers"].values()])
        rows = []
        for peer_id, p in cur["peers"].items():
            s, o = cur["stats"][peer_id], prev["stats"].get(peer_id, cur["stats"][peer_id])
            name, member = p.name.decode(), p.member.decode()

            def rate(field, scale=1):
                return round((getattr(s, field) - getattr(o, field)) * scale / dt, 1)
            rows.append({
                "name": name, "member": member,
                "state": "up" if p.flags & abi.PEER_UP else "down",
                "liveness": alive.get(name),  # alive/dead, when the daemon judges it (--dead-after)
                "handshake_age": ages.get(member),
                "prefixes": None if self.prefixes is None else self.prefixes.get(peer_id, 0),
                "tx_pps": rate("tx_packets"), "tx_bps": rate("tx_bytes", 8),
                "rx_pps": rate("rx_packets"), "rx_bps": rate("rx_bytes", 8),
                "spoofed_ps": rate("spoofed"),
                "tx_packets": s.tx_packets, "tx_bytes": s.tx_bytes,
                "rx_packets": s.rx_packets, "rx_bytes": s.rx_bytes, "spoofed": s.spoofed,
            })
        rows.sort(key=lambda r: (-(r["tx_bps"] + r["rx_bps"]), -(r["tx_pps"] + r["rx_pps"]), r["name"]))
        drops = {r.name.lower(): {"per_second": round((cur["counters"][r] - prev["counters"][r]) / dt, 1),
                                  "total": cur["counters"][r]} for r in DROPS}
        return {"front": self.front, "interval": round(dt, 3), "time": time.time(),
                "daemon": (status or {}).get("state"), "peers": rows, "drops": drops}


def si(x, unit=""):
    """1234567 -> '1.2M': a rate in the width of a top column."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.1f}{suffix}{unit}"
    return f"{x:.0f}{unit}"


def age(seconds):
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


HEADERS = ["PEER", "MEMBER", "STATE", "LIVENESS", "HANDSHAKE", "PREFIXES", "TX_PPS", "TX_BPS", "RX_PPS", "RX_BPS",
           "SPOOF/S"]


def lines(s):
    """The sample as text lines: a title, the table, the drops."""
    rows = [[r["name"], r["member"], r["state"], r["liveness"] or "-", age(r["handshake_age"]),
             "-" if r["prefixes"] is None else str(r["prefixes"]),
             si(r["tx_pps"]), si(r["tx_bps"]), si(r["rx_pps"]), si(r["rx_bps"]), si(r["spoofed_ps"])]
            for r in s["peers"]]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(HEADERS)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    title = (f"wgbpf top: {s['front']}  {len(rows)} peers  daemon {s['daemon'] or 'not running'}  "
             f"{time.strftime('%H:%M:%S', time.localtime(s['time']))}")
    out = [title, "", fmt.format(*HEADERS).rstrip()] + [fmt.format(*r).rstrip() for r in rows]
    moving = [f"{k} {si(v['per_second'])}/s" for k, v in s["drops"].items() if v["per_second"]]
    total = [f"{k} {v['total']}" for k, v in s["drops"].items() if v["total"]]
    out += ["", "drops/s: " + ("  ".join(moving) or "none"),
            "drops total: " + ("  ".join(total) or "none")]
    return out


def run_curses(sampler, interval):
    """The live view; returns when `q` is pressed."""
    import curses

    def loop(scr):
        curses.curs_set(0)
        text = lines(sampler.sample()) + ["", "q quits"]  # rates show from the next sample on
        deadline = time.monotonic() + interval
        while True:
            scr.erase()
            h, w = scr.getmaxyx()
            for y, t in enumerate(text[:h]):
                scr.addnstr(y, 0, t, max(w - 1, 1))
            scr.refresh()
            scr.timeout(max(1, int((deadline - time.monotonic()) * 1000)))
            key = scr.getch()
            if key in (ord("q"), ord("Q")):
                return
            if time.monotonic() >= deadline:  # else a key or a resize: redraw only
                text = lines(sampler.sample()) + ["", "q quits"]
                deadline = time.monotonic() + interval
    curses.wrapper(loop)

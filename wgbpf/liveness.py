# SPDX-License-Identifier: GPL-2.0-or-later
"""Dead peers, judged from WireGuard's own counters (no packets of ours).

WireGuard tells nobody when a peer dies, but every packet it receives from
a peer moves that peer's rx_bytes, zero-length keepalives and handshakes
included (they never reach tc, but they reach the counters). So from user
space, sampled every `interval` seconds:

    dead   we sent (tx_bytes moved) and nothing came back (rx_bytes still)
           for `dead_after` seconds; or we kept sending for REKEY_TIMEOUT +
           dead_after seconds while the last handshake was older than
           REJECT_AFTER (WireGuard's own session limit: no session can
           carry data past it; a sender whose session expired handshakes
           at once, so a live peer answers well within that time)
    alive  again once rx_bytes moves in two samples at least `confirm`
           seconds apart (no gap longer than dead_after between them), and
           the last handshake is younger than REJECT_AFTER

Traffic must be answered for rx to move within seconds: a one-way stream
is acknowledged only by WireGuard's passive keepalive, every 10 s (docs/liveness.md,
"Choosing D").

Against flapping, a peer that came back stays up for `hold` seconds
(5 x dead_after) before it can be judged dead again, and must be heard
for `confirm` seconds (min(1, dead_after / 2)) before it comes back.

Pure logic: samples in, transitions out; the clocks are parameters, so
tests drive it with fake counters and a fake clock.
"""
import dataclasses
import time

REJECT_AFTER = 180.0  # WireGuard's REJECT_AFTER_TIME, seconds
REKEY_TIMEOUT = 5.0   # WireGuard's REKEY_TIMEOUT: a lost handshake is retried after it
HOLD_FACTOR = 5       # hold-down: this many times dead_after


@dataclasses.dataclass
class Peer:
    dead_after: float
    rx: int = None
    tx: int = None
    handshake: float = 0.0
    at: float = None            # the last sample's time
    stale_since: float = None   # sending while no session could be valid, since
    rx_at: float = None         # rx last seen moving (or sampling began)
    sending_since: float = None  # tx moved since rx_at: from about then
    dead: bool = False
    reason: str = None          # why dead, or why back
    cause: str = None           # dead: "silent" or "handshake" (a metric label)
    since: float = None         # wall clock of the last change
    revived_at: float = None    # hold-down runs from here
    heard_at: float = None      # dead: rx moving again since
    deaths: int = 0

    @property
    def hold(self):
        return HOLD_FACTOR * self.dead_after

    @property
    def confirm(self):
        return min(1.0, self.dead_after / 2)


class Liveness:
    def __init__(self, clock=time.monotonic, wall=time.time):
        self.clock = clock
        self.wall = wall
        self.peers = {}     # name -> Peer
        self.next_at = 0.0

    def configure(self, dead_after):
        """{peer name: seconds, or None (not watched)}; a watched peer keeps
        its state across a reload (a new dead_after applies from now)."""
        want = {n: d for n, d in dead_after.items() if d}
        for name in list(self.peers):
            if name not in want:
                del self.peers[name]
        for name, d in want.items():
            if name in self.peers:
                self.peers[name].dead_after = d
            else:
                self.peers[name] = Peer(d)

    @property
    def interval(self):
        """Seconds between samples: an eighth of the shortest dead_after,
        so detection lands within D + D/8, from 0.1 s to 1 s."""
        if not self.peers:
            return 1.0
        return max(0.1, min(1.0, min(p.dead_after for p in self.peers.values()) / 8))

    def due(self):
        """True (and the next sample scheduled) when it is time to sample.
        Samples keep to a grid, so a slow loop does not stretch detection."""
        now, iv = self.clock(), self.interval
        if now < self.next_at:
            return False
        self.next_at = self.next_at + iv if now - self.next_at < iv else now + iv
        return True

    def timeout(self):
        """Seconds the caller may sleep before the next sample (at most 1)."""
        if not self.peers:
            return 1.0
        return max(0.0, min(1.0, self.next_at - self.clock()))

    def alive(self, name):
        p = self.peers.get(name)
        return p is None or not p.dead

    def observe(self, name, rx, tx, handshake):
        """One sample of a watched peer's counters (handshake: wall clock,
        0 for never). Returns "dead" or "alive" when the peer changed state
        (its reason in .peers[name].reason), else None."""
        p = self.peers.get(name)
        if p is None:
            return None
        now = self.clock()
        prev_at = p.at
        if p.rx is None or rx < p.rx or tx < p.tx:
            # first sample, or the device was re-created (counters restart):
            # a fresh start, whatever the peer was
            p.rx, p.tx, p.handshake, p.at, p.rx_at = rx, tx, handshake, now, now
            p.sending_since = p.heard_at = p.stale_since = None
            return None
        rx_moved, tx_moved = rx > p.rx, tx > p.tx
        p.rx, p.tx, p.handshake, p.at = rx, tx, handshake, now
        if p.dead:
            return self._dead_sample(p, now, rx_moved)
        if rx_moved:
            p.rx_at, p.sending_since = now, None
        elif tx_moved and p.sending_since is None:
            # it went out after the previous sample: count from there
            p.sending_since = max(p.rx_at, prev_at)
        if self._session(p):
            p.stale_since = None
        elif tx_moved and p.stale_since is None:
            p.stale_since = prev_at
        if p.revived_at is not None and now - p.revived_at < p.hold:
            return None  # hold-down: not judged again yet
        reason = cause = None
        if p.sending_since is not None and now - p.sending_since >= p.dead_after:
            reason, cause = f"nothing received for {now - p.rx_at:.1f}s while sending", "silent"
        elif p.stale_since is not None and now - p.stale_since >= REKEY_TIMEOUT + p.dead_after:
            cause = "handshake"
            reason = (f"no handshake for {self.wall() - handshake:.0f}s while sending" if handshake
                      else f"no handshake in {now - p.stale_since:.0f}s of sending")
        if reason is None:
            return None
        p.dead, p.reason, p.cause, p.since, p.heard_at = True, reason, cause, self.wall(), None
        p.deaths += 1
        return "dead"

    def _dead_sample(self, p, now, rx_moved):
        if not rx_moved:
            if p.heard_at is not None and now - p.rx_at > p.dead_after:
                p.heard_at = None  # a stray packet, then silence again
            return None
        p.rx_at = now
        if p.heard_at is None:
            p.heard_at = now
            return None
        if now - p.heard_at < p.confirm or not self._session(p):
            return None
        p.reason = f"received again for {now - p.heard_at:.1f}s"
        p.dead, p.cause, p.since, p.revived_at, p.sending_since, p.heard_at, p.stale_since = (
            False, None, self.wall(), now, None, None, None)
        return "alive"

    def _session(self, p):
        """A handshake recent enough that a session can carry data."""
        return bool(p.handshake) and self.wall() - p.handshake <= REJECT_AFTER

    def status(self):
        """{peer: {...}} for the status file: state, reason, ages."""
        now, wall = self.clock(), self.wall()
        out = {}
        for name, p in sorted(self.peers.items()):
            out[name] = {
                "state": "dead" if p.dead else "alive",
                "reason": p.reason,
                "cause": p.cause,
                "since": p.since,
                "dead_after": p.dead_after,
                "rx_age": round(now - p.rx_at, 1) if p.rx_at is not None else None,
                "handshake_age": round(wall - p.handshake, 1) if p.handshake else None,
                "hold_down": round(max(0.0, p.revived_at + p.hold - now), 1)
                if p.revived_at is not None and not p.dead else 0.0,
                "deaths": p.deaths,
            }
        return out


def sample(live, cfg, counters, log, stats):
    """One look at the watched peers, when live.due(): `counters(names)`
    gives {peer: (rx, tx, last handshake)} (the backend reads them);
    deaths and revivals are logged and counted in `stats`. Returns
    whether any peer changed (the backend then writes what that means)."""
    from .config import dead_after
    live.configure({p.name: dead_after(cfg, p) for p in cfg.peers if p.member or p.public_key})
    if not live.peers or not live.due():
        return False
    changed = False
    for name, (rx, tx, handshake) in counters(list(live.peers)).items():
        got = live.observe(name, rx, tx, handshake)
        if got:
            changed = True
            stats["peer_deaths" if got == "dead" else "peer_revivals"] += 1
            log(f"peer {name}: {got} ({live.peers[name].reason})")
    return changed


class MemberCounters:
    """{peer name: (rx bytes, tx bytes, last handshake)} from each peer's
    member WireGuard device (one device a peer), the devices kept open
    between samples; a member that cannot be read is left out (gone or
    re-created: link following says so)."""

    def __init__(self):
        self.devices = {}  # member name -> its WireGuard device

    def __call__(self, members, names):
        from . import wireguard  # only with --dead-after
        out = {}
        for name in names:
            member = members.get(name)
            if member is None:
                continue
            try:
                dev = self.devices.get(member) or wireguard.open_device(member)
                c = list(dev.counters().values())
            except (wireguard.WireGuardError, OSError):
                self.devices.pop(member, None)
                continue
            self.devices[member] = dev
            if c:
                out[name] = (sum(x[0] for x in c), sum(x[1] for x in c), max(x[2] for x in c))
        return out

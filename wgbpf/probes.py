# SPDX-License-Identifier: GPL-2.0-or-later
"""Link quality by probes (issue 24, part 2): per peer, an ICMP echo to
its tag address out of its member device every `interval` seconds; the
round-trip time as a moving average with its jitter, and the loss over
the last WINDOW probes. Pure: no socket here (the daemon sends and
receives); this module says when to send, what a reply or a silence
means, and what is shown.

Why ICMP echo: the far side answers it with no wgbpf there (its kernel
does, for the tag address on its WireGuard device), it rides the tunnel
like the traffic it stands for, and it costs 28-48 bytes plus
WireGuard's 32. A UDP echo needs a responder on every peer; WireGuard's
own handshakes come every two minutes, too seldom to measure by.

The averages are TCP's (RFC 6298): RTT moves by 1/8 of each sample,
jitter by 1/4 of its distance from the average (the variation RTTVAR
tracks). A probe not answered within TIMEOUT x interval (at least
MIN_TIMEOUT) counts lost.
"""
import collections

WINDOW = 20          # probes the loss ratio is taken over
MAX_PPS = 200        # probes a second, all peers together: intervals stretch to fit
MIN_INTERVAL = 0.05  # seconds: a shorter interval is refused
TIMEOUT = 3          # intervals an answer may take before the probe counts lost
MIN_TIMEOUT = 1.0    # seconds


class ProbeError(ValueError):
    pass


def parse_interval(value, where):
    """A probe interval in seconds from text or a number; 0 or "off": None
    (no probes). Negative, too short or not a number: ProbeError naming it."""
    if value in (None, "off", 0, "0"):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ProbeError(f"{where}: {value!r} is not a probe interval: give seconds, or 0/off") from None
    if seconds != seconds or seconds < MIN_INTERVAL:  # NaN, negative, too short
        raise ProbeError(f"{where}: probe interval {value!r}: at least {MIN_INTERVAL:g} s (or 0/off)")
    return seconds


def stretched(intervals, max_pps=MAX_PPS):
    """{peer: interval} so that all peers together send at most max_pps a
    second: each interval scaled by the same factor when they would send
    more (the peers keep their proportions), else as given."""
    rate = sum(1 / i for i in intervals.values())
    factor = max(1.0, rate / max_pps)
    return {name: i * factor for name, i in intervals.items()}


class Probe:
    """One peer's probes: when the next is due, what is in flight, the
    averages and the loss window."""

    def __init__(self, interval, now=0.0):
        self.interval = interval
        self.next_at = now
        self.seq = 0
        self.sent = {}  # seq -> when
        self.rtt = None
        self.jitter = None
        self.last = None  # the latest sample
        self.outcomes = collections.deque(maxlen=WINDOW)  # True: answered
        self.answered = 0
        self.lost = 0

    def due(self, now):
        return now >= self.next_at

    def send(self, now):
        """The sequence number of a probe sent now; the next falls due."""
        self.seq = (self.seq + 1) & 0xFFFF
        self.sent[self.seq] = now
        self.next_at += self.interval  # in rhythm when a little late
        if self.next_at <= now:        # much later (a busy daemon): one probe, not a burst
            self.next_at = now + self.interval
        return self.seq

    def reply(self, seq, now):
        """An answer: its RTT in seconds, or None (not ours, or too late)."""
        at = self.sent.pop(seq, None)
        if at is None:
            return None
        sample = now - at
        if self.rtt is None:
            self.rtt, self.jitter = sample, sample / 2
        else:
            self.jitter += (abs(self.rtt - sample) - self.jitter) / 4
            self.rtt += (sample - self.rtt) / 8
        self.last = sample
        self.outcomes.append(True)
        self.answered += 1
        return sample

    def expire(self, now):
        """Count lost the probes unanswered for their timeout; returns how many."""
        limit = max(MIN_TIMEOUT, TIMEOUT * self.interval)
        gone = [s for s, at in self.sent.items() if now - at >= limit]
        for s in gone:
            del self.sent[s]
            self.outcomes.append(False)
            self.lost += 1
        return len(gone)

    def loss(self):
        """Lost over the window (0.0 .. 1.0), None before any outcome."""
        if not self.outcomes:
            return None
        return self.outcomes.count(False) / len(self.outcomes)

    def status(self):
        """What `status --json` shows of it (seconds, ratios)."""
        return {"interval": round(self.interval, 3),
                "rtt": None if self.rtt is None else round(self.rtt, 6),
                "jitter": None if self.jitter is None else round(self.jitter, 6),
                "last_rtt": None if self.last is None else round(self.last, 6),
                "loss": None if self.loss() is None else round(self.loss(), 3),
                "answered": self.answered, "lost": self.lost}

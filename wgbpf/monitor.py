# SPDX-License-Identifier: GPL-2.0-or-later
"""`wgbpf monitor`: the data plane's events, read from its pinned ring buffer.

The programs report a packet (bpf/verdict.h, watch()) only while the monitor
map says someone listens, and only until the listener's lease runs out:
the Listener renews it every second and clears it on exit, so a listener killed
by SIGKILL stops the events LEASE_SECONDS later without anyone cleaning up.

The ring buffer is read as libbpf's ring_buffer__consume does, through
mmap(2) of the map fd and plain bpf(2) calls (no BCC import, no compile):
  page 0           consumer position (ours to write)
  page 1           producer position (the kernel's)
  pages 2 ..       the data, mapped twice in a row, so a record that wraps
                   around the end reads as one piece
Each record: a u32 length (bit 31: still being written, bit 30: discarded),
a u32 the kernel uses, then the data, padded to 8 bytes.
"""
import ctypes
import ipaddress
import mmap
import os
import select
import socket
import struct
import time

from . import abi, bpfsys

LEASE_SECONDS = 3
RENEW_SECONDS = 1
BUSY, DISCARD = 1 << 31, 1 << 30
PROTOS = {6: "tcp", 17: "udp", 132: "sctp"}


class MonitorError(Exception):
    """The instance cannot be watched now (another listener, old maps)."""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class RingBuffer:
    """A BPF_MAP_TYPE_RINGBUF map, read through its mmap'ed pages."""

    def __init__(self, fd, size):
        page = mmap.PAGESIZE
        self.fd, self.size, self.mask = fd, size, size - 1
        self.cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self.data = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self.base = page
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)

    def close(self):
        self.cons.close()
        self.data.close()

    def _positions(self):
        return struct.unpack_from("=Q", self.cons, 0)[0], struct.unpack_from("=Q", self.data, 0)[0]

    def skip(self):
        """Forget what is queued (left by an earlier listener)."""
        _, prod = self._positions()
        struct.pack_into("=Q", self.cons, 0, prod)

    def records(self):
        """Every complete record queued now, as bytes; each is consumed."""
        cons, prod = self._positions()
        out = []
        while cons < prod:
            off = self.base + (cons & self.mask)
            length = struct.unpack_from("=I", self.data, off)[0]
            if length & BUSY:
                break
            n = length & ~(BUSY | DISCARD)
            if not length & DISCARD:
                out.append(self.data[off + 8:off + 8 + n])
            cons += (n + 8 + 7) & ~7
        struct.pack_into("=Q", self.cons, 0, cons)
        return out

    def wait(self, timeout):
        """Until records may be queued, or `timeout` seconds."""
        self.poller.poll(int(timeout * 1000))


class Listener:
    """Turns the events on for one instance (its Maps, opened writable) and
    reads them; close() turns them off."""

    def __init__(self, m, mode=abi.Watch.DROPS):
        self.m = m
        self.mode = mode
        self.renewed = 0.0
        self.on = False
        self.ring = None
        cur = self.state()
        if cur.mode != abi.Watch.OFF and cur.until > time.monotonic_ns() and cur.pid != os.getpid() \
                and _alive(cur.pid):
            raise MonitorError(f"already watched by `wgbpf monitor` (pid {cur.pid}): one listener "
                               f"at a time, the events go to one reader")
        self.ring = RingBuffer(m.fds["events"], abi.EVENTS_SIZE)
        self.ring.skip()
        self.held0, self.lost0 = self.held_back()
        self.renew()

    def state(self):
        s = abi.Monitor()
        bpfsys.lookup(self.m.fds["monitor"], ctypes.c_uint32(0), s)
        return s

    def renew(self):
        """Extend the lease; called at least every RENEW_SECONDS."""
        until = time.monotonic_ns() + LEASE_SECONDS * 1_000_000_000
        bpfsys.update(self.m.fds["monitor"], ctypes.c_uint32(0),
                      abi.Monitor(mode=int(self.mode), pid=os.getpid(), until=until))
        self.on = True
        self.renewed = time.monotonic()

    def close(self):
        """Turn the events off (only if the monitor map is still ours)."""
        if self.on and self.state().pid == os.getpid():
            bpfsys.update(self.m.fds["monitor"], ctypes.c_uint32(0), abi.Monitor())
        self.on = False
        if self.ring is not None:
            self.ring.close()
            self.ring = None

    def held_back(self):
        """(events the rate limit suppressed, events a full ring lost),
        summed over CPUs since the instance was created."""
        per = self.m._percpu("monitor_cpu", 0, abi.MonitorCpu)
        return sum(c.suppressed for c in per), sum(c.lost for c in per)

    def events(self, timeout=RENEW_SECONDS):
        """Events queued within `timeout` seconds (renewing the lease)."""
        if time.monotonic() - self.renewed >= RENEW_SECONDS:
            self.renew()
        recs = self.ring.records()
        if not recs:
            self.ring.wait(min(timeout, RENEW_SECONDS))
            recs = self.ring.records()
        size = ctypes.sizeof(abi.Event)
        return [abi.Event.from_buffer_copy(r[:size]) for r in recs if len(r) >= size]


def watched(m):
    """{"mode", "pid"} of a live listener of this instance, or None."""
    s = m.monitor()
    if s.mode == abi.Watch.OFF or s.until <= time.monotonic_ns():
        return None
    return {"mode": abi.Watch(s.mode).name.lower(), "pid": s.pid}


class Names:
    """Names for what an event records by number: devices, peers."""

    def __init__(self, m):
        self.m = m
        self.reload()

    def reload(self):
        """Read the names again: a peer was added, a member re-created."""
        peers = self.m.peers()
        self.peers = {peer_id: p.name.decode() for peer_id, p in peers.items()}
        self.devices = {p.ifindex: p.member.decode() for p in peers.values()}
        cfg = self.m.config()
        if cfg.front_ifindex:
            self.devices[cfg.front_ifindex] = cfg.front.decode()

    def device(self, ifindex):
        if ifindex not in self.devices:
            self.reload()
        if ifindex not in self.devices:
            try:
                self.devices[ifindex] = socket.if_indextoname(ifindex)
            except OSError:
                self.devices[ifindex] = f"#{ifindex}"
        return self.devices[ifindex]

    def peer(self, peer_id):
        if peer_id and peer_id not in self.peers:
            self.reload()
        return self.peers.get(peer_id, f"#{peer_id}") if peer_id else None


def describe(e, names, mono_to_wall):
    """One event as a dict (what --json prints)."""
    n = 4 if e.family == abi.AF_INET else 16
    addr = (lambda a: str(ipaddress.ip_address(bytes(a[:n])))) if e.family in (abi.AF_INET, abi.AF_INET6) \
        else (lambda a: None)
    reason = abi.Reason(e.reason).name.lower() if e.reason in abi.Reason._value2member_map_ else str(e.reason)
    return {
        "time": round(mono_to_wall + e.time / 1e9, 6),
        "device": names.device(e.ifindex),
        "hook": abi.Hook(e.hook).name.lower() if e.hook in abi.Hook._value2member_map_ else str(e.hook),
        "src": addr(e.src), "dst": addr(e.dst),
        "proto": PROTOS.get(e.proto), "sport": socket.ntohs(e.sport) if e.proto else None,
        "dport": socket.ntohs(e.dport) if e.proto else None,
        "len": e.len, "peer": names.peer(e.peer), "reason": reason, "dropped": bool(e.dropped),
    }


def line(d):
    """One event as a line: time, device, source > destination, peer, reason."""
    t = time.strftime("%H:%M:%S", time.localtime(d["time"])) + f".{int(d['time'] * 1e6) % 1000000:06d}"

    def end(addr, port):
        if addr is None:
            return "?"
        if port is None:
            return addr
        return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    proto = f" {d['proto']}" if d["proto"] else ""
    verdict = "dropped" if d["dropped"] else "passed"
    return (f"{t} {d['device']} {end(d['src'], d['sport'])} > {end(d['dst'], d['dport'])}{proto} "
            f"len {d['len']} peer {d['peer'] or '-'} {d['reason']} {verdict}")


def mono_to_wall():
    """What to add to a CLOCK_MONOTONIC time for the wall clock."""
    return time.time() - time.monotonic()

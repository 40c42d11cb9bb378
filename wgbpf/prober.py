# SPDX-License-Identifier: GPL-2.0-or-later
"""The probes' sockets (issue 24, part 2): per peer, a raw ICMP (or
ICMPv6) socket bound to its member device (SO_BINDTODEVICE), sending
echo requests to its tag address and reading the replies that come back
through that member. The rules (when to send, what a reply or a silence
means) are probes.py's; this is the I/O, for the daemon's select loop.

Bound to the member, an IPv4 echo needs no route: with no route out of
the device the kernel takes the tag to be on link (ip_route_output_key_
hash_rcu), and a link-local IPv6 tag is reached by the member's scope.
The far side's kernel answers; its reply passes member_ingress's source
check (a tag is its peer's), so the probe measures the path the traffic
takes. Replies are told apart by the echo id (ours: the pid) and seq.
"""
import ipaddress
import os
import socket
import struct

from .probes import Probe, stretched

SO_BINDTODEVICE = 25
ECHO4, REPLY4, ECHO6, REPLY6 = 8, 0, 128, 129


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo(v6, ident, seq, payload=b"wgbpf-probe"):
    """An ICMP/ICMPv6 echo request (ICMPv6's checksum is the kernel's)."""
    head = struct.pack("!BBHHH", ECHO6 if v6 else ECHO4, 0, 0, ident, seq)
    if v6:
        return head + payload
    return struct.pack("!BBHHH", ECHO4, 0, checksum(head + payload), ident, seq) + payload


def parse_reply(v6, data, ident):
    """The seq of an echo reply of ours in what a raw socket read (IPv4:
    with its IP header), else None."""
    if not v6:
        if len(data) < 20:
            return None
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < 8:
        return None
    kind, _code, _sum, got, seq = struct.unpack_from("!BBHHH", data)
    if kind != (REPLY6 if v6 else REPLY4) or got != ident:
        return None
    return seq


class Prober:
    """The probes of some peers: {name: (member device, tag address,
    interval seconds)}. fds() for select; due(now) sends what is due;
    read(fd, now) takes what came; status() says it."""

    def __init__(self, targets, now=0.0):
        self.ident = os.getpid() & 0xFFFF
        self.probes, self.socks, self.by_fd = {}, {}, {}
        intervals = stretched({name: t[2] for name, t in targets.items()})
        for name, (member, tag, _interval) in targets.items():
            tag = ipaddress.ip_address(tag)
            v6 = tag.version == 6
            s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                              socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, member.encode())
            dest = (str(tag), 0, 0, socket.if_nametoindex(member)) if v6 else (str(tag), 0)
            self.socks[name] = (s, v6, dest)
            self.by_fd[s.fileno()] = name
            self.probes[name] = Probe(intervals[name], now)

    def fds(self):
        return list(self.by_fd)

    def due(self, now):
        """Send each probe that is due; count lost the expired ones.
        Returns the number sent."""
        sent = 0
        for name, p in self.probes.items():
            p.expire(now)
            if p.due(now):
                s, v6, dest = self.socks[name]
                seq = p.send(now)
                try:
                    s.sendto(echo(v6, self.ident, seq), dest)
                    sent += 1
                except OSError:
                    pass  # the member down or gone: the probe counts lost in its time
        return sent

    def read(self, fd, now):
        """Take the replies waiting on one socket."""
        name = self.by_fd.get(fd)
        if name is None:
            return
        s, v6, _dest = self.socks[name]
        while True:
            try:
                data = s.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            seq = parse_reply(v6, data, self.ident)
            if seq is not None:
                self.probes[name].reply(seq, now)

    def next_due(self):
        return min((p.next_at for p in self.probes.values()), default=None)

    def status(self):
        return {name: p.status() for name, p in self.probes.items()}

    def close(self):
        for s, _v6, _dest in self.socks.values():
            s.close()
        self.socks, self.by_fd = {}, {}

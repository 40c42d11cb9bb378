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


def targets(cfg, front_addrs):
    """({peer: (member, tag, interval, source)}, [(peer, why not)]) of the
    config's probed peers. The source is the front's address of the tag's
    family (a member has none, and the kernel would pick an underlay
    address, whose answer comes back outside the tunnel); the tag is the
    peer's first of a family the front has an address of, IPv4 first. A
    link-local tag is of no use: its answer is for the member's scope."""
    from .config import probe_interval
    mine = {}
    for a in front_addrs:
        a = ipaddress.ip_address(a) if not isinstance(a, ipaddress._BaseAddress) else a
        if not a.is_link_local:
            mine.setdefault(a.version, a)
    out, skipped = {}, []
    for p in cfg.peers:
        interval = probe_interval(cfg, p)
        if not interval or not p.member:
            continue
        tag = next((t for v in (4, 6) for t in p.tags if t.version == v and v in mine and not t.is_link_local),
                   None)
        if tag is None:
            skipped.append((p.name, "no tag of a family the front has an address of (link-local tags "
                                    "cannot be probed from the front's address)"))
            continue
        out[p.name] = (p.member, tag, interval, mine[tag.version])
    return out, skipped


class Prober:
    """The probes of some peers: {name: (member device, tag address,
    interval seconds[, source address])}. fds() for select; due(now)
    sends what is due; read(fd, now) takes what came; status() says it.

    Sent by a socket per peer bound to its member; answered to one socket
    per family, bound to no device: with wgbpf attached, member_ingress
    hands what a peer sends on to the front, so the answer arrives there,
    not on the member. An answer is the peer's by its source (the tag),
    id and seq."""

    def __init__(self, targets, now=0.0):
        self.ident = os.getpid() & 0xFFFF
        self.probes, self.socks, self.by_tag, self.recv = {}, {}, {}, {}
        intervals = stretched({name: t[2] for name, t in targets.items()})
        for name, (member, tag, _interval, *source) in targets.items():
            tag = ipaddress.ip_address(tag)
            v6 = tag.version == 6
            s = self._raw(v6)
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, member.encode())
            if source and source[0] is not None:
                s.bind((str(source[0]), 0))
            dest = (str(tag), 0, 0, socket.if_nametoindex(member)) if v6 else (str(tag), 0)
            self.socks[name] = (s, v6, dest)
            self.by_tag[tag] = name
            self.probes[name] = Probe(intervals[name], now)
            if v6 not in self.recv:
                self.recv[v6] = self._raw(v6)
        self.by_fd = {s.fileno(): v6 for v6, s in self.recv.items()}

    @staticmethod
    def _raw(v6):
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                          socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
        s.setblocking(False)
        return s

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
        """Take the answers waiting on one family's socket."""
        v6 = self.by_fd.get(fd)
        if v6 is None:
            return
        s = self.recv[v6]
        while True:
            try:
                data, addr = s.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            seq = parse_reply(v6, data, self.ident)
            if seq is None:
                continue
            name = self.by_tag.get(ipaddress.ip_address(addr[0].split("%")[0]))
            if name is not None:
                self.probes[name].reply(seq, now)

    def next_due(self):
        return min((p.next_at for p in self.probes.values()), default=None)

    def status(self):
        return {name: p.status() for name, p in self.probes.items()}

    def close(self):
        for s, _v6, _dest in self.socks.values():
            s.close()
        for s in self.recv.values():
            s.close()
        self.socks, self.recv, self.by_fd = {}, {}, {}

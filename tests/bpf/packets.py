# SPDX-License-Identifier: GPL-2.0-or-later
"""Packet builders for the BPF tier: plain struct, no scapy.

Layer-3 builders (ipv4, ipv6, ...) return the IP packet as it sits on a
WireGuard/TUN device; eth4/eth6/eth wrap it in the 14-byte Ethernet header
BPF_PROG_TEST_RUN wants for a tc program (addresses are zero: the programs
read from the network header on).

Checksums are left zero: the data plane never looks at them.
"""
import ipaddress
import struct

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60

IP_MF = 0x2000
IP_DF = 0x4000
IPPROTO_SCTP = 132

# tc verdicts (linux/pkt_cls.h)
TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_STOLEN = 4
TC_ACT_REDIRECT = 7

ip = ipaddress.ip_address
net = ipaddress.ip_network


def _addr(a, version):
    a = ipaddress.ip_address(a)
    if a.version != version:
        raise ValueError(f"{a} is not IPv{version}")
    return a.packed


# -- layer 4 ---------------------------------------------------------------
def udp(sport=40000, dport=53, payload=b"hello"):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport=40000, dport=443, payload=b""):
    # 20-byte header, SYN
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0) + payload


def icmp_echo(ident=1, seq=1, payload=b"ping"):
    return struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload


def icmp6_echo(ident=1, seq=1, payload=b"ping"):
    return struct.pack("!BBHHH", 128, 0, 0, ident, seq) + payload


# -- layer 3 ---------------------------------------------------------------
def ipv4(src, dst, proto, payload=b"", *, ihl=5, version=4, ident=0x1234,
         mf=False, df=False, offset8=0, ttl=64, options=b""):
    """An IPv4 packet. `offset8` is the fragment offset in 8-byte units.
    `ihl` is written as given (the options are padded to it when longer)."""
    opts = options.ljust(max(0, ihl * 4 - 20), b"\0") if ihl > 5 else b""
    total = 20 + len(opts) + len(payload)
    frag = (IP_MF if mf else 0) | (IP_DF if df else 0) | (offset8 & 0x1FFF)
    hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | (ihl & 0xF), 0, total & 0xFFFF,
                      ident, frag, ttl, proto, 0, _addr(src, 4), _addr(dst, 4))
    return hdr + opts + payload


def ipv6(src, dst, nexthdr, payload=b"", *, version=6, flow=0, hlim=64):
    hdr = struct.pack("!IHBB16s16s", (version << 28) | (flow & 0xFFFFF), len(payload) & 0xFFFF,
                      nexthdr, hlim, _addr(src, 6), _addr(dst, 6))
    return hdr + payload


def ext_opts(nexthdr, length8=0):
    """Hop-by-hop or destination options header: (length8 + 1) * 8 bytes of PadN."""
    size = (length8 + 1) * 8
    return struct.pack("!BBBB", nexthdr, length8, 1, size - 4) + b"\0" * (size - 4)


def ext_routing(nexthdr):
    """A type-0-shaped routing header with no addresses left (8 bytes)."""
    return struct.pack("!BBBBI", nexthdr, 0, 0, 0, 0)


def ext_fragment(nexthdr, offset8=0, mf=False, ident=0xABCD):
    return struct.pack("!BBHI", nexthdr, 0, (offset8 << 3) | (1 if mf else 0), ident)


def ext_ah(nexthdr, icv=b"\0" * 12):
    """Authentication header: 12 bytes + ICV, length in 4-byte units minus 2."""
    size = 12 + len(icv)
    return struct.pack("!BBHII", nexthdr, size // 4 - 2, 0, 0x100, 1) + icv


# -- frames for BPF_PROG_TEST_RUN ------------------------------------------
def eth(ethertype, payload):
    return b"\0" * 12 + struct.pack("!H", ethertype) + payload


def eth4(ip):
    return eth(ETH_P_IP, ip)


def eth6(ip):
    return eth(ETH_P_IPV6, ip)


def frame(ip):
    """The Ethernet frame for an IP packet, by its version nibble."""
    return eth6(ip) if ip[0] >> 4 == 6 else eth4(ip)


# -- shorthands ------------------------------------------------------------
def ip_udp(src, dst, sport=40000, dport=53, payload=b"hello"):
    """A UDP packet of the version of `dst`."""
    if ipaddress.ip_address(dst).version == 4:
        return ipv4(src, dst, IPPROTO_UDP, udp(sport, dport, payload))
    return ipv6(src, dst, IPPROTO_UDP, udp(sport, dport, payload))


def ip_tcp(src, dst, sport=40000, dport=443):
    if ipaddress.ip_address(dst).version == 4:
        return ipv4(src, dst, IPPROTO_TCP, tcp(sport, dport))
    return ipv6(src, dst, IPPROTO_TCP, tcp(sport, dport))


def udp_frame(src, dst, sport=40000, dport=53, payload=b"hello"):
    return frame(ip_udp(src, dst, sport, dport, payload))


def tcp_frame(src, dst, sport=40000, dport=443):
    return frame(ip_tcp(src, dst, sport, dport))


def arp_request(sender="10.0.0.1", target="10.0.0.2"):
    body = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, b"\x02" * 6,
                       _addr(sender, 4), b"\0" * 6, _addr(target, 4))
    return eth(ETH_P_ARP, body)

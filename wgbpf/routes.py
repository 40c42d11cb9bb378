# SPDX-License-Identifier: GPL-2.0-or-later
"""Kernel routes over raw rtnetlink, parsed with struct.

At full-table scale the cost of syncing is parsing netlink: pyroute2's
message objects handle ~12k routes/s (97 s and 4 GiB for a 1M-route dump),
a lean struct parser of the few attributes wgbpf needs keeps up with the
kernel (~500k/s); tests/bench/bench_sync.py measures both. So routes are
read here; pyroute2 stays for links and tc, where counts are small.

A route is reduced to a KernelRoute: prefix, table, priority, protocol,
realm, its nexthops as (gateway bytes or None, oif), and what else the
kernel keys it by (IPv4 TOS, IPv6 source prefix). Which peers it names is
decided by Tags.resolve().
"""
import collections
import dataclasses
import errno
import os
import socket
import struct
import sys

from .netlink import (HEADER, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, RT_TABLE_MAIN,  # noqa: F401
                      Netlink, align, attrs, check)

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_DELQDISC, RTM_NEWTFILTER, RTM_DELTFILTER = 37, 44, 45
RTM_NEWNEXTHOP, RTM_DELNEXTHOP, RTM_GETNEXTHOP = 104, 105, 106

RTN_UNICAST = 1
# types that live in the same tables under the same keys as unicast routes:
# `ip route replace blackhole P` takes the place of a unicast route to P.
# A local route (`ip route add local P dev lo`, in a followed table) too:
# its packets never leave, and the kernel's source check finds it no
# unicast route (martian). All name no peer: "no peer" entries.
RTN_LOCAL = 2
RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT, RTN_THROW = 6, 7, 8, 9
_NO_NEXTHOP = frozenset((RTN_LOCAL, RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT, RTN_THROW))
RTA_DST, RTA_SRC, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY = 1, 2, 4, 5, 6
RTA_MULTIPATH, RTA_FLOW, RTA_TABLE, RTA_VIA = 9, 11, 15, 18
RTA_NH_ID = 30
# struct nhmsg's attributes (include/uapi/linux/nexthop.h)
NHA_ID, NHA_GROUP, NHA_GROUP_TYPE, NHA_BLACKHOLE, NHA_OIF, NHA_GATEWAY = 1, 2, 3, 4, 5, 6
NHA_FDB, NHA_RES_GROUP = 11, 12
NEXTHOP_GRP_TYPE_MPATH, NEXTHOP_GRP_TYPE_RES = 0, 1
# A route through a kernel nexthop object (RTA_NH_ID: FRR's zebra since 7.3,
# `ip route add P nhid N`) names it by a first hop (NH, id); what follows
# are the hops the kernel expanded beside it (nexthop_compat_mode=1), or
# nothing (0). sync.Nexthops resolves the id: the object is the truth.
NH = b"nh"
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFLA_IFNAME = 3
IFF_UP = 0x1

# multicast groups (legacy bitmask form, enough for these)
RTMGRP_LINK = 0x1
RTMGRP_TC = 0x8
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
RTNLGRP_NEXTHOP = 32  # above 31: joined with NETLINK_ADD_MEMBERSHIP, not the bind mask

_RTMSG = struct.Struct("=BBBBBBBBI")
_RTNH = struct.Struct("=HBBi")
_HEAD = struct.Struct("=IH")  # a message's length and type
_RTATTR = struct.Struct("=HH")
_IFADDRMSG = struct.Struct("=BBBBi")
_IFINFOMSG = struct.Struct("=BxHiII")
_NHMSG = struct.Struct("=BBBBI")
_NHGRP = struct.Struct("=IBBH")  # id, weight - 1, weight_high (Linux 6.12: 16-bit weights), reserved



class KernelRoute(collections.namedtuple(
        "KernelRoute", "family dst dst_len table priority protocol realm nexthops tos src",
        defaults=(0, None))):
    """family: AF_INET/AF_INET6; dst: network address bytes (4 or 16);
    nexthops: ((gateway bytes or None, oif), ...), a multipath hop of
    weight above 1 as (gateway, oif, weight); tos: IPv4 TOS (0: any);
    src: an IPv6 source prefix as (length, address bytes), None for none
    (`from ::/0` is none). A tuple: a million are made per full dump, and a
    frozen dataclass costs twice as much."""
    __slots__ = ()

    @property
    def key(self):
        """What identifies one route in the kernel (for replace and delete):
        IPv4 keys by table, prefix, TOS and metric, IPv6 by table, prefix,
        source prefix and metric."""
        return (self.family, self.dst, self.dst_len, self.table, self.priority, self.tos, self.src)


def _nexthops(buf, a, b):
    """RTA_MULTIPATH: a list of struct rtnexthop, each with its attributes."""
    hops = []
    realm = 0
    while a + _RTNH.size <= b:
        nh_len, _nh_flags, nh_hops, nh_oif = _RTNH.unpack_from(buf, a)
        if nh_len < _RTNH.size:
            break
        gw = None
        for kind, x, y in attrs(buf, a + _RTNH.size, a + nh_len):
            if kind == RTA_GATEWAY:
                gw = bytes(buf[x:y])
            elif kind == RTA_VIA:  # struct rtvia { sa_family; addr[] }
                gw = bytes(buf[x + 2:y])
            elif kind == RTA_FLOW and not realm:
                realm = _U32.unpack_from(buf, x)[0]
        # rtnh_hops is the weight less one (`ip route ... weight 3`): a hop
        # of weight 1 is (gateway, oif), a heavier one carries its weight
        hops.append((gw, nh_oif) if not nh_hops else (gw, nh_oif, nh_hops + 1))
        a += align(nh_len)
    return tuple(hops), realm


_U32 = struct.Struct("=I")
_new = tuple.__new__
_I32 = struct.Struct("=i")
_ZERO = {socket.AF_INET: bytes(4), socket.AF_INET6: bytes(16)}


def parse_route(buf, off, end):
    """One RTM_NEWROUTE/DELROUTE body -> KernelRoute, or None when it is not
    a unicast route (local, broadcast, ... are never steered). Blackhole,
    unreachable, prohibit and throw routes come back without nexthops (they
    name no peer): they share the unicast routes' keys, so one can replace
    a route that did.

    This runs once per route of a full table, so a message laid out like
    one seen before (the same attributes, in the same order, of the same
    sizes: a full table has a handful of layouts) is read by one struct
    unpack of the whole message (_Layout); any other by the attribute walk.
    `buf` is bytes (a memoryview is copied first), so that slices are bytes."""
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    for layout in _LAYOUTS.get(end - off, ()):
        r = layout.parse(buf, off)
        if r is not None:
            return r
    r = _parse_route(buf, off, end)
    if r is not None and r.src is None and (len(r.nexthops) == 1 or (r.nexthops and r.nexthops[0][0] is NH
                                                                     and len(r.nexthops) == 2)):
        _Layout.learn(buf, off, end)
    return r


def _parse_route(buf, off, end):
    """parse_route by walking the attributes (inlined: the common case)."""
    family, dst_len, src_len, tos, table, protocol, _scope, rtype, _flags = _RTMSG.unpack_from(buf, off)
    if family not in _ZERO:
        return None
    if rtype != RTN_UNICAST and rtype not in _NO_NEXTHOP:
        return None
    dst = _ZERO[family]
    gateway = multipath = src = nhid = None
    oif = priority = realm = 0
    unpack_attr = _RTATTR.unpack_from
    u32 = _U32.unpack_from
    p = off + _RTMSG.size
    while p + 4 <= end:
        length, kind = unpack_attr(buf, p)
        if length < 4:
            break
        a = p + 4
        kind &= 0x3FFF
        if kind == RTA_DST:
            dst = buf[a:p + length]
        elif kind == RTA_GATEWAY:
            gateway = buf[a:p + length]
        elif kind == RTA_SRC and src_len:
            src = (src_len, buf[a:p + length])
        elif kind == RTA_OIF:
            oif = _I32.unpack_from(buf, a)[0]
        elif kind == RTA_PRIORITY:
            priority = u32(buf, a)[0]
        elif kind == RTA_TABLE:
            table = u32(buf, a)[0]
        elif kind == RTA_VIA:  # IPv4 via an IPv6 nexthop: struct rtvia
            gateway = buf[a + 2:p + length]
        elif kind == RTA_FLOW:
            realm = u32(buf, a)[0]
        elif kind == RTA_MULTIPATH:
            multipath, nh_realm = _nexthops(buf, a, p + length)
            realm = realm or nh_realm
        elif kind == RTA_NH_ID:
            nhid = u32(buf, a)[0]
        p += (length + 3) & ~3
    if src_len and src is None:
        src = (src_len, _ZERO[family])
    # tuple.__new__: a namedtuple's own __new__ is Python, three times slower
    if nhid is not None:  # the object decides, even for a blackhole one
        hops = ((NH, nhid),) + (multipath or (((gateway, oif),) if gateway is not None or oif else ()))
        return _new(KernelRoute, (family, dst, dst_len, table, priority, protocol, realm, hops, tos, src))
    if rtype != RTN_UNICAST:
        return _new(KernelRoute, (family, dst, dst_len, table, priority, protocol, realm, (), tos, src))
    return _new(KernelRoute, (family, dst, dst_len, table, priority, protocol, realm,
                              multipath or ((gateway, oif),), tos, src))


_LAYOUTS = {}  # message length -> [_Layout]


class _Layout:
    """One route message layout as a struct: the rtmsg, then each
    attribute's header and payload in the order seen. parse() checks the
    family, type, source length and every attribute header (length and
    type) before trusting the payloads, so a message of the same length
    but another layout falls through to the walk. Only unicast routes with
    one nexthop and no source prefix are learnt. A KernelRoute is then a
    few C calls: the unpack, two itemgetters over it and its defaults."""

    FIELDS = {RTA_TABLE: "I", RTA_PRIORITY: "I", RTA_FLOW: "I", RTA_OIF: "i"}
    MAX = 8  # layouts of one length (and 64 in all): a bound, whatever is sent

    def __init__(self, st, check, expect, route, hop, defaults, nh=None):
        self.st, self.check, self.expect = st, check, expect
        self.route, self.hop, self.defaults = route, hop, defaults
        self.nh = nh  # RTA_NH_ID's place in the unpacked values, if the layout has one

    @classmethod
    def learn(cls, buf, off, end):
        from operator import itemgetter
        if len(_LAYOUTS.get(end - off, ())) >= cls.MAX or sum(map(len, _LAYOUTS.values())) >= 64:
            return
        family = buf[off]
        fmt, heads, expect, at = ["=BBBBBBBBI"], [0, 2, 7], [family, 0, RTN_UNICAST], {}
        i, p = 9, off + _RTMSG.size
        while p + 4 <= end:
            length, raw = _RTATTR.unpack_from(buf, p)
            kind, size = raw & 0x3FFF, length - 4
            if length < 4 or kind in (RTA_MULTIPATH, RTA_SRC):
                return
            fmt.append("HH")
            heads += [i, i + 1]
            expect += [length, raw]
            i += 2
            if kind in cls.FIELDS and size == 4:
                fmt.append(cls.FIELDS[kind])
            elif kind == RTA_NH_ID and size == 4:
                fmt.append("I")
            elif kind in (RTA_DST, RTA_GATEWAY) and size == len(_ZERO[family]):
                fmt.append(f"{size}s")
            elif kind == RTA_VIA and size in (6, 18):  # struct rtvia: family, then the address
                fmt.append(f"2x{size - 2}s")
                kind = RTA_GATEWAY
            else:
                fmt.append(f"{size}x")  # what wgbpf does not read (RTA_PREF, RTA_CACHEINFO, ...)
                kind = None
            if kind is not None:
                at[kind] = i
                i += 1
            if align(length) > length:
                fmt.append(f"{align(length) - length}x")
            p += align(length)
        st = struct.Struct("".join(fmt))
        if st.size != end - off:
            return
        # after the unpacked values come the defaults of what is absent:
        # i: no destination (::/0), i+1: zero, i+2: None (no gateway)
        pick = {k: at.get(k) for k in (RTA_DST, RTA_TABLE, RTA_PRIORITY, RTA_FLOW, RTA_GATEWAY, RTA_OIF, RTA_NH_ID)}
        route = itemgetter(0, pick[RTA_DST] or i, 1, pick[RTA_TABLE] or 4, pick[RTA_PRIORITY] or i + 1,
                           5, pick[RTA_FLOW] or i + 1)
        hop = itemgetter(pick[RTA_GATEWAY] or i + 2, pick[RTA_OIF] or i + 1)
        layout = cls(st, itemgetter(*heads), tuple(expect), route, hop, (_ZERO[family], 0, None), pick[RTA_NH_ID])
        if layout.parse(buf, off) == _parse_route(buf, off, end):  # the walk agrees, or it is not used
            _LAYOUTS.setdefault(end - off, []).append(layout)

    def parse(self, buf, off):
        v = self.st.unpack_from(buf, off)
        if self.check(v) != self.expect:
            return None
        v += self.defaults
        if self.nh is None:
            return _new(KernelRoute, self.route(v) + ((self.hop(v),), v[3], None))
        hop = self.hop(v)  # beside the id as the walk reads it: a gateway or a device, if any
        hops = ((NH, v[self.nh]), hop) if hop[0] is not None or hop[1] else ((NH, v[self.nh]),)
        return _new(KernelRoute, self.route(v) + (hops, v[3], None))


class Nexthop(collections.namedtuple("Nexthop", "id family gateway oif blackhole group resilient fdb",
                                      defaults=(None, 0, False, (), False, False))):
    """A kernel nexthop object (RTM_NEWNEXTHOP): a single nexthop (gateway
    bytes or None, oif), a blackhole, or a group of ((member id, weight), ...)
    with weights 1..65536; `resilient`: a resilient group (its members as
    for any group)."""
    __slots__ = ()


def parse_nexthop(buf, off, end):
    """One RTM_NEWNEXTHOP/DELNEXTHOP body -> Nexthop (None without an id)."""
    family, _scope, _protocol, _resvd, _flags = _NHMSG.unpack_from(buf, off)
    nhid, gateway, oif, blackhole, group, resilient, fdb = None, None, 0, False, (), False, False
    for kind, a, b in attrs(buf, off + _NHMSG.size, end):
        if kind == NHA_ID:
            nhid = _U32.unpack_from(buf, a)[0]
        elif kind == NHA_GATEWAY:
            gateway = bytes(buf[a:b])
        elif kind == NHA_OIF:
            oif = _U32.unpack_from(buf, a)[0]
        elif kind == NHA_BLACKHOLE:
            blackhole = True
        elif kind == NHA_GROUP:
            group = tuple((gid, (high << 8 | low) + 1)
                          for gid, low, high, _r in _NHGRP.iter_unpack(bytes(buf[a:a + (b - a) // 8 * 8])))
        elif kind == NHA_GROUP_TYPE:
            resilient = struct.unpack_from("=H", buf, a)[0] == NEXTHOP_GRP_TYPE_RES
        elif kind == NHA_FDB:
            fdb = True
    if nhid is None:
        return None
    return Nexthop(nhid, family, gateway, oif, blackhole, group, resilient, fdb)


def dump_nexthops(nl):
    """Every nexthop object of the namespace (RTM_GETNEXTHOP); none on a
    kernel without them (before 5.3)."""
    try:
        for mtype, buf, off, end in nl.dump(RTM_GETNEXTHOP, 0, _NHMSG.pack(0, 0, 0, 0, 0)):
            if mtype == RTM_NEWNEXTHOP:
                nh = parse_nexthop(buf, off, end)
                if nh is not None:
                    yield nh
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOENT):
            raise


def parse_addr(buf, off, end):
    """RTM_NEWADDR/DELADDR -> (ifindex, local bytes, peer bytes or None)."""
    family, _plen, _flags, _scope, index = _IFADDRMSG.unpack_from(buf, off)
    address = local = None
    for kind, a, b in attrs(buf, off + _IFADDRMSG.size, end):
        if kind == IFA_ADDRESS:
            address = bytes(buf[a:b])
        elif kind == IFA_LOCAL:
            local = bytes(buf[a:b])
    # On a point-to-point device IFA_ADDRESS is the far end: a peer's address.
    peer = address if local is not None and address != local else None
    return index, local or address, peer


def parse_link(buf, off, end):
    """RTM_NEWLINK -> (ifindex, name, up)."""
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(buf, off)
    name = None
    for kind, a, b in attrs(buf, off + _IFINFOMSG.size, end):
        if kind == IFLA_IFNAME:
            name = bytes(buf[a:b]).rstrip(b"\0").decode()
    # administrative state, as attach reads it: `ip link set down` takes a
    # peer out; a TUN without carrier is the WireGuard process's business
    return index, name, bool(flags & IFF_UP)


@dataclasses.dataclass
class Changes:
    """One read's worth of rtnetlink messages, classified once for every
    backend: route changes in arrival order, and what else moved.

    routes     [(KernelRoute, deleted, flags)], in the kernel's order;
               flags: the message's nlmsg_flags (NLM_F_REPLACE, _APPEND,
               _CREATE: where a route of equal key goes, sync.Table.update)
    events     route messages seen (parsed or not: the status counts them)
    links      a link or address changed: devices are looked at again
    hooks      a tc qdisc or filter went, or a filter came: hooks too
    addresses  [(ifindex, local, peer)] of the address messages
    nexthops   [(Nexthop, deleted)] of the nexthop object messages
    steps      the route and nexthop events together, in the kernel's
               order: [(ROUTE, (KernelRoute, deleted, flags)) or
               (NEXTHOP, (Nexthop, deleted)) or (LINK, ifindex): a device
               down or gone, which flushes its nexthop objects there]. A route names an object that
               exists when it is sent, and a deleted object takes its
               routes: applied out of order, a route would be recorded
               against an id the batch deletes and re-creates.
    silent     ifindexes of devices that went down or away, or lost an
               address: the kernel may have removed routes and nexthop
               objects through them without a word (see sync.SILENT)
    """
    routes: list = dataclasses.field(default_factory=list)
    events: int = 0
    links: bool = False
    hooks: bool = False
    addresses: list = dataclasses.field(default_factory=list)
    nexthops: list = dataclasses.field(default_factory=list)
    silent: set = dataclasses.field(default_factory=set)
    steps: list = dataclasses.field(default_factory=list)


ROUTE, NEXTHOP, LINK = "route", "nexthop", "link"  # kinds of Changes.steps


def classify(messages):
    """[(type, buf, off, end)] -> Changes."""
    c = Changes()
    for mtype, buf, off, end in messages:
        if mtype in (RTM_NEWROUTE, RTM_DELROUTE):
            c.events += 1
            r = parse_route(buf, off, end)
            if r is not None:
                # nlmsg_flags: the header's bytes 6-8, before the body (a
                # body with no header before it replaces, as an event would)
                flags = int.from_bytes(buf[off - 10:off - 8], sys.byteorder) if off >= 16 else 0x100
                step = (r, mtype == RTM_DELROUTE, flags)
                c.routes.append(step)
                c.steps.append((ROUTE, step))
        elif mtype in (RTM_NEWLINK, RTM_DELLINK):
            c.links = True
            index, _name, up = parse_link(buf, off, end)
            if mtype == RTM_DELLINK or not up:
                c.silent.add(index)
                c.steps.append((LINK, index))
        elif mtype in (RTM_DELQDISC, RTM_NEWTFILTER, RTM_DELTFILTER):
            c.links = c.hooks = True  # a new filter: maybe another instance's in our place
        elif mtype in (RTM_NEWADDR, RTM_DELADDR):
            c.links = True  # host addresses are martian sources
            a = parse_addr(buf, off, end)
            c.addresses.append(a)
            if mtype == RTM_DELADDR:
                c.silent.add(a[0])
        elif mtype in (RTM_NEWNEXTHOP, RTM_DELNEXTHOP):
            nh = parse_nexthop(buf, off, end)
            if nh is not None:
                step = (nh, mtype == RTM_DELNEXTHOP)
                c.nexthops.append(step)
                c.steps.append((NEXTHOP, step))
    return c


def dump_routes(nl, family):
    """Every unicast route of one family, all tables.

    The walk over each buffer is inlined (a full table is a million
    messages) and reads bytes, not a memoryview: slices of bytes are one
    copy, of a memoryview two."""
    nl.send(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))
    head = _HEAD.unpack_from
    size = HEADER.size
    while True:
        data = nl.read()
        off = 0
        while off + size <= len(data):
            length, mtype = head(data, off)
            if length < size:
                break
            if mtype == RTM_NEWROUTE:
                r = parse_route(data, off + size, off + length)
                if r is not None:
                    yield r
            elif mtype == NLMSG_DONE:
                return
            elif mtype == NLMSG_ERROR:
                check(data, off)
            off += (length + 3) & ~3


def dump_addrs(nl):
    body = _IFADDRMSG.pack(0, 0, 0, 0, 0)
    for mtype, buf, off, end in nl.dump(RTM_GETADDR, 0, body):
        if mtype == RTM_NEWADDR:
            yield parse_addr(buf, off, end)


def dump_links(nl):
    body = _IFINFOMSG.pack(0, 0, 0, 0, 0)
    for mtype, buf, off, end in nl.dump(RTM_GETLINK, 0, body):
        if mtype == RTM_NEWLINK:
            yield parse_link(buf, off, end)


def _read_names(paths, known):
    """Add the `NUMBER NAME` lines of iproute2's files (rt_tables,
    rt_protos) to `known`; the built-in names win."""
    for path in paths:
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split("#", 1)[0].split()
                    if len(parts) >= 2 and parts[0].isdigit():
                        known.setdefault(parts[1], int(parts[0]))
        except OSError:
            continue


def table_id(name):
    """A routing table by number, `main`/`local`/`default`, or a name from
    /etc/iproute2/rt_tables (and rt_tables.d). ValueError names unknowns."""
    s = str(name).strip()
    if s.isdigit():
        n = int(s)
        if not 0 < n < 2 ** 32:
            raise ValueError(f"table {name!r}: a table number is 1 to 4294967295")
        return n
    known = {"main": 254, "local": 255, "default": 253}
    paths = ["/etc/iproute2/rt_tables", "/usr/share/iproute2/rt_tables"]
    for d in ("/etc/iproute2/rt_tables.d", "/usr/share/iproute2/rt_tables.d"):
        if os.path.isdir(d):
            paths += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".conf")]
    _read_names(paths, known)
    if s not in known:
        raise ValueError(f"unknown routing table {name!r} (not a number, and not in /etc/iproute2/rt_tables)")
    return known[s]


def protocol_id(name):
    """A route protocol by number or name (bird, babel, static, ...)."""
    s = str(name).strip()
    if s.isdigit() and int(s) < 256:
        return int(s)
    known = {"kernel": 2, "boot": 3, "static": 4, "gated": 8, "ra": 9, "mrt": 10, "zebra": 11,
             "bird": 12, "dnrouted": 13, "xorp": 14, "ntk": 15, "dhcp": 16, "keepalived": 18,
             "babel": 42, "openr": 99, "bgp": 186, "isis": 187, "ospf": 188, "rip": 189, "eigrp": 192}
    _read_names(("/etc/iproute2/rt_protos", "/usr/share/iproute2/rt_protos"), known)
    if s not in known:
        raise ValueError(f"unknown route protocol {name!r} (a number 0-255 or a name such as bird, babel, static)")
    return known[s]



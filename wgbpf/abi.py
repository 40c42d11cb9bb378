# SPDX-License-Identifier: GPL-2.0-or-later
"""Python mirror of bpf/wgbpf.h: map names, key/value layouts, reasons.

tests/unit/test_abi.py compiles the header and compares every size, offset
and constant here with the C side.
"""
import ctypes
import enum

MAX_ECMP = 8
MAX_PEERS = 1024
MAX_ROUTES4 = 4194304
MAX_ROUTES6 = 1048576
MAX_TAGS = 8192
MAX_LOCALS = 4096
MAX_FORWARDERS = 16384
NAME_LEN = 32
IFNAME_LEN = 16

PEER_UP = 1
OWN_CLSACT = 1
CHECKED = 0x5747

FLOOD_PROG = "front_flood"   # tail-called by front_egress at slot TAIL_FLOOD of `tail`
TAIL_FLOOD = 0

AF_INET = 2
AF_INET6 = 10


# The enums of wgbpf.h, value for value (the small ones on one line each).
Origin = enum.IntEnum("Origin", {"STATIC": 1, "TAG": 2, "KERNEL": 3})
Source = enum.IntEnum("Source", {"DEFAULT": 0, "STRICT": 1, "FEASIBLE": 2, "LOOSE": 3, "OFF": 4})
Lookup = enum.IntEnum("Lookup", {"LPM": 0, "FIB": 1, "DIR24": 2})
Policy = enum.IntEnum("Policy", {"PASS": 0, "DROP": 1})
Watch = enum.IntEnum("Watch", {"OFF": 0, "DROPS": 1, "ALL": 2})
Hook = enum.IntEnum("Hook", {"FRONT_EGRESS": 0, "MEMBER_INGRESS": 1, "MEMBER_EGRESS": 2})

DIR_PER_ELEM = 32
DIR24_ELEMS = (1 << 24) // DIR_PER_ELEM
DIR_GROUP = 0x8000
DIR8_GROUPS = 0x8000
DIR8_ELEMS = DIR8_GROUPS * 256 // DIR_PER_ELEM
MAX_SETS = 0x8000
OPERATOR_SETS = 0x7000
SET_BUCKETS = 64
SetKind = enum.IntEnum("SetKind", {"FREE": 0, "INTERNED": 1, "NEXTHOP": 2})


FIB_LOOKUP_DIRECT = 1 << 0
FIB_LOOKUP_SKIP_NEIGH = 1 << 2
FIB_LOOKUP_TBID = 1 << 3


class Reason(enum.IntEnum):
    STEERED = 0
    FLOODED = 1
    PASSED = 2
    NO_ROUTE = 3
    SPOOFED = 4
    MALFORMED = 5
    PEER_DOWN = 6
    UNKNOWN_MEMBER = 7
    PASSED_FEASIBLE = 8
    PASSED_LOOSE = 9
    PASSED_UNCHECKED = 10
    FIB_FAILED = 11
    MARTIAN_LOCAL = 12
    MARTIAN_UNSPEC = 13
    MARTIAN_LOOPBACK = 14
    MARTIAN_MULTICAST = 15
    MARTIAN_RESERVED = 16
    MARTIAN_MAPPED = 17
    UNVETTED = 18


REASON_MAX = 19


MONITOR_RATE = 1000
MONITOR_BURST = 1000
EVENTS_SIZE = 256 * 1024


def _fields_of(ctype):
    """A maker of ctypes fields of one C type, so that a Structure's _fields_
    read as the C struct's declarations: u32("a", "b") + u64("c")."""
    return lambda *names: [(n, ctype) for n in names]


u8, u16, u32, u64 = map(_fields_of, (ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64))


class Key4(ctypes.Structure):
    _fields_ = u32("prefixlen") + [("addr", ctypes.c_uint8 * 4)]


class Key6(ctypes.Structure):
    _fields_ = u32("prefixlen") + [("addr", ctypes.c_uint8 * 16)]


class Route(ctypes.Structure):
    _fields_ = u32("set") + u8("origin", "prefixlen") + u16("pad")


class Set(ctypes.Structure):
    _fields_ = u8("count", "kind") + u16("pad") + u32("nexthop") + [
        ("members", ctypes.c_uint16 * MAX_ECMP), ("weights", ctypes.c_uint16 * MAX_ECMP),
        ("buckets", ctypes.c_uint8 * SET_BUCKETS)]


class Peer(ctypes.Structure):
    _fields_ = u32("ifindex", "flags", "source", "owned") + [
        ("name", ctypes.c_char * NAME_LEN), ("member", ctypes.c_char * IFNAME_LEN)]


class Tag(ctypes.Structure):
    _fields_ = u32("family") + [("addr", ctypes.c_uint8 * 16)]


class Config(ctypes.Structure):
    _fields_ = u32("front_ifindex", "no_route", "flood_count", "unused", "lookup", "fib_table",
                   "source", "accept_table", "front_owned") + [("front", ctypes.c_char * IFNAME_LEN)]


class DirElem(ctypes.Structure):
    _fields_ = [("entry", ctypes.c_uint16 * DIR_PER_ELEM)]


class Flood(ctypes.Structure):
    _fields_ = u32("ifindex", "peer")


class PeerStats(ctypes.Structure):
    _fields_ = u64("tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "spoofed")


class Monitor(ctypes.Structure):
    _fields_ = u32("mode", "pid") + u64("until")


class MonitorCpu(ctypes.Structure):
    _fields_ = u64("last", "credit", "suppressed", "lost")


class Event(ctypes.Structure):
    _fields_ = (u64("time") + u32("ifindex", "peer", "reason", "len", "family")
                + u8("hook", "dropped", "proto", "pad") + u16("sport", "dport")
                + [("src", ctypes.c_uint8 * 16), ("dst", ctypes.c_uint8 * 16)])


class Empty(ctypes.Structure):
    """A ring buffer's key and value: it has neither (size 0)."""
    _fields_ = []


U32 = ctypes.c_uint32
U64 = ctypes.c_uint64

# enum bpf_map_type and map flags (linux/bpf.h; tests/unit/test_abi.py
# checks them against the system's header)
HASH, ARRAY, PERCPU_ARRAY, LPM_TRIE, RINGBUF = 1, 2, 6, 11, 27
NO_PREALLOC = 1
MMAPABLE = 1 << 10


class MapSpec:
    def __init__(self, name, type, key, value, max_entries, flags=0):
        self.name, self.type, self.key, self.value = name, type, key, value
        self.max_entries, self.flags = max_entries, flags


# Every pinned map, as bpf/maps.h declares it (BPF_TABLE_PINNED).
MAPS = {m.name: m for m in [
    MapSpec("routes4", LPM_TRIE, Key4, Route, MAX_ROUTES4, NO_PREALLOC),
    MapSpec("routes6", LPM_TRIE, Key6, Route, MAX_ROUTES6, NO_PREALLOC),
    MapSpec("accept4", LPM_TRIE, Key4, Route, MAX_ROUTES4, NO_PREALLOC),
    MapSpec("accept6", LPM_TRIE, Key6, Route, MAX_ROUTES6, NO_PREALLOC),
    # full size only in DIR-24-8 mode (48 MiB): see Maps.create
    MapSpec("dir24", ARRAY, U32, DirElem, DIR24_ELEMS, MMAPABLE),
    MapSpec("dir8", ARRAY, U32, DirElem, DIR8_ELEMS, MMAPABLE),
    MapSpec("sets", ARRAY, U32, Set, MAX_SETS),
    MapSpec("peers", ARRAY, U32, Peer, MAX_PEERS),
    MapSpec("members", HASH, U32, U32, MAX_PEERS),
    MapSpec("flood", ARRAY, U32, Flood, MAX_PEERS),
    MapSpec("tags", HASH, Tag, U32, MAX_TAGS),
    MapSpec("locals", HASH, Tag, U32, MAX_LOCALS),
    MapSpec("forwarders", HASH, U32, U32, MAX_FORWARDERS, NO_PREALLOC),
    MapSpec("config", ARRAY, U32, Config, 1),
    MapSpec("counters", PERCPU_ARRAY, U32, U64, REASON_MAX),
    MapSpec("peer_stats", PERCPU_ARRAY, U32, PeerStats, MAX_PEERS),
    MapSpec("monitor", ARRAY, U32, Monitor, 1),
    MapSpec("monitor_cpu", PERCPU_ARRAY, U32, MonitorCpu, 1),
    MapSpec("events", RINGBUF, Empty, Empty, EVENTS_SIZE),
]}

# The two programs and the tc hook each attaches to.
PROGRAMS = {"front_egress": "egress", "member_ingress": "ingress", "member_egress": "egress"}

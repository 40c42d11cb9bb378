// SPDX-License-Identifier: GPL-2.0-or-later
/* wgbpf.h: the one definition of wgbpf's maps, their keys and values, the
 * reasons a packet is counted under, and the tunables.
 *
 * Included by the data plane (bpf/wgbpf.c, compiled by BCC) and by plain C in
 * tests/unit/test_abi.py. Mirrored in Python by wgbpf/abi.py; that test
 * compiles this header with the host compiler and compares every size, offset
 * and enum value, so a change here that is not made there fails the tests.
 *
 * Maps are pinned under /sys/fs/bpf/wgbpf/<front>/<map name>.
 */
#ifndef WGBPF_H
#define WGBPF_H

#include <linux/types.h>

/* Peers one route can name (ECMP). */
#define WGBPF_MAX_ECMP 8

/* Peer ids run from 1 to WGBPF_MAX_PEERS - 1; 0 means "no peer". The
 * verifier walks the flood loop once per slot, keeping every branch it has
 * not taken yet; 8192 pending branches is its limit. */
#ifndef WGBPF_MAX_PEERS
#define WGBPF_MAX_PEERS 1024
#endif

/* LPM tries allocate per prefix (BPF_F_NO_PREALLOC): these are limits, not
 * reservations. A full internet table is ~1M IPv4 and ~230k IPv6 prefixes. */
#ifndef WGBPF_MAX_ROUTES4
#define WGBPF_MAX_ROUTES4 4194304
#endif
#ifndef WGBPF_MAX_ROUTES6
#define WGBPF_MAX_ROUTES6 1048576
#endif
#ifndef WGBPF_MAX_TAGS
#define WGBPF_MAX_TAGS 8192
#endif
/* The host's own addresses (locals), and the devices whose forwarded
 * traffic may leave by a peer (forwarders). */
#define WGBPF_MAX_LOCALS 4096
#define WGBPF_MAX_FORWARDERS 16384

/* skb->tc_index of a packet member_ingress passed on its member (members-
 * only instances): the guard lets such a packet out by another member. */
#define WGBPF_CHECKED 0x5747

/* The flood of link-local multicast is a program of its own, named
 * WGBPF_FLOOD_PROG, that front_egress tail-calls at slot WGBPF_TAIL_FLOOD
 * of the prog array `tail` (filled by each load; pinned beside the
 * programs, not part of the maps). */
#define WGBPF_FLOOD_PROG "front_flood"
#define WGBPF_TAIL_FLOOD 0

/* Device names, as the kernel's IFNAMSIZ. */
#define WGBPF_IFNAME_LEN 16

/* Key of routes4: an IPv4 prefix. prefixlen first, as the LPM trie wants. */
struct wgbpf_key4 {
	__u32 prefixlen;
	__u8 addr[4];
};

/* Key of routes6: an IPv6 prefix. */
struct wgbpf_key6 {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Who wrote a route; shown by `wgbpf dump`, ignored by the data plane. */
enum wgbpf_origin {
	WGBPF_ORIGIN_STATIC = 1, /* wgbpf route add */
	WGBPF_ORIGIN_TAG = 2,    /* a peer's tag address, as a host route */
	WGBPF_ORIGIN_KERNEL = 3, /* the daemon, from the kernel routing table */
};

/* Value of routes4/routes6 (and accept4/accept6, the feasible-path table
 * of the source check): the peer set that owns the prefix, by id (sets).
 * As the kernel's routes name nexthop objects: a million prefixes through
 * one set follow a change of it with one write, of the set. */
struct wgbpf_route {
	__u32 set;      /* an index into sets; 0, or a set of count 0: a "no
			 * peer" entry (the best route is a blackhole or leaves
			 * by no peer): no route for steering and no owner for
			 * the source check, never the covering route's peers */
	__u8 origin;    /* enum wgbpf_origin */
	__u8 prefixlen; /* the key's, so an LPM lookup can tell what matched */
	__u16 pad;
};

/* Peer sets: an array indexed by set id. dir24's u16 entries name them
 * too, so ids stay below WGBPF_DIR_GROUP. Ids below WGBPF_OPERATOR_SETS are
 * the daemon's (one writer: it allocates them without a lock), the rest
 * belong to the operator's writers (`wgbpf route`, the tags of attach),
 * which take them under the instance's writer lock. */
#define WGBPF_MAX_SETS 0x8000
#define WGBPF_OPERATOR_SETS 0x7000
/* A flow hashes to one of WGBPF_SET_BUCKETS buckets, each naming a member:
 * members get buckets in proportion to their weights (to 1/64 of the
 * split). Resilient, as the kernel's resilient nexthop groups: a member
 * that leaves a set hands on its own buckets only, and a member down
 * (or dead) keeps them: the data plane passes its flows on by the hash's
 * other bits (bpf/lookup.h), so no other flow moves, and they all come
 * back with it. A power of two: a mask, not a division, per packet. */
#define WGBPF_SET_BUCKETS 64

/* What a set is, for the control plane (the data plane reads count,
 * members and buckets). */
enum wgbpf_set_kind {
	WGBPF_SET_FREE = 0,
	WGBPF_SET_INTERNED = 1, /* found by content: immutable, shared */
	WGBPF_SET_NEXTHOP = 2,  /* a kernel nexthop object's (nexthop): rewritten in place */
};

/* Value of sets. */
struct wgbpf_set {
	__u8 count;  /* members[0 .. count) are valid; 0: names no peer */
	__u8 kind;   /* enum wgbpf_set_kind */
	__u16 pad;
	__u32 nexthop; /* WGBPF_SET_NEXTHOP: the object's id */
	__u16 members[WGBPF_MAX_ECMP];  /* peer ids */
	__u16 weights[WGBPF_MAX_ECMP];  /* as the route or group says (1 .. 65535) */
	__u8 buckets[WGBPF_SET_BUCKETS]; /* index into members */
};

/* Peer flags. */
#define WGBPF_PEER_UP 1 /* steer and flood to it; else ECMP falls back */

/* What wgbpf created on a device (peer.owned, config.front_owned), so detach
 * removes only that. */
#define WGBPF_OWN_CLSACT 1 /* the clsact qdisc was added by wgbpf */

/* How a member checks the source of what its peer sends. */
enum wgbpf_source {
	WGBPF_SOURCE_DEFAULT = 0,  /* per peer: use wgbpf_config.source */
	WGBPF_SOURCE_STRICT = 1,   /* the best route to the source leads to this peer */
	WGBPF_SOURCE_FEASIBLE = 2, /* strict, or a route in the accept table does */
	WGBPF_SOURCE_LOOSE = 3,    /* the source is routed via any peer */
	WGBPF_SOURCE_OFF = 4,      /* no check (link-local sources still must be tags) */
};

/* Value of peers, an array indexed by peer id. The name is for listings. */
#define WGBPF_NAME_LEN 32
struct wgbpf_peer {
	__u32 ifindex; /* the peer's member device; 0: slot unused */
	__u32 flags;   /* WGBPF_PEER_* */
	__u32 source;  /* enum wgbpf_source */
	__u32 owned;   /* WGBPF_OWN_*: on the member device */
	char name[WGBPF_NAME_LEN];
	char member[WGBPF_IFNAME_LEN]; /* the member device's name: a device is
					* known by name and ifindex */
};

/* Value of flood, an array: the members that are up, densely, so the flood
 * visits only them. Kept by the control plane with the peers' state. */
struct wgbpf_flood {
	__u32 ifindex;
	__u32 peer;
};

/* Key of tags: one tag address of a peer. Link-local sources must be tags;
 * in FIB mode a route's nexthop is looked up here. */
struct wgbpf_tag {
	__u32 family; /* AF_INET or AF_INET6 */
	__u8 addr[16];
};

/* What to do with a packet on the front that no route claims. */
enum wgbpf_policy {
	WGBPF_POLICY_PASS = 0, /* hand it to the kernel (WireGuard answers unreachable) */
	WGBPF_POLICY_DROP = 1,
};

/* Where prefix -> peer answers come from. */
enum wgbpf_lookup {
	WGBPF_LOOKUP_LPM = 0,   /* routes4/routes6, written by `route` and the daemon */
	WGBPF_LOOKUP_FIB = 1,   /* bpf_fib_lookup in the kernel's table; the nexthop
				 * (tags) or output device (members) names the peer */
	WGBPF_LOOKUP_DIR24 = 2, /* IPv4 by DIR-24-8 (dir24/dir8, naming sets), compiled
				 * from routes4 by the control plane; IPv6 as LPM */
};

/* DIR-24-8, as DPDK's rte_lpm: an IPv4 lookup in at most two array reads,
 * where an LPM trie walk of a full table misses cache at every level.
 * dir24 holds one u16 entry per /24: 0 = no route, WGBPF_DIR_GROUP | g =
 * look in group g of dir8 (256 entries by the last byte: the /24 holds
 * longer prefixes), else a set id, an index into sets (as routes4's). Entries are packed
 * WGBPF_DIR_PER_ELEM to an array element (arrays round elements up to 8
 * bytes), and the arrays are BPF_F_MMAPABLE: the control plane writes them
 * as memory. Outside DIR-24-8 mode they are created with one element. */
#define WGBPF_DIR_PER_ELEM 32
#define WGBPF_DIR24_ELEMS ((1 << 24) / WGBPF_DIR_PER_ELEM)
#define WGBPF_DIR_GROUP 0x8000
#define WGBPF_DIR8_GROUPS 0x8000
#define WGBPF_DIR8_ELEMS (WGBPF_DIR8_GROUPS * 256 / WGBPF_DIR_PER_ELEM)

/* Value of dir24 and dir8. */
struct wgbpf_dir_elem {
	__u16 entry[WGBPF_DIR_PER_ELEM];
};

/* bpf_fib_lookup flags, from include/uapi/linux/bpf.h. Defined here because
 * BCC's own headers may predate them (TBID: Linux 6.7); tests/unit/test_abi.py
 * checks the values against the system's uapi header. */
#define WGBPF_FIB_LOOKUP_DIRECT (1U << 0)
#define WGBPF_FIB_LOOKUP_SKIP_NEIGH (1U << 2)
#define WGBPF_FIB_LOOKUP_TBID (1U << 3)

/* Value of config, an array of one. */
struct wgbpf_config {
	__u32 front_ifindex; /* 0: members only, passed on where they arrive */
	__u32 no_route;      /* enum wgbpf_policy, also when all peers are down */
	__u32 flood_count;   /* entries of flood in use */
	__u32 unused;        /* retired (was flags, never read): 0; kept so a
			      * pinned config keeps its layout */
	__u32 lookup;        /* enum wgbpf_lookup */
	__u32 fib_table;     /* FIB mode: the table to look in; 0: main */
	__u32 source;        /* enum wgbpf_source for peers left at DEFAULT */
	__u32 accept_table;  /* FIB mode, feasible: the accept table; 0: none */
	__u32 front_owned;   /* WGBPF_OWN_*: on the front device */
	char front[WGBPF_IFNAME_LEN]; /* the front device's name */
};

/* Per-peer counters, a per-CPU array indexed by peer id. */
struct wgbpf_peer_stats {
	__u64 tx_packets; /* steered or flooded to the peer */
	__u64 tx_bytes;
	__u64 rx_packets; /* accepted from the peer */
	__u64 rx_bytes;
	__u64 spoofed; /* dropped: source not owned by the peer */
};

/* Reasons, one per-CPU counter each (map counters). Append only: numbers
 * are part of the pinned ABI and of wgbpf/abi.py's Reason. */
enum wgbpf_reason {
	WGBPF_STEERED = 0,        /* front egress: redirected to one peer */
	WGBPF_FLOODED = 1,        /* front egress: link-local multicast cloned to members */
	WGBPF_PASSED = 2,         /* member ingress: source owned by the peer */
	WGBPF_NO_ROUTE = 3,       /* front egress: no prefix matched the destination */
	WGBPF_SPOOFED = 4,        /* member ingress: source not owned by the peer */
	WGBPF_MALFORMED = 5,      /* not parseable as IPv4/IPv6: dropped */
	WGBPF_PEER_DOWN = 6,      /* front egress: every peer of the matched set down */
	WGBPF_UNKNOWN_MEMBER = 7, /* member ingress on a device wgbpf has no peer for */
	WGBPF_PASSED_FEASIBLE = 8, /* member ingress: source owned by the peer in the accept table */
	WGBPF_PASSED_LOOSE = 9,   /* member ingress: source routed via some peer (loose) */
	WGBPF_PASSED_UNCHECKED = 10, /* member ingress: source check off for the peer */
	WGBPF_FIB_FAILED = 11,    /* FIB mode: bpf_fib_lookup refused (e.g. forwarding off); dropped at ingress */
	/* Martian sources, dropped at member ingress in every source mode but
	 * off, before any lookup: no route makes them legitimate. */
	WGBPF_MARTIAN_LOCAL = 12,     /* one of the host's own addresses (locals) */
	WGBPF_MARTIAN_UNSPEC = 13,    /* 0.0.0.0/8, :: */
	WGBPF_MARTIAN_LOOPBACK = 14,  /* 127.0.0.0/8, ::1 */
	WGBPF_MARTIAN_MULTICAST = 15, /* 224.0.0.0/4, ff00::/8 */
	WGBPF_MARTIAN_RESERVED = 16,  /* 240.0.0.0/4, with 255.255.255.255 */
	WGBPF_MARTIAN_MAPPED = 17,    /* ::ffff:0:0/96 (IPv4-mapped), ::/96 (IPv4-compatible) */
	/* Forwarded from a device wgbpf has not vetted (not the front, not a
	 * hooked member, not a forwarder): e.g. a re-created member before its
	 * hook. Dropped on the way to a peer: fail closed. */
	WGBPF_UNVETTED = 18,
	WGBPF_REASON_MAX = 19,
};

/* `wgbpf monitor`: packets reported through the events ring buffer while a
 * listener watches. The monitor map (an array of one) says whether anyone
 * does: the fast path reads it and, with mode off, does nothing more. */
enum wgbpf_watch {
	WGBPF_WATCH_OFF = 0,
	WGBPF_WATCH_DROPS = 1, /* dropped packets (TC_ACT_SHOT but the flood's) */
	WGBPF_WATCH_ALL = 2,   /* every packet the programs see */
};

/* Events a CPU may send per second, and in one burst: a flood of drops
 * costs the data plane a token-bucket check per packet, not a ring buffer
 * write and a listener wake-up each. */
#ifndef WGBPF_MONITOR_RATE
#define WGBPF_MONITOR_RATE 1000
#endif
#define WGBPF_MONITOR_BURST 1000
/* The events ring buffer's size in bytes: a power-of-2 number of pages. */
#define WGBPF_EVENTS_SIZE (256 * 1024)

/* Value of monitor, an array of one. The listener renews `until` every
 * second; a listener killed without a chance to clear `mode` (SIGKILL)
 * stops the events when its lease runs out, a few seconds later. */
struct wgbpf_monitor {
	__u32 mode;  /* enum wgbpf_watch */
	__u32 pid;   /* the listener's, for `status` and a second listener's error */
	__u64 until; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) the lease ends at */
};

/* Value of monitor_cpu, a per-CPU array of one: the token bucket. */
struct wgbpf_monitor_cpu {
	__u64 last;       /* bpf_ktime_get_ns() of the last refill */
	__u64 credit;     /* nanoseconds saved up; an event costs 1e9 / RATE */
	__u64 suppressed; /* events the bucket held back */
	__u64 lost;       /* events the full ring buffer refused */
};

/* Where an event was seen. */
enum wgbpf_hook {
	WGBPF_HOOK_FRONT_EGRESS = 0,
	WGBPF_HOOK_MEMBER_INGRESS = 1,
	WGBPF_HOOK_MEMBER_EGRESS = 2,
};

/* One record of the events ring buffer. */
struct wgbpf_event {
	__u64 time;    /* bpf_ktime_get_ns() */
	__u32 ifindex; /* the device the program ran on */
	__u32 peer;    /* steered to / sent by / meant for (peer_down); 0: none */
	__u32 reason;  /* enum wgbpf_reason */
	__u32 len;     /* skb->len */
	__u32 family;  /* AF_INET, AF_INET6; 0: not parsed */
	__u8 hook;     /* enum wgbpf_hook */
	__u8 dropped;  /* 1: the verdict was TC_ACT_SHOT */
	__u8 proto;    /* TCP, UDP, SCTP when the ports are known; else 0 */
	__u8 pad;
	__u16 sport;   /* network order */
	__u16 dport;
	__u8 src[16];  /* IPv4: the first 4 bytes */
	__u8 dst[16];
};

#endif

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

/* Peer ids run from 1 to WGBPF_MAX_PEERS - 1; 0 means "no peer". The flood
 * walks every slot, and the verifier walks the flood: at 1024 slots it gives
 * up ("sequence of 8193 jumps is too complex"), 512 verify in ~1 s. */
#ifndef WGBPF_MAX_PEERS
#define WGBPF_MAX_PEERS 512
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

/* Value of routes4/routes6: the set of peers that own the prefix. */
struct wgbpf_route {
	__u8 count;     /* peers[0 .. count) are valid, 1 .. WGBPF_MAX_ECMP */
	__u8 origin;    /* enum wgbpf_origin */
	__u8 prefixlen; /* the key's, so an LPM lookup can tell what matched */
	__u8 pad;
	__u16 peers[WGBPF_MAX_ECMP];
};

/* Peer flags. */
#define WGBPF_PEER_UP 1 /* steer and flood to it; else ECMP falls back */

/* Value of peers, an array indexed by peer id. The name is for listings. */
#define WGBPF_NAME_LEN 32
struct wgbpf_peer {
	__u32 ifindex; /* the peer's member device; 0: slot unused */
	__u32 flags;   /* WGBPF_PEER_* */
	char name[WGBPF_NAME_LEN];
};

/* Key of tags: one tag address of a peer. Link-local sources must be tags. */
struct wgbpf_tag {
	__u32 family; /* AF_INET or AF_INET6 */
	__u8 addr[16];
};

/* What to do with a packet on the front that no route claims. */
enum wgbpf_policy {
	WGBPF_POLICY_PASS = 0, /* hand it to the kernel (WireGuard answers unreachable) */
	WGBPF_POLICY_DROP = 1,
};

/* Value of config, an array of one. */
struct wgbpf_config {
	__u32 front_ifindex; /* 0: members only, passed on where they arrive */
	__u32 no_route;      /* enum wgbpf_policy, also when all peers are down */
	__u32 peer_limit;    /* highest peer id in use + 1: bounds the flood */
	__u32 flags;
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
	WGBPF_REASON_MAX = 8,
};

#endif

/* wgbpf.c: the data plane, two tc programs sharing the maps of wgbpf.h.
 *
 *   front_egress   (tc egress on the front, e.g. wg0): longest-prefix match on
 *                  the destination picks a peer; the packet is redirected to
 *                  that peer's member device. Link-local multicast is cloned
 *                  to every member that is up.
 *   member_ingress (tc ingress on each member, e.g. wg-alice): the source must
 *                  be owned by the member's peer, else the packet is dropped;
 *                  then it is redirected into the front's ingress, so the host
 *                  sees every peer's traffic arrive on the one front device.
 *   member_egress  (tc egress on each member): the guard alone, for routes
 *                  that leave by a member directly.
 *
 * Fail closed: a member re-created by `wg-quick down/up` comes back with a
 * new ifindex and no filter, and whatever it receives would be forwarded
 * with an unchecked source. So every way out to a peer (front_egress, the
 * flood, member_egress) first checks where a forwarded packet came in
 * (vetted()): by the front (member_ingress checked it), by a member whose
 * member_ingress stamped it (members-only), or by a device the control
 * plane vetted as not a member. Anything else is
 * dropped until the daemon (or attach) has hooked the new device.
 *
 * Packets on WireGuard/TUN devices start at the IP header, while
 * BPF_PROG_TEST_RUN hands tc programs an Ethernet frame; reading with
 * bpf_skb_load_bytes_relative(..., BPF_HDR_START_NET) serves both.
 *
 * Every path ends at one exit that counts its reason, then returns.
 * WGBPF_PIN_DIR is set by wgbpf/dataplane.py: the maps are created and pinned
 * there first, and BCC opens them, so a reload keeps their contents.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/pkt_cls.h>
#include <linux/socket.h>

#include "wgbpf.h"

#ifndef WGBPF_PIN_DIR
#error "WGBPF_PIN_DIR must name the directory holding the pinned maps"
#endif

/* tests/bench defines these to replace a packet's address with a random one
 * drawn from the table, so one BPF_PROG_TEST_RUN packet exercises the
 * lookups as a stream of different flows would. Empty in production. */
#ifndef WGBPF_BENCH_DST
#define WGBPF_BENCH_DST(p)
#endif
#ifndef WGBPF_BENCH_SRC
#define WGBPF_BENCH_SRC(p)
#endif

BPF_TABLE_PINNED("lpm_trie", struct wgbpf_key4, struct wgbpf_route, routes4,
		 WGBPF_MAX_ROUTES4, WGBPF_PIN_DIR "/routes4");
BPF_TABLE_PINNED("lpm_trie", struct wgbpf_key6, struct wgbpf_route, routes6,
		 WGBPF_MAX_ROUTES6, WGBPF_PIN_DIR "/routes6");
BPF_TABLE_PINNED("lpm_trie", struct wgbpf_key4, struct wgbpf_route, accept4,
		 WGBPF_MAX_ROUTES4, WGBPF_PIN_DIR "/accept4");
BPF_TABLE_PINNED("lpm_trie", struct wgbpf_key6, struct wgbpf_route, accept6,
		 WGBPF_MAX_ROUTES6, WGBPF_PIN_DIR "/accept6");
BPF_TABLE_PINNED("array", u32, struct wgbpf_dir_elem, dir24, WGBPF_DIR24_ELEMS,
		 WGBPF_PIN_DIR "/dir24");
BPF_TABLE_PINNED("array", u32, struct wgbpf_dir_elem, dir8, WGBPF_DIR8_ELEMS,
		 WGBPF_PIN_DIR "/dir8");
BPF_TABLE_PINNED("array", u32, struct wgbpf_route, dir_sets, WGBPF_DIR_SETS,
		 WGBPF_PIN_DIR "/dir_sets");
BPF_TABLE_PINNED("array", u32, struct wgbpf_peer, peers, WGBPF_MAX_PEERS,
		 WGBPF_PIN_DIR "/peers");
BPF_TABLE_PINNED("hash", u32, u32, members, WGBPF_MAX_PEERS, WGBPF_PIN_DIR "/members");
BPF_TABLE_PINNED("array", u32, struct wgbpf_flood, flood, WGBPF_MAX_PEERS, WGBPF_PIN_DIR "/flood");
BPF_TABLE_PINNED("hash", struct wgbpf_tag, u32, tags, WGBPF_MAX_TAGS, WGBPF_PIN_DIR "/tags");
BPF_TABLE_PINNED("hash", struct wgbpf_tag, u32, locals, WGBPF_MAX_LOCALS, WGBPF_PIN_DIR "/locals");
BPF_TABLE_PINNED("hash", u32, u32, forwarders, WGBPF_MAX_FORWARDERS, WGBPF_PIN_DIR "/forwarders");
BPF_TABLE_PINNED("array", u32, struct wgbpf_config, config, 1, WGBPF_PIN_DIR "/config");
/* Not pinned: each load fills its own with its own front_flood. */
BPF_PROG_ARRAY(tail, 1);
#define TAIL_FLOOD 0

BPF_TABLE_PINNED("percpu_array", u32, u64, counters, WGBPF_REASON_MAX,
		 WGBPF_PIN_DIR "/counters");
BPF_TABLE_PINNED("percpu_array", u32, struct wgbpf_peer_stats, peer_stats,
		 WGBPF_MAX_PEERS, WGBPF_PIN_DIR "/peer_stats");
BPF_TABLE_PINNED("array", u32, struct wgbpf_monitor, monitor, 1, WGBPF_PIN_DIR "/monitor");
BPF_TABLE_PINNED("percpu_array", u32, struct wgbpf_monitor_cpu, monitor_cpu, 1,
		 WGBPF_PIN_DIR "/monitor_cpu");

/* BCC's BPF_RINGBUF_OUTPUT, pinned: BCC has no pinned form of its own. */
#define WGBPF_RINGBUF_PINNED(_name, _size, _pinned)                          \
	struct _name##_table_t {                                             \
		int key;                                                     \
		u32 leaf;                                                    \
		int (*ringbuf_output)(void *, u64, u64);                     \
		void *(*ringbuf_reserve)(u64);                               \
		void (*ringbuf_discard)(void *, u64);                        \
		void (*ringbuf_submit)(void *, u64);                         \
		u32 max_entries;                                             \
	};                                                                   \
	__attribute__((section("maps/ringbuf:" _pinned))) struct _name##_table_t \
		_name = { .max_entries = (_size) }
WGBPF_RINGBUF_PINNED(events, WGBPF_EVENTS_SIZE, WGBPF_PIN_DIR "/events");

/* What the programs need of a packet. IPv4 addresses use the first 4 bytes. */
struct packet {
	__u32 family;
	__u8 src[16];
	__u8 dst[16];
	__u32 hash;  /* flow hash: addresses, protocol and ports when known */
	__u8 proto;  /* layer 4, for the FIB's own multipath hash */
	__u16 sport; /* network order; 0 when unknown (fragments) */
	__u16 dport;
};

#define IPV6_EXT_MAX 4 /* extension headers walked to find the ports */

static __always_inline __u32 mix(__u32 h, __u32 v)
{
	h ^= v;
	h *= 0x9e3779b1;
	return h ^ (h >> 16);
}

static __always_inline __u32 hash_words(__u32 h, const __u8 *a, int n)
{
	__u32 w;
#pragma unroll
	for (int i = 0; i < 16; i += 4) {
		if (i >= n)
			break;
		__builtin_memcpy(&w, a + i, 4);
		h = mix(h, w);
	}
	return h;
}

/* Adds the layer-4 ports at `off` to the hash. Fragments never get here:
 * all fragments of a datagram must hash alike, and only the first has ports. */
static __always_inline int hash_ports(struct __sk_buff *skb, struct packet *p, __u32 off,
				      __u8 proto)
{
	__u32 ports;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		return 0;
	if (bpf_skb_load_bytes_relative(skb, off, &ports, 4, BPF_HDR_START_NET) < 0)
		return -1; /* a TCP/UDP header cut short */
	p->hash = mix(p->hash, ports);
	p->proto = proto;
	p->sport = ports & 0xffff;
	p->dport = ports >> 16;
	return 0;
}

static __always_inline int parse4(struct __sk_buff *skb, struct packet *p)
{
	struct iphdr ip;

	if (bpf_skb_load_bytes_relative(skb, 0, &ip, sizeof(ip), BPF_HDR_START_NET) < 0)
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;
	p->family = AF_INET;
	__builtin_memcpy(p->src, &ip.saddr, 4);
	__builtin_memcpy(p->dst, &ip.daddr, 4);
	p->hash = mix(mix(mix(0, ip.saddr), ip.daddr), ip.protocol);
	if (ip.frag_off & bpf_htons(0x3fff)) /* MF or an offset: a fragment */
		return 0;
	return hash_ports(skb, p, ip.ihl * 4, ip.protocol);
}

static __always_inline int parse6(struct __sk_buff *skb, struct packet *p)
{
	struct ipv6hdr ip6;
	__u8 ext[2];
	__u32 off = sizeof(ip6);
	__u8 next;

	if (bpf_skb_load_bytes_relative(skb, 0, &ip6, sizeof(ip6), BPF_HDR_START_NET) < 0)
		return -1;
	if (ip6.version != 6)
		return -1;
	p->family = AF_INET6;
	__builtin_memcpy(p->src, &ip6.saddr, 16);
	__builtin_memcpy(p->dst, &ip6.daddr, 16);
	p->hash = hash_words(hash_words(0, p->src, 16), p->dst, 16);
	next = ip6.nexthdr;

	/* The addresses are in the fixed header; extension headers only stand
	 * between us and the ports used for the ECMP hash. */
#pragma unroll
	for (int i = 0; i < IPV6_EXT_MAX; i++) {
		if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
		    next != IPPROTO_DSTOPTS && next != IPPROTO_FRAGMENT && next != IPPROTO_AH)
			break;
		if (bpf_skb_load_bytes_relative(skb, off, ext, 2, BPF_HDR_START_NET) < 0)
			return -1;
		if (next == IPPROTO_FRAGMENT) {
			p->hash = mix(p->hash, ext[0]);
			return 0;
		}
		if (next == IPPROTO_AH)
			off += (ext[1] + 2) * 4;
		else
			off += (ext[1] + 1) * 8;
		next = ext[0];
	}
	p->hash = mix(p->hash, next);
	return hash_ports(skb, p, off, next);
}

static __always_inline int parse(struct __sk_buff *skb, struct packet *p)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return parse4(skb, p);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return parse6(skb, p);
	return -1;
}

/* DIR-24-8: the peer set of an IPv4 address in one or two array reads. */
static __always_inline struct wgbpf_route *dir_lookup(__u8 *addr)
{
	__u32 i24 = ((__u32)addr[0] << 16) | ((__u32)addr[1] << 8) | addr[2];
	__u32 elem = i24 / WGBPF_DIR_PER_ELEM;
	struct wgbpf_dir_elem *e = dir24.lookup(&elem);
	__u32 set;

	if (!e)
		return NULL;
	set = e->entry[i24 % WGBPF_DIR_PER_ELEM];
	if (set & WGBPF_DIR_GROUP) {
		__u32 i8 = ((set & (WGBPF_DIR_GROUP - 1)) << 8) | addr[3];
		elem = i8 / WGBPF_DIR_PER_ELEM;
		e = dir8.lookup(&elem);
		if (!e)
			return NULL;
		set = e->entry[i8 % WGBPF_DIR_PER_ELEM];
	}
	if (!set)
		return NULL;
	return dir_sets.lookup(&set);
}

static __always_inline struct wgbpf_route *route_lookup(struct packet *p, __u8 *addr)
{
	if (p->family == AF_INET) {
		__u32 zero = 0;
		struct wgbpf_config *cfg = config.lookup(&zero);
		if (cfg && cfg->lookup == WGBPF_LOOKUP_DIR24)
			return dir_lookup(addr);
		struct wgbpf_key4 k4 = { .prefixlen = 32 };
		__builtin_memcpy(k4.addr, addr, 4);
		return routes4.lookup(&k4);
	}
	struct wgbpf_key6 k6 = { .prefixlen = 128 };
	__builtin_memcpy(k6.addr, addr, 16);
	return routes6.lookup(&k6);
}

static __always_inline struct wgbpf_route *accept_lookup(struct packet *p)
{
	if (p->family == AF_INET) {
		struct wgbpf_key4 k4 = { .prefixlen = 32 };
		__builtin_memcpy(k4.addr, p->src, 4);
		return accept4.lookup(&k4);
	}
	struct wgbpf_key6 k6 = { .prefixlen = 128 };
	__builtin_memcpy(k6.addr, p->src, 16);
	return accept6.lookup(&k6);
}

static __always_inline __u32 tag_owner(__u32 family, __u8 *addr)
{
	struct wgbpf_tag tag = { .family = family };
	/* IPv4: bytes 4..15 of addr are zero, as in the tags' keys */
	__builtin_memcpy(tag.addr, addr, 16);
	u32 *owner = tags.lookup(&tag);
	return owner ? *owner : 0;
}

/* FIB mode: the kernel's route to `addr` (the destination, or for the
 * source check the source) in `table`, as if the packet came in on
 * `ifindex`; the route's nexthop names a peer by tag, else its output device
 * by member. Returns the peer id, 0 if the route names none, -1 if the
 * kernel refused the lookup (forwarding off on `ifindex`, a bad flag). */
static __always_inline int fib_peer(struct __sk_buff *skb, struct packet *p, int reverse,
				    __u32 ifindex, __u32 table)
{
	struct bpf_fib_lookup fib = {};
	__u32 flags = WGBPF_FIB_LOOKUP_DIRECT | WGBPF_FIB_LOOKUP_SKIP_NEIGH;
	__u8 *to = reverse ? p->src : p->dst;
	__u8 *from = reverse ? p->dst : p->src;
	__u8 nexthop[16] = {};
	__u32 tagged;
	int rc;

	/* a tag is a host route to its peer, whatever the FIB says (and the
	 * FIB does not forward to link-local addresses) */
	tagged = tag_owner(p->family, to);
	if (tagged)
		return tagged;
	fib.family = p->family;
	fib.l4_protocol = p->proto;
	fib.sport = reverse ? p->dport : p->sport;
	fib.dport = reverse ? p->sport : p->dport;
	fib.tot_len = skb->len;
	fib.ifindex = ifindex;
	if (p->family == AF_INET) {
		__builtin_memcpy(&fib.ipv4_src, from, 4);
		__builtin_memcpy(&fib.ipv4_dst, to, 4);
	} else {
		__builtin_memcpy(fib.ipv6_src, from, 16);
		__builtin_memcpy(fib.ipv6_dst, to, 16);
	}
	if (table) {
		/* `tbid` shares its union with h_vlan_proto/h_vlan_TCI; BCC's
		 * struct predates the name */
		__builtin_memcpy(&fib.h_vlan_proto, &table, 4);
		flags |= WGBPF_FIB_LOOKUP_TBID;
	}
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), flags);
	if (rc < 0 || rc == BPF_FIB_LKUP_RET_FWD_DISABLED)
		return -1;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return 0; /* blackhole, unreachable, prohibit, not forwarded... */
	/* the kernel rewrites the destination to the gateway, if the route has
	 * one; an IPv4 route via an IPv6 nexthop comes back as AF_INET6 */
	if (fib.family == AF_INET)
		__builtin_memcpy(nexthop, &fib.ipv4_dst, 4);
	else
		__builtin_memcpy(nexthop, fib.ipv6_dst, 16);
	__u32 id = tag_owner(fib.family, nexthop);
	if (id)
		return id;
	__u32 oif = fib.ifindex;
	u32 *member = members.lookup(&oif);
	return member ? *member : 0;
}

/* ff02::/16 and 224.0.0.0/24: the scope of babel, OSPF and mDNS hellos. */
static __always_inline int link_local_multicast(struct packet *p)
{
	if (p->family == AF_INET)
		return p->dst[0] == 224 && p->dst[1] == 0 && p->dst[2] == 0;
	return p->dst[0] == 0xff && p->dst[1] == 0x02;
}

/* fe80::/10 and 169.254.0.0/16: only meaningful on one link, so only the
 * neighbour's own tag address may appear as such a source. */
static __always_inline int link_local_source(struct packet *p)
{
	if (p->family == AF_INET)
		return p->src[0] == 169 && p->src[1] == 254;
	return p->src[0] == 0xfe && (p->src[1] & 0xc0) == 0x80;
}

/* Sources no route can make legitimate, as the kernel's martian logic and
 * RFC 6890 see them. Not the documentation ranges (192.0.2.0/24,
 * 2001:db8::/32, ...): the kernel forwards them, and labs use them. Returns
 * the reason to drop under, or 0. */
static __always_inline __u32 martian(struct packet *p)
{
	__u8 *a = p->src;

	if (p->family == AF_INET) {
		if (a[0] == 0)
			return WGBPF_MARTIAN_UNSPEC;
		if (a[0] == 127)
			return WGBPF_MARTIAN_LOOPBACK;
		if ((a[0] & 0xf0) == 224)
			return WGBPF_MARTIAN_MULTICAST;
		if ((a[0] & 0xf0) == 240)
			return WGBPF_MARTIAN_RESERVED;
	} else {
		__u32 w[4];
		__builtin_memcpy(w, a, 16);
		if (w[0] == 0 && w[1] == 0) {
			if (w[2] == 0 && w[3] == 0)
				return WGBPF_MARTIAN_UNSPEC;
			if (w[2] == 0 && w[3] == bpf_htonl(1))
				return WGBPF_MARTIAN_LOOPBACK;
			if (w[2] == 0 || w[2] == bpf_htonl(0xffff))
				return WGBPF_MARTIAN_MAPPED;
		}
		if (a[0] == 0xff)
			return WGBPF_MARTIAN_MULTICAST;
	}
	struct wgbpf_tag key = { .family = p->family };
	__builtin_memcpy(key.addr, a, 16); /* IPv4: bytes 4..15 are zero */
	if (locals.lookup(&key))
		return WGBPF_MARTIAN_LOCAL;
	return 0;
}

/* Where a packet leaving by a peer came in: made here (0), by the front
 * (member_ingress passed it and handed it over), or by a device vetted as
 * no member. Never by a member itself: with a front, what member_ingress
 * passes always arrives by the front, so a packet forwarded straight from a
 * member skipped the check (its filter is gone, or a filter ahead of ours
 * took it) and a member's ifindex proves nothing (a moved device keeps
 * it, a new one may reuse it). Members-only instances have no front: there
 * member_ingress stamps what it passed (skb->tc_index, which no packet
 * brings from the wire; set through tc_classid, see member_ingress) and
 * only a stamped packet from a member is let out. */
static __always_inline int vetted(struct __sk_buff *skb, struct wgbpf_config *cfg)
{
	__u32 in = skb->ingress_ifindex;

	if (in == 0)
		return 1;
	if (cfg && cfg->front_ifindex) {
		if (in == cfg->front_ifindex)
			return 1;
	} else if (skb->tc_index == WGBPF_CHECKED && members.lookup(&in)) {
		return 1;
	}
	return forwarders.lookup(&in) != NULL;
}

static __always_inline void count(__u32 reason)
{
	u64 *c = counters.lookup(&reason);
	if (c)
		*c += 1;
}

static __always_inline void count_tx(__u32 id, __u32 len)
{
	struct wgbpf_peer_stats *s = peer_stats.lookup(&id);
	if (s) {
		s->tx_packets++;
		s->tx_bytes += len;
	}
}

/* `wgbpf monitor`: reports one packet to the listener, if one watches
 * (else this is one array read: the fast path when nobody watches). Rate-
 * limited per CPU by a token bucket; `p` may be unparsed (family 0). */
static __always_inline void watch(struct __sk_buff *skb, struct packet *p, __u8 hook,
				  __u32 reason, __u32 peer, int verdict)
{
	__u32 zero = 0;
	struct wgbpf_monitor *mon = monitor.lookup(&zero);
	int dropped = verdict == TC_ACT_SHOT && reason != WGBPF_FLOODED;

	if (!mon || mon->mode == WGBPF_WATCH_OFF)
		return;
	if (!dropped && mon->mode != WGBPF_WATCH_ALL)
		return;
	__u64 now = bpf_ktime_get_ns();
	if (now > mon->until) /* the listener's lease ran out: it died */
		return;
	struct wgbpf_monitor_cpu *c = monitor_cpu.lookup(&zero);
	if (!c)
		return;
	const __u64 cost = 1000000000ULL / WGBPF_MONITOR_RATE;
	__u64 credit = c->credit + (now - c->last);
	if (credit > WGBPF_MONITOR_BURST * cost)
		credit = WGBPF_MONITOR_BURST * cost;
	c->last = now;
	if (credit < cost) {
		c->credit = credit;
		c->suppressed++;
		return;
	}
	c->credit = credit - cost;
	struct wgbpf_event *e = events.ringbuf_reserve(sizeof(struct wgbpf_event));
	if (!e) {
		c->lost++;
		return;
	}
	e->time = now;
	e->ifindex = skb->ifindex;
	e->peer = peer;
	e->reason = reason;
	e->len = skb->len;
	e->family = p->family;
	e->hook = hook;
	e->dropped = dropped;
	e->proto = p->proto;
	e->pad = 0;
	e->sport = p->sport;
	e->dport = p->dport;
	__builtin_memcpy(e->src, p->src, 16);
	__builtin_memcpy(e->dst, p->dst, 16);
	events.ringbuf_submit(e, 0);
}

static __always_inline int no_route_verdict(struct wgbpf_config *cfg)
{
	return cfg && cfg->no_route == WGBPF_POLICY_DROP ? TC_ACT_SHOT : TC_ACT_OK;
}

static __always_inline __u32 peer_if_up(struct wgbpf_route *r, __u32 slot, __u32 *ifindex)
{
	__u32 id = r->peers[slot & (WGBPF_MAX_ECMP - 1)];
	struct wgbpf_peer *peer = peers.lookup(&id);

	if (peer && peer->ifindex && (peer->flags & WGBPF_PEER_UP)) {
		*ifindex = peer->ifindex;
		return id;
	}
	return 0;
}

/* One peer of the set, chosen by flow hash; a down peer passes its flows on
 * to the next one in the set, so only its own flows move. Unrolled by hand:
 * clang will not unroll a loop whose start is a modulo. */
static __always_inline __u32 pick(struct wgbpf_route *r, __u32 hash, __u32 *ifindex)
{
	__u32 n = r->count, start, id;

	if (n == 0 || n > WGBPF_MAX_ECMP)
		return 0;
	start = hash % n;
#define TRY(i)                                                          \
	if ((i) < n) {                                                  \
		id = peer_if_up(r, start + (i) < n ? start + (i) : start + (i) - n, ifindex); \
		if (id)                                                 \
			return id;                                      \
	}
	TRY(0) TRY(1) TRY(2) TRY(3) TRY(4) TRY(5) TRY(6) TRY(7)
#undef TRY
	return 0;
}

/* Tail-called by front_egress for link-local multicast: clones the packet
 * to every member that is up (the flood list). A program of its own, so the
 * verifier walks the WGBPF_MAX_PEERS-step loop once, from one state, not
 * once for every state the parser can leave behind. */
int front_flood(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct wgbpf_config *cfg = config.lookup(&zero);
	__u32 n = cfg ? cfg->flood_count : 0;

	for (int i = 0; i < WGBPF_MAX_PEERS; i++) {
		if (i >= n)
			break;
		__u32 slot = i;
		struct wgbpf_flood *f = flood.lookup(&slot);
		if (!f)
			break;
		if (bpf_clone_redirect(skb, f->ifindex, 0) == 0)
			count_tx(f->peer, skb->len);
	}
	/* the clones are the packet now; the front has no peer for it */
	count(WGBPF_FLOODED);
	return TC_ACT_SHOT;
}

int front_egress(struct __sk_buff *skb)
{
	struct packet p = {};
	__u32 zero = 0, reason, ifindex = 0, id = 0;
	struct wgbpf_config *cfg = config.lookup(&zero);
	struct wgbpf_route *r;
	int verdict;

	if (!vetted(skb, cfg)) {
		reason = WGBPF_UNVETTED;
		verdict = TC_ACT_SHOT;
		goto out;
	}
	if (parse(skb, &p) < 0) {
		reason = WGBPF_MALFORMED;
		verdict = TC_ACT_SHOT;
		goto out;
	}
	WGBPF_BENCH_DST(&p);
	if (link_local_multicast(&p)) {
		watch(skb, &p, WGBPF_HOOK_FRONT_EGRESS, WGBPF_FLOODED, 0, TC_ACT_SHOT);
		tail.call(skb, TAIL_FLOOD);
		/* only reached if the flood program is missing */
		reason = WGBPF_FLOODED;
		verdict = TC_ACT_SHOT;
		goto out;
	}
	if (cfg && cfg->lookup == WGBPF_LOOKUP_FIB) {
		int got = fib_peer(skb, &p, 0, skb->ifindex, cfg->fib_table);
		if (got <= 0) {
			reason = got < 0 ? WGBPF_FIB_FAILED : WGBPF_NO_ROUTE;
			verdict = no_route_verdict(cfg);
			goto out;
		}
		/* the kernel already chose among ECMP nexthops; a down peer
		 * has no sibling to fall back to here */
		id = got;
		struct wgbpf_peer *peer = peers.lookup(&id);
		if (!peer || !peer->ifindex || !(peer->flags & WGBPF_PEER_UP)) {
			reason = WGBPF_PEER_DOWN;
			verdict = no_route_verdict(cfg);
			goto out;
		}
		ifindex = peer->ifindex;
	} else {
		r = route_lookup(&p, p.dst);
		if (!r) {
			reason = WGBPF_NO_ROUTE;
			verdict = no_route_verdict(cfg);
			goto out;
		}
		id = pick(r, p.hash, &ifindex);
		if (!id) {
			id = r->peers[0]; /* for the monitor: whom it was meant for */
			reason = WGBPF_PEER_DOWN;
			verdict = no_route_verdict(cfg);
			goto out;
		}
	}
	count_tx(id, skb->len);
	reason = WGBPF_STEERED;
	verdict = bpf_redirect(ifindex, 0);
out:
	count(reason);
	watch(skb, &p, WGBPF_HOOK_FRONT_EGRESS, reason, id, verdict);
	return verdict;
}

static __always_inline int set_has(struct wgbpf_route *r, __u32 id)
{
	__u32 n = r->count;
#pragma unroll
	for (int i = 0; i < WGBPF_MAX_ECMP; i++) {
		if (i >= n)
			break;
		if (r->peers[i] == id)
			return 1;
	}
	return 0;
}

/* The source check. Returns the reason to count: one of the PASSED
 * reasons, WGBPF_SPOOFED, a MARTIAN one, or WGBPF_FIB_FAILED (dropped too:
 * fail closed). */
static __always_inline __u32 check_source(struct __sk_buff *skb, struct packet *p, __u32 id,
					  struct wgbpf_config *cfg, struct wgbpf_peer *peer)
{
	__u32 mode = peer && peer->source ? peer->source : (cfg ? cfg->source : 0);
	int fib = cfg && cfg->lookup == WGBPF_LOOKUP_FIB;
	/* FIB lookups run as if on the front, where forwarding is on */
	__u32 via = cfg && cfg->front_ifindex ? cfg->front_ifindex : skb->ifindex;
	int owner;

	if (mode != WGBPF_SOURCE_OFF) {
		__u32 bad = martian(p);
		if (bad)
			return bad;
	}
	if (link_local_source(p))
		return tag_owner(p->family, p->src) == id ? WGBPF_PASSED : WGBPF_SPOOFED;
	if (mode == WGBPF_SOURCE_OFF)
		return WGBPF_PASSED_UNCHECKED;

	if (fib) {
		owner = fib_peer(skb, p, 1, via, cfg->fib_table);
		if (owner == id)
			return WGBPF_PASSED;
		if (owner < 0) /* the kernel refused: a misconfiguration, not spoofing */
			return WGBPF_FIB_FAILED;
	} else {
		struct wgbpf_route *r = route_lookup(p, p->src);
		if (r && set_has(r, id))
			return WGBPF_PASSED;
		owner = r && r->count ? 1 : 0;
	}
	if (mode == WGBPF_SOURCE_FEASIBLE) {
		if (fib) {
			if (cfg->accept_table && fib_peer(skb, p, 1, via, cfg->accept_table) == id)
				return WGBPF_PASSED_FEASIBLE;
		} else {
			struct wgbpf_route *a = accept_lookup(p);
			if (a && set_has(a, id))
				return WGBPF_PASSED_FEASIBLE;
		}
	}
	if (mode == WGBPF_SOURCE_LOOSE && owner > 0)
		return WGBPF_PASSED_LOOSE;
	return WGBPF_SPOOFED;
}

int member_ingress(struct __sk_buff *skb)
{
	struct packet p = {};
	__u32 zero = 0, reason, ifindex = skb->ifindex, id = 0;
	struct wgbpf_config *cfg = config.lookup(&zero);
	struct wgbpf_peer_stats *s;
	u32 *member;
	int verdict = TC_ACT_SHOT;

	if (parse(skb, &p) < 0) {
		reason = WGBPF_MALFORMED;
		goto out;
	}
	WGBPF_BENCH_SRC(&p);
	member = members.lookup(&ifindex);
	if (!member) {
		reason = WGBPF_UNKNOWN_MEMBER;
		goto out;
	}
	id = *member;
	s = peer_stats.lookup(&id);
	reason = check_source(skb, &p, id, cfg, peers.lookup(&id));
	if (reason == WGBPF_FIB_FAILED)
		goto out;
	if (reason == WGBPF_SPOOFED || (reason >= WGBPF_MARTIAN_LOCAL && reason <= WGBPF_MARTIAN_MAPPED)) {
		if (s)
			s->spoofed++;
		goto out;
	}
	if (s) {
		s->rx_packets++;
		s->rx_bytes += skb->len;
	}
	if (cfg && cfg->front_ifindex) {
		verdict = bpf_redirect(cfg->front_ifindex, BPF_F_INGRESS);
	} else {
		/* for the guard on the way out: on TC_ACT_OK the kernel sets
		 * skb->tc_index to the minor of the classid, which a
		 * direct-action program gives in tc_classid */
		skb->tc_classid = WGBPF_CHECKED;
		verdict = TC_ACT_OK;
	}
out:
	count(reason);
	watch(skb, &p, WGBPF_HOOK_MEMBER_INGRESS, reason, id, verdict);
	return verdict;
}

/* The guard of front_egress, on the members' own way out. */
int member_egress(struct __sk_buff *skb)
{
	__u32 zero = 0;

	if (vetted(skb, config.lookup(&zero)))
		return TC_ACT_OK;
	count(WGBPF_UNVETTED);
	struct packet p = {};
	parse(skb, &p); /* for the monitor alone; a drop either way */
	__u32 in = skb->ifindex;
	__u32 *member = members.lookup(&in);
	watch(skb, &p, WGBPF_HOOK_MEMBER_EGRESS, WGBPF_UNVETTED, member ? *member : 0, TC_ACT_SHOT);
	return TC_ACT_SHOT;
}

// SPDX-License-Identifier: GPL-2.0-or-later
/* lookup.h: which peer owns an address, by the instance's lookup mode: LPM
 * tries (routes4/routes6), DIR-24-8 arrays (IPv4), the kernel's FIB with the
 * route's nexthop named by a tag; and the choice of one peer of an ECMP set.
 */
#ifndef WGBPF_LOOKUP_H
#define WGBPF_LOOKUP_H

#include "maps.h"
#include "parse.h"

/* The set a route names; NULL for a "no peer" entry (set 0, or a set that
 * names no peer now, as a nexthop object may). */
static __always_inline struct wgbpf_set *set_of(__u32 id)
{
	struct wgbpf_set *s;

	if (!id)
		return NULL;
	s = sets.lookup(&id);
	return s && s->count ? s : NULL;
}

/* DIR-24-8: the peer set of an IPv4 address in one or two array reads. */
static __always_inline struct wgbpf_set *dir_lookup(__u8 *addr)
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
	return set_of(set);
}

/* The set of the longest route to an address; NULL for none, or a route
 * that names no peer. */
static __always_inline struct wgbpf_set *route_lookup(struct packet *p, __u8 *addr)
{
	struct wgbpf_route *r;

	if (p->family == AF_INET) {
		__u32 zero = 0;
		struct wgbpf_config *cfg = config.lookup(&zero);
		if (cfg && cfg->lookup == WGBPF_LOOKUP_DIR24)
			return dir_lookup(addr);
		struct wgbpf_key4 k4 = { .prefixlen = 32 };
		__builtin_memcpy(k4.addr, addr, 4);
		r = routes4.lookup(&k4);
	} else {
		struct wgbpf_key6 k6 = { .prefixlen = 128 };
		__builtin_memcpy(k6.addr, addr, 16);
		r = routes6.lookup(&k6);
	}
	return r ? set_of(r->set) : NULL;
}

static __always_inline struct wgbpf_set *accept_lookup(struct packet *p)
{
	struct wgbpf_route *r;

	if (p->family == AF_INET) {
		struct wgbpf_key4 k4 = { .prefixlen = 32 };
		__builtin_memcpy(k4.addr, p->src, 4);
		r = accept4.lookup(&k4);
	} else {
		struct wgbpf_key6 k6 = { .prefixlen = 128 };
		__builtin_memcpy(k6.addr, p->src, 16);
		r = accept6.lookup(&k6);
	}
	return r ? set_of(r->set) : NULL;
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
 * `ifindex`; the route's output device names a peer if it is a member, its
 * nexthop if it is a tag and the device is the front (`front`, 0 for
 * none): the packet leaves where the kernel sends it, so a tag as gateway
 * out of another device (a member, a LAN) does not name the tag's peer.
 * Returns the peer id, 0 if the route names none, -1 if the kernel refused
 * the lookup (forwarding off on `ifindex`, a bad flag). */
static __always_inline int fib_peer(struct __sk_buff *skb, struct packet *p, int reverse,
				    __u32 ifindex, __u32 table, __u32 front)
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
	__u32 oif = fib.ifindex;
	u32 *member = members.lookup(&oif);
	if (member)
		return *member;
	return front && oif == front ? tag_owner(fib.family, nexthop) : 0;
}

static __always_inline __u32 peer_if_up(struct wgbpf_set *s, __u32 slot, __u32 *ifindex)
{
	__u32 id = s->members[slot & (WGBPF_MAX_ECMP - 1)];
	struct wgbpf_peer *peer = peers.lookup(&id);

	if (slot < s->count && peer && peer->ifindex && (peer->flags & WGBPF_PEER_UP)) {
		*ifindex = peer->ifindex;
		return id;
	}
	return 0;
}

/* One peer of the set, chosen by flow hash: the member of the flow's
 * bucket. Its member down, the flow tries the buckets that other 6-bit
 * slices of the hash name, then the members in turn from the hash: only
 * the down member's flows move, spread over the others by weight (the
 * buckets hold them so), and they all come back with it. Unrolled by
 * hand: clang will not unroll a loop whose start is a modulo. */
static __always_inline __u32 pick(struct wgbpf_set *s, __u32 hash, __u32 *ifindex)
{
	__u32 n = s->count, start, id;

	if (n == 0 || n > WGBPF_MAX_ECMP)
		return 0;
#define BUCKET(shift)                                                   \
	id = peer_if_up(s, s->buckets[(hash >> (shift)) & (WGBPF_SET_BUCKETS - 1)], ifindex); \
	if (id)                                                         \
		return id;
	BUCKET(0) BUCKET(6) BUCKET(12) BUCKET(18)
#undef BUCKET
	start = hash % n;
#define TRY(i)                                                          \
	if ((i) < n) {                                                  \
		id = peer_if_up(s, start + (i) < n ? start + (i) : start + (i) - n, ifindex); \
		if (id)                                                 \
			return id;                                      \
	}
	TRY(0) TRY(1) TRY(2) TRY(3) TRY(4) TRY(5) TRY(6) TRY(7)
#undef TRY
	return 0;
}

/* Whether the set names peer `id`. */
static __always_inline int set_has(struct wgbpf_set *s, __u32 id)
{
	__u32 n = s->count;
#pragma unroll
	for (int i = 0; i < WGBPF_MAX_ECMP; i++) {
		if (i >= n)
			break;
		if (s->members[i] == id)
			return 1;
	}
	return 0;
}

#endif

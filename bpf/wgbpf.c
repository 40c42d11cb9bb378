// SPDX-License-Identifier: GPL-2.0-or-later
/* wgbpf.c: the data plane, tc programs sharing the maps of wgbpf.h.
 *
 *   front_egress   (tc egress on the front, e.g. wg0): longest-prefix match on
 *                  the destination picks a peer; the packet is redirected to
 *                  that peer's member device. Link-local multicast goes to
 *                  front_flood (a tail call), which clones it to every member
 *                  that is up.
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
 * Every path ends at one exit, finish(reason) (verdict.h): the reason
 * decides the verdict and what is counted. front_flood is the end of
 * front_egress's FLOODED path (a tail call from finish), and the one path
 * with no reason is member_egress letting a vetted packet out: the kernel
 * forwards it as if wgbpf were not there.
 *
 * This file is the policy; the pieces are in headers of their own:
 *   maps.h    the maps, pinned under WGBPF_PIN_DIR (set by wgbpf/dataplane.py)
 *   parse.h   the packet: addresses, flow hash, ports, address classes
 *   lookup.h  prefix -> peer: LPM, DIR-24-8, FIB, tags; ECMP choice
 *   verdict.h finish(): reason -> verdict, counters, monitor events
 */
#include "wgbpf.h"
#include "maps.h"
#include "parse.h"
#include "lookup.h"
#include "verdict.h"

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
 * brings from the wire; set through tc_classid, see hand_over) and
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
		owner = fib_peer(skb, p, 1, via, cfg->fib_table, cfg->front_ifindex);
		if (owner == id)
			return WGBPF_PASSED;
		if (owner < 0) /* the kernel refused: a misconfiguration, not spoofing */
			return WGBPF_FIB_FAILED;
	} else {
		struct wgbpf_set *s = route_lookup(p, p->src);
		if (s && set_has(s, id))
			return WGBPF_PASSED;
		owner = s ? 1 : 0;
	}
	if (mode == WGBPF_SOURCE_FEASIBLE) {
		if (fib) {
			if (cfg->accept_table && fib_peer(skb, p, 1, via, cfg->accept_table, cfg->front_ifindex) == id)
				return WGBPF_PASSED_FEASIBLE;
		} else {
			struct wgbpf_set *a = accept_lookup(p);
			if (a && set_has(a, id))
				return WGBPF_PASSED_FEASIBLE;
		}
	}
	if (mode == WGBPF_SOURCE_LOOSE && owner > 0)
		return WGBPF_PASSED_LOOSE;
	return WGBPF_SPOOFED;
}

/* The rest of a FLOODED verdict, tail-called by finish() once front_egress
 * has counted and reported the packet: clones it to every member that is
 * up (the flood list), then drops the original (the clones are the packet
 * now). A program of its own, so the verifier walks the WGBPF_MAX_PEERS-step
 * loop once, from one state, not once for every state the parser can leave
 * behind. */
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
	return TC_ACT_SHOT;
}

int front_egress(struct __sk_buff *skb)
{
	struct packet p = {};
	__u32 zero = 0, reason, ifindex = 0, id = 0;
	struct wgbpf_config *cfg = config.lookup(&zero);
	struct wgbpf_set *s;

	if (!vetted(skb, cfg)) {
		reason = WGBPF_UNVETTED;
		goto out;
	}
	if (parse(skb, &p) < 0) {
		reason = WGBPF_MALFORMED;
		goto out;
	}
	WGBPF_BENCH_DST(&p);
	if (link_local_multicast(&p)) {
		reason = WGBPF_FLOODED;
		goto out;
	}
	if (cfg && cfg->lookup == WGBPF_LOOKUP_FIB) {
		int got = fib_peer(skb, &p, 0, skb->ifindex, cfg->fib_table, cfg->front_ifindex);
		if (got <= 0) {
			reason = got < 0 ? WGBPF_FIB_FAILED : WGBPF_NO_ROUTE;
			goto out;
		}
		/* the kernel already chose among ECMP nexthops; a down peer
		 * has no sibling to fall back to here */
		id = got;
		struct wgbpf_peer *peer = peers.lookup(&id);
		if (!peer || !peer->ifindex || !(peer->flags & WGBPF_PEER_UP)) {
			reason = WGBPF_PEER_DOWN;
			goto out;
		}
		ifindex = peer->ifindex;
	} else {
		s = route_lookup(&p, p.dst);
		/* none, or "no peer": the kernel's best route names no peer (a
		 * blackhole, a LAN device): no route, not the covering route's */
		if (!s) {
			reason = WGBPF_NO_ROUTE;
			goto out;
		}
		id = pick(s, p.hash, &ifindex);
		if (!id) {
			id = s->members[0]; /* for the monitor: whom it was meant for */
			reason = WGBPF_PEER_DOWN;
			goto out;
		}
	}
	/* an exit of its own, with the reason a constant: the compiler folds
	 * finish() to the steering alone (sharing `out` costs ~8 ns a packet) */
	return finish(skb, &p, cfg, WGBPF_HOOK_FRONT_EGRESS, WGBPF_STEERED, id, ifindex);
out:
	return finish(skb, &p, cfg, WGBPF_HOOK_FRONT_EGRESS, reason, id, 0);
}

int member_ingress(struct __sk_buff *skb)
{
	struct packet p = {};
	__u32 zero = 0, reason, ifindex = skb->ifindex, id = 0;
	struct wgbpf_config *cfg = config.lookup(&zero);
	u32 *member;

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
	reason = check_source(skb, &p, id, cfg, peers.lookup(&id));
out:
	return finish(skb, &p, cfg, WGBPF_HOOK_MEMBER_INGRESS, reason, id, 0);
}

/* The guard of front_egress, on the members' own way out. */
int member_egress(struct __sk_buff *skb)
{
	__u32 zero = 0, in = skb->ifindex;
	struct wgbpf_config *cfg = config.lookup(&zero);
	struct packet p = {};
	u32 *member;

	if (vetted(skb, cfg))
		return TC_ACT_OK;
	parse(skb, &p); /* for the monitor alone; a drop either way */
	member = members.lookup(&in);
	return finish(skb, &p, cfg, WGBPF_HOOK_MEMBER_EGRESS, WGBPF_UNVETTED, member ? *member : 0, 0);
}

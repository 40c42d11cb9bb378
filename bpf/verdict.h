// SPDX-License-Identifier: GPL-2.0-or-later
/* verdict.h: the one exit of every program. finish(reason) decides what a
 * reason does with the packet (the verdict), counts it (per reason, and per
 * peer where the reason names one) and tells `wgbpf monitor`; no branch of a
 * program picks a verdict of its own. Model: xdp-tools' xdpfilt_prog.h
 * (`out:`), Cilium's bpf/lib/drop.h.
 */
#ifndef WGBPF_VERDICT_H
#define WGBPF_VERDICT_H

#include <uapi/linux/pkt_cls.h>

#include "maps.h"
#include "parse.h"

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

/* What the no-route policy does with a packet no peer takes. */
static __always_inline int no_route_verdict(struct wgbpf_config *cfg)
{
	return cfg && cfg->no_route == WGBPF_POLICY_DROP ? TC_ACT_SHOT : TC_ACT_OK;
}

/* A source member_ingress passed goes on: into the front's ingress, so the
 * host sees every peer's traffic arrive on the one front device; members
 * only, where it arrived, stamped for the guard on the way out (on
 * TC_ACT_OK the kernel sets skb->tc_index to the minor of the classid,
 * which a direct-action program gives in tc_classid). */
static __always_inline int hand_over(struct __sk_buff *skb, struct wgbpf_config *cfg)
{
	if (cfg && cfg->front_ifindex)
		return bpf_redirect(cfg->front_ifindex, BPF_F_INGRESS);
	skb->tc_classid = WGBPF_CHECKED;
	return TC_ACT_OK;
}

/* The exit: `peer` is the peer steered to, sent by, or meant for (0: none);
 * `to` the member device a STEERED packet is redirected to. A FLOODED
 * packet, counted and reported, goes on to the flood program (front_flood),
 * which clones it and drops the original. */
static __always_inline int finish(struct __sk_buff *skb, struct packet *p, struct wgbpf_config *cfg,
				  __u8 hook, __u32 reason, __u32 peer, __u32 to)
{
	struct wgbpf_peer_stats *s;
	int verdict = TC_ACT_SHOT;

	switch (reason) {
	case WGBPF_STEERED:
		count_tx(peer, skb->len);
		verdict = bpf_redirect(to, 0);
		break;
	case WGBPF_PASSED:
	case WGBPF_PASSED_FEASIBLE:
	case WGBPF_PASSED_LOOSE:
	case WGBPF_PASSED_UNCHECKED:
		s = peer_stats.lookup(&peer);
		if (s) {
			s->rx_packets++;
			s->rx_bytes += skb->len;
		}
		verdict = hand_over(skb, cfg);
		break;
	case WGBPF_NO_ROUTE:
	case WGBPF_PEER_DOWN:
		verdict = no_route_verdict(cfg);
		break;
	case WGBPF_FIB_FAILED:
		/* at the front, as no route; a source the kernel would not
		 * check is dropped (fail closed) */
		if (hook == WGBPF_HOOK_FRONT_EGRESS)
			verdict = no_route_verdict(cfg);
		break;
	case WGBPF_SPOOFED:
	case WGBPF_MARTIAN_LOCAL:
	case WGBPF_MARTIAN_UNSPEC:
	case WGBPF_MARTIAN_LOOPBACK:
	case WGBPF_MARTIAN_MULTICAST:
	case WGBPF_MARTIAN_RESERVED:
	case WGBPF_MARTIAN_MAPPED:
		s = peer_stats.lookup(&peer);
		if (s)
			s->spoofed++;
		break;
	default: /* flooded (the clones are the packet now), malformed,
		  * unknown member, unvetted: dropped */
		break;
	}
	count(reason);
	watch(skb, p, hook, reason, peer, verdict);
	if (reason == WGBPF_FLOODED) /* returns only if the flood program is missing */
		tail.call(skb, WGBPF_TAIL_FLOOD);
	return verdict;
}

#endif

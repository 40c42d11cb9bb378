// SPDX-License-Identifier: GPL-2.0-or-later
/* parse.h: what the programs need of a packet, read from its IP header.
 *
 * Packets on WireGuard/TUN devices start at the IP header, while
 * BPF_PROG_TEST_RUN hands tc programs an Ethernet frame; reading with
 * bpf_skb_load_bytes_relative(..., BPF_HDR_START_NET) serves both.
 */
#ifndef WGBPF_PARSE_H
#define WGBPF_PARSE_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <linux/socket.h>

/* tests/bench defines these to replace a packet's address with a random one
 * drawn from the table, so one BPF_PROG_TEST_RUN packet exercises the
 * lookups as a stream of different flows would. Empty in production. */
#ifndef WGBPF_BENCH_DST
#define WGBPF_BENCH_DST(p)
#endif
#ifndef WGBPF_BENCH_SRC
#define WGBPF_BENCH_SRC(p)
#endif

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

#endif

// SPDX-License-Identifier: GPL-2.0-or-later
/* maps.h: the maps of wgbpf.h as the programs declare them, one line each.
 *
 * Every map but the tail-call table is pinned under WGBPF_PIN_DIR (set by
 * wgbpf/dataplane.py): the control plane creates and pins them first and
 * BCC opens them, so a reload keeps their contents. tests/unit/test_abi.py
 * reads these declarations and checks them against wgbpf/abi.py's MAPS.
 */
#ifndef WGBPF_MAPS_H
#define WGBPF_MAPS_H

#include "wgbpf.h"

#ifndef WGBPF_PIN_DIR
#error "WGBPF_PIN_DIR must name the directory holding the pinned maps"
#endif

/* prefix -> peer set id: the routes (LPM mode), and the feasible-path
 * table of the source check; the sets they (and dir24) name */
BPF_TABLE_PINNED("lpm_trie", struct wgbpf_key4, struct wgbpf_route, routes4,
		 WGBPF_MAX_ROUTES4, WGBPF_PIN_DIR "/routes4");
BPF_TABLE_PINNED("lpm_trie", struct wgbpf_key6, struct wgbpf_route, routes6,
		 WGBPF_MAX_ROUTES6, WGBPF_PIN_DIR "/routes6");
BPF_TABLE_PINNED("lpm_trie", struct wgbpf_key4, struct wgbpf_route, accept4,
		 WGBPF_MAX_ROUTES4, WGBPF_PIN_DIR "/accept4");
BPF_TABLE_PINNED("lpm_trie", struct wgbpf_key6, struct wgbpf_route, accept6,
		 WGBPF_MAX_ROUTES6, WGBPF_PIN_DIR "/accept6");

/* DIR-24-8 mode's IPv4 table, compiled from routes4 */
BPF_TABLE_PINNED("array", u32, struct wgbpf_dir_elem, dir24, WGBPF_DIR24_ELEMS,
		 WGBPF_PIN_DIR "/dir24");
BPF_TABLE_PINNED("array", u32, struct wgbpf_dir_elem, dir8, WGBPF_DIR8_ELEMS,
		 WGBPF_PIN_DIR "/dir8");
BPF_TABLE_PINNED("array", u32, struct wgbpf_set, sets, WGBPF_MAX_SETS, WGBPF_PIN_DIR "/sets");

/* the peers, their devices and addresses */
BPF_TABLE_PINNED("array", u32, struct wgbpf_peer, peers, WGBPF_MAX_PEERS,
		 WGBPF_PIN_DIR "/peers");
BPF_TABLE_PINNED("hash", u32, u32, members, WGBPF_MAX_PEERS, WGBPF_PIN_DIR "/members");
BPF_TABLE_PINNED("array", u32, struct wgbpf_flood, flood, WGBPF_MAX_PEERS, WGBPF_PIN_DIR "/flood");
BPF_TABLE_PINNED("hash", struct wgbpf_tag, u32, tags, WGBPF_MAX_TAGS, WGBPF_PIN_DIR "/tags");

/* the host: its own addresses (martian sources), the devices vetted as no member */
BPF_TABLE_PINNED("hash", struct wgbpf_tag, u32, locals, WGBPF_MAX_LOCALS, WGBPF_PIN_DIR "/locals");
BPF_TABLE_PINNED("hash", u32, u32, forwarders, WGBPF_MAX_FORWARDERS, WGBPF_PIN_DIR "/forwarders");

BPF_TABLE_PINNED("array", u32, struct wgbpf_config, config, 1, WGBPF_PIN_DIR "/config");

/* Not pinned with the maps: each load fills its own with its own flood
 * program (WGBPF_FLOOD_PROG at WGBPF_TAIL_FLOOD). */
BPF_PROG_ARRAY(tail, WGBPF_TAIL_FLOOD + 1);

/* what the programs count, and what they report to `wgbpf monitor` */
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

#endif

#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The wgbpf demo: build the lab (lab/lab.sh: a hub and spokes alice, bob,
# carol joined by WireGuard), attach wgbpf to the hub, give each spoke its
# prefixes, and show traffic crossing the hub through the front device to the
# right peer, a spoofed packet dropped (as `wgbpf monitor` shows it), per-peer
# rates (`wgbpf top --once`), and what `wgbpf dump` / `status` say.
#
#     alice 10.1.0.0/16 ---\                   /--- bob 10.2.0.0/16
#           fd00:1::/48     wg-alice  wg0  wg-bob    fd00:2::/48
#                            \____ hub ____/
#                                 wg-carol --- carol 10.3.0.0/16, fd00:3::/48
#
# Usage: lab/demo.sh [up|down]    (up is the default; `down` removes it all)
set -euo pipefail
cd "$(dirname "$0")/.."

WGBPF=".venv/bin/wgbpf --netns wgbpf-hub"
step() { printf '\n\033[1;34m### %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

down() {
	if [ -e /run/netns/wgbpf-hub ]; then
		# pins live under the hub namespace's id (wgbpf.maps.pin_dir)
		pins=$(.venv/bin/python -c 'from wgbpf.maps import pin_dir; print(pin_dir("wg0", "wgbpf-hub"))')
		if [ -d "$pins" ]; then
			$WGBPF detach wg0 >/dev/null 2>&1 || rm -rf "$pins"
		fi
	fi
	lab/lab.sh down
}

if [ "${1:-up}" = down ]; then
	down
	exit 0
fi

step "Building the lab: hub + alice, bob, carol over wireguard-go"
down >/dev/null 2>&1 || true
lab/lab.sh up

step "Without wgbpf, the hub's front (wg0) has no WireGuard peers: alice cannot reach bob"
if in_ns wgbpf-alice ping -c1 -W1 10.2.0.1 >/dev/null 2>&1; then
	echo "unexpected: traffic crossed the hub without wgbpf" >&2
	exit 1
fi
echo "alice -> 10.2.0.1: no reply (as expected)"

step "Attaching wgbpf to the hub (front wg0, one member per peer)"
run $WGBPF attach --config lab/demo.toml

step "Routes: each spoke's prefixes to its peer"
for p in 1:alice 2:bob 3:carol; do
	i=${p%%:*} name=${p#*:}
	run $WGBPF route add 10.$i.0.0/16 "$name"
	run $WGBPF route add fd00:$i::/48 "$name"
done

step "Traffic between spokes crosses the hub via wg0 -> the right member"
run in_ns wgbpf-alice ping -c3 -i0.2 -W2 10.2.0.1
run in_ns wgbpf-alice ping -c3 -i0.2 -W2 fd00:3::1
run in_ns wgbpf-carol ping -c3 -i0.2 -W2 10.1.0.1

step "iperf3: alice -> bob through the hub"
in_ns wgbpf-bob iperf3 -s -1 -D >/dev/null
sleep 0.5
run in_ns wgbpf-alice iperf3 -c 10.2.0.1 -t 3 -f m | grep -E "sender|receiver"

step "A spoofed packet: alice sends with bob's address 10.2.0.99 as source; wgbpf monitor shows the drops"
printf '\033[2m$ %s\033[0m\n' "$WGBPF monitor --count 2 &"
timeout 15 $WGBPF monitor --count 2 2>/dev/null &
monitor=$!
sleep 1 # listening before the packets leave
in_ns wgbpf-alice ip addr add 10.2.0.99/32 dev wgs-alice
if in_ns wgbpf-alice ping -c2 -W1 -I 10.2.0.99 10.3.0.1 >/dev/null 2>&1; then
	echo "unexpected: the spoofed ping got through" >&2
	exit 1
fi
in_ns wgbpf-alice ip addr del 10.2.0.99/32 dev wgs-alice
wait $monitor || true
echo "alice (as 10.2.0.99) -> 10.3.0.1: dropped at the hub's wg-alice ingress"

step "wgbpf top --once: per-peer rates over a second, while alice pings bob"
in_ns wgbpf-alice ping -q -i0.01 -w2 10.2.0.1 >/dev/null &
run $WGBPF top --once
wait

step "Which peer gets 10.2.3.4, and a multicast hello?"
run $WGBPF lookup 10.2.3.4
run $WGBPF lookup ff02::1:6

step "wgbpf dump"
run $WGBPF dump

step "wgbpf status"
run $WGBPF status

printf '\nThe lab stays up: try `ip netns exec wgbpf-alice ping 10.3.0.1` or\n'
printf '`.venv/bin/wgbpf --netns wgbpf-hub dump`. Watch it live with\n'
printf '`.venv/bin/wgbpf --netns wgbpf-hub top` (q quits) and\n'
printf '`.venv/bin/wgbpf --netns wgbpf-hub monitor` (dropped packets; --all: every packet).\n'
printf 'Remove it with `make demo-down`.\n'

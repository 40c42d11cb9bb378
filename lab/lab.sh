#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# wgbpf lab: one hub and three spokes (alice=1, bob=2, carol=3) in network
# namespaces, joined by userspace WireGuard (wireguard-go; no kernel module),
# or with LAB_WG=kernel by the kernel's WireGuard module (same names, keys,
# ports, addresses and MTU; `ip link add ... type wireguard`, no processes).
#
#                 +--------------------------- $HUB ----------------------------+
#                 |  $FRONT: front, wireguard-go, NO peers, mtu 1420             |
#                 |        10.255.0.254/32  fd00:ff::1/128  fe80::fe/64          |
#                 |  routes, per peer i:  10.i.0.0/16    dev $FRONT              |
#                 |                       10.255.0.i/32  dev $FRONT              |
#                 |                       fd00:i::/48    dev $FRONT              |
#                 |  ip_forward=1, ipv6 forwarding=1                             |
#                 |                                                              |
#                 |  member devices (one peer each, allowed-ips 0/0 ::/0, no IP) |
#                 |  $MEMBER[1] :51801     $MEMBER[2] :51802   $MEMBER[3] :51803 |
#                 |        |                     |                   |           |
#                 |  vh-alice 198.18.1.1   vh-bob 198.18.2.1  vh-carol 198.18.3.1|
#                 +--------|---------------------|-------------------|-----------+
#                     veth |                veth |              veth |
#                 +--------|--------+  +---------|-------+  +--------|--------+
#                 | vs-alice        |  | vs-bob          |  | vs-carol        |
#                 |   198.18.1.2/24 |  |   198.18.2.2/24 |  |   198.18.3.2/24 |
#                 | $SPOKE[1] :51900|  | $SPOKE[2] :51900|  | $SPOKE[3] :51900|
#                 |   10.255.0.1/32 |  |   10.255.0.2/32 |  |   10.255.0.3/32 |
#                 |   fe80::1/64    |  |   fe80::2/64    |  |   fe80::3/64    |
#                 | lan0 (dummy*)   |  | lan0 (dummy*)   |  | lan0 (dummy*)   |
#                 |   10.1.0.1/16   |  |   10.2.0.1/16   |  |   10.3.0.1/16   |
#                 |   fd00:1::1/48  |  |   fd00:2::1/48  |  |   fd00:3::1/48  |
#                 +--- $NS[alice] --+  +---- $NS[bob] ---+  +--- $NS[carol] --+
#
#   * dummy, or ifb where the kernel lacks CONFIG_DUMMY (same behaviour here)
#
#   spoke i routes: 10.0.0.0/8 dev $SPOKE[i] src 10.i.0.1
#                   fd00::/8   dev $SPOKE[i] src fd00:i::1
#                   10.255.0.254/32 dev $SPOKE[i] src 10.255.0.i
#
# The member tunnels are point-to-point: spoke i <-> $MEMBER[i]. Nothing in
# this script moves packets between a member device and the front device;
# that is wgbpf's job. Without it, spoke-to-spoke traffic dies at the hub.
#
# Names (LAB_ID empty | LAB_ID=X, X matches [a-z0-9]{1,5}):
#   namespaces   wgbpf-hub wgbpf-alice ...   | X-hub X-alice ...
#   front        wg0                         | X-wg0
#   members      wg-alice wg-bob wg-carol    | X-alice X-bob X-carol
#   spokes       wgs-alice wgs-bob wgs-carol | X-s-alice X-s-bob X-s-carol
# wireguard-go's UAPI sockets (/var/run/wireguard/NAME.sock) are shared by all
# namespaces, hence every WireGuard name is unique across labs.
#
# Usage: [LAB_ID=x] [LAB_WG=go|kernel] lab/lab.sh up|down|info|status
#   up      (re)create the lab; tears down a previous instance first
#   down    remove everything (of either mode); exit 0 even if nothing exists
#   info    JSON description of the lab on stdout (works whether up or not)
#   status  short `wg show` of every device; exit 1 if a device is missing
#   recreate DEV  delete the front, a member or a spoke's device and create
#           it again (same name, keys, addresses; new ifindex), as wg-quick
#           down/up does
#   kill DEV  a spoke's WireGuard dies: its wireguard-go killed (SIGKILL), or
#           with LAB_WG=kernel its device deleted; `recreate DEV` revives it
#   LAB_KEEPALIVE=N (up): the spokes send a persistent keepalive every N s
#
# State (keys, pids, wireguard-go logs): /run/wgbpf-lab/${LAB_ID:-default}/

set -euo pipefail

LAB_ID=${LAB_ID:-}
LAB_WG=${LAB_WG:-go}             # go: wireguard-go processes; kernel: the wireguard module
LAB_KEEPALIVE=${LAB_KEEPALIVE:-} # spokes' persistent-keepalive seconds (none by default)
PEERS=(alice bob carol)          # index i = position + 1
WG_RUN=/var/run/wireguard

say() { printf '[lab%s] %s\n' "${LAB_ID:+:$LAB_ID}" "$*" >&2; }
die() { say "error: $*"; exit 1; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
ns_exists() { [[ -e /run/netns/$1 ]]; }

if [[ -n $LAB_ID && ! $LAB_ID =~ ^[a-z0-9]{1,5}$ ]]; then
	die "LAB_ID must match [a-z0-9]{1,5} (got '$LAB_ID')"
fi

[[ $LAB_WG == go || $LAB_WG == kernel ]] || die "LAB_WG must be go or kernel (got '$LAB_WG')"

if [[ -z $LAB_ID ]]; then
	NSP=wgbpf-
	FRONT=wg0
else
	NSP=$LAB_ID-
	FRONT=$LAB_ID-wg0
fi
HUB=${NSP}hub
STATE=/run/wgbpf-lab/${LAB_ID:-default}

declare -A NS MEMBER SPOKE IDX
for k in "${!PEERS[@]}"; do
	p=${PEERS[$k]}
	IDX[$p]=$((k + 1))
	NS[$p]=$NSP$p
	if [[ -z $LAB_ID ]]; then
		MEMBER[$p]=wg-$p
		SPOKE[$p]=wgs-$p
	else
		MEMBER[$p]=$LAB_ID-$p
		SPOKE[$p]=$LAB_ID-s-$p
	fi
done

all_ns() { printf '%s\n' "$HUB"; for p in "${PEERS[@]}"; do printf '%s\n' "${NS[$p]}"; done; }
all_devs() { printf '%s\n' "$FRONT"; for p in "${PEERS[@]}"; do printf '%s\n' "${MEMBER[$p]}" "${SPOKE[$p]}"; done; }

# ---------------------------------------------------------------- down ----

# Is pid a wireguard-go process serving device $2?
is_wggo_for() {
	local pid=$1 dev=$2 comm args
	comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
	[[ $comm == wireguard-go ]] || return 1
	args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
	[[ " $args" == *" $dev " ]]
}

cmd_down() {
	local ns pid dev f sock pids=() left

	# 1. every process inside the lab namespaces
	while read -r ns; do
		ns_exists "$ns" || continue
		for pid in $(ip netns pids "$ns" 2>/dev/null || true); do pids+=("$pid"); done
	done < <(all_ns)

	# 2. wireguard-go pids we recorded (the ns may already be gone by name)
	if [[ -d $STATE ]]; then
		for f in "$STATE"/*.pid; do
			[[ -e $f ]] || continue
			dev=$(basename "$f" .pid)
			pid=$(cat "$f" 2>/dev/null || true)
			[[ $pid =~ ^[0-9]+$ ]] && is_wggo_for "$pid" "$dev" && pids+=("$pid")
		done
	fi

	# 3. stray wireguard-go serving one of our device names, in a non-host netns
	#    (covers a lost state dir); never touches the host namespace.
	local self_net
	self_net=$(readlink /proc/self/ns/net)
	for pid in $(pgrep -x wireguard-go || true); do
		[[ $(readlink "/proc/$pid/ns/net" 2>/dev/null) != "$self_net" ]] || continue
		while read -r dev; do
			if is_wggo_for "$pid" "$dev"; then pids+=("$pid"); break; fi
		done < <(all_devs)
	done

	if ((${#pids[@]})); then
		kill -TERM "${pids[@]}" 2>/dev/null || true
		for _ in $(seq 1 30); do
			left=0
			for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
			((left)) || break
			sleep 0.1
		done
		if ((left)); then kill -KILL "${pids[@]}" 2>/dev/null || true; fi
	fi

	# 4. namespaces (veth pairs, lan0 dummies and kernel WireGuard devices
	#    die with them)
	while read -r ns; do
		ns_exists "$ns" && { ip netns del "$ns" 2>/dev/null || say "warning: could not delete netns $ns"; }
	done < <(all_ns)

	# 5. stale UAPI sockets. `wg show` succeeds only if something still
	#    listens there; such a socket is not ours to remove.
	while read -r dev; do
		sock=$WG_RUN/$dev.sock
		[[ -e $sock ]] || continue
		if wg show "$dev" >/dev/null 2>&1; then
			say "warning: $sock is live (not this lab's process?), leaving it"
		else
			rm -f "$sock"
		fi
	done < <(all_devs)

	rm -rf "$STATE"
	return 0
}

# ------------------------------------------------------------------ up ----

lab_exists() {
	local ns dev
	[[ -d $STATE ]] && return 0
	while read -r ns; do ns_exists "$ns" && return 0; done < <(all_ns)
	while read -r dev; do [[ -e $WG_RUN/$dev.sock ]] && return 0; done < <(all_devs)
	return 1
}

# Kernel mode: the device itself; the module is loaded on demand if it can be.
add_kernel_wg() { # ns dev
	ip -n "$1" link add "$2" type wireguard 2>/dev/null && return 0
	modprobe wireguard 2>/dev/null || true
	ip -n "$1" link add "$2" type wireguard ||
		die "cannot create kernel WireGuard device $2 (no wireguard module? LAB_WG=go uses wireguard-go)"
}

genkey() { # name -> $STATE/name.key, $STATE/name.pub
	(umask 077; wg genkey >"$STATE/$1.key")
	wg pubkey <"$STATE/$1.key" >"$STATE/$1.pub"
}

start_wggo() { # ns dev
	local ns=$1 dev=$2 pid
	# setsid: not in the caller's process group/session, so the lab survives
	# the shell (or test harness) that ran `up`. In a non-job-control
	# background child setsid does not fork, so $! is wireguard-go itself.
	ip netns exec "$ns" setsid wireguard-go -f "$dev" \
		</dev/null >>"$STATE/$dev.log" 2>&1 &
	pid=$!
	echo "$pid" >"$STATE/$dev.pid"
}

wait_sockets() {
	local dev pid n
	while read -r dev; do
		pid=$(cat "$STATE/$dev.pid")
		for ((n = 0; n < 100; n++)); do
			[[ -S $WG_RUN/$dev.sock ]] && break
			kill -0 "$pid" 2>/dev/null || die "wireguard-go for $dev died: $(tail -n 3 "$STATE/$dev.log" 2>/dev/null)"
			sleep 0.05
		done
		[[ -S $WG_RUN/$dev.sock ]] || die "timeout waiting for $WG_RUN/$dev.sock"
	done < <(all_devs)
}

# Common link setup for a wireguard-go TUN device. addrgenmode none: unlike
# the kernel module, wireguard-go's TUN would otherwise get a random
# stable-privacy fe80:: address (and send RS/MLD into the tunnel).
wg_link() { # ns dev
	ip -n "$1" link set dev "$2" addrgenmode none
	ip -n "$1" link set dev "$2" mtu 1420 up
}

setup_front() {
	nsx "$HUB" wg set "$FRONT" private-key "$STATE/front.key"
	wg_link "$HUB" "$FRONT"
	ip -n "$HUB" addr add 10.255.0.254/32 dev "$FRONT"
	ip -n "$HUB" addr add fd00:ff::1/128 dev "$FRONT" nodad
	ip -n "$HUB" addr add fe80::fe/64 dev "$FRONT" nodad
}

setup_member() { # peer
	local p=$1 i=${IDX[$1]}
	nsx "$HUB" wg set "${MEMBER[$p]}" \
		listen-port $((51800 + i)) private-key "$STATE/member-$p.key" \
		peer "$(cat "$STATE/spoke-$p.pub")" \
		allowed-ips 0.0.0.0/0,::/0 endpoint "198.18.$i.2:51900"
	wg_link "$HUB" "${MEMBER[$p]}"
}

setup_spoke() { # peer
	local p=$1 i=${IDX[$1]} ns=${NS[$1]} s=${SPOKE[$1]} ka
	ka=$(cat "$STATE/keepalive" 2>/dev/null || true)
	nsx "$ns" wg set "$s" \
		listen-port 51900 private-key "$STATE/spoke-$p.key" \
		peer "$(cat "$STATE/member-$p.pub")" \
		allowed-ips 0.0.0.0/0,::/0 endpoint "198.18.$i.1:$((51800 + i))" \
		${ka:+persistent-keepalive "$ka"}
	wg_link "$ns" "$s"
	ip -n "$ns" addr add "10.255.0.$i/32" dev "$s"
	ip -n "$ns" addr add "fe80::$i/64" dev "$s" nodad
	ip -n "$ns" route add 10.0.0.0/8 dev "$s" src "10.$i.0.1"
	ip -n "$ns" -6 route add fd00::/8 dev "$s" src "fd00:$i::1"
	ip -n "$ns" route add 10.255.0.254/32 dev "$s" src "10.255.0.$i"
}

# Which peer's spoke device is $1 (empty if none)?
spoke_of() {
	local p
	for p in "${PEERS[@]}"; do [[ ${SPOKE[$p]} == "$1" ]] && echo "$p"; done
	return 0
}

# kill DEV: a spoke's WireGuard dies without a word, as when its machine
# does: wireguard-go killed (its TUN device goes with it), or the kernel
# device deleted. The hub's member keeps sending into the void.
cmd_kill() {
	local dev=${1:-} p pid
	((EUID == 0)) || die "must run as root"
	p=$(spoke_of "$dev")
	[[ -n $p ]] || die "kill: $dev is not a spoke's device"
	if [[ $LAB_WG == kernel ]]; then
		ip -n "${NS[$p]}" link del "$dev"
	else
		pid=$(cat "$STATE/$dev.pid")
		is_wggo_for "$pid" "$dev" && kill -KILL "$pid"
		while kill -0 "$pid" 2>/dev/null; do sleep 0.02; done
		rm -f "$WG_RUN/$dev.sock"
	fi
}

# recreate DEV: delete a hub device (the front or a member) and create it
# again under the same name, as `wg-quick down; wg-quick up` or a
# wireguard-go restart does: same keys and addresses, a new ifindex. Routes
# through it die with it (the kernel's doing), as on a router.
cmd_recreate() {
	local dev=${1:-} p peer="" pid n ns=$HUB spoke
	((EUID == 0)) || die "must run as root"
	for p in "${PEERS[@]}"; do [[ ${MEMBER[$p]} == "$dev" ]] && peer=$p; done
	spoke=$(spoke_of "$dev")
	[[ -n $spoke ]] && ns=${NS[$spoke]}
	[[ -n $peer || -n $spoke || $dev == "$FRONT" ]] || die "recreate: $dev is not the front, a member or a spoke"
	if [[ $LAB_WG == kernel ]]; then
		ip -n "$ns" link del "$dev" 2>/dev/null || [[ -n $spoke ]]  # a killed spoke has none
		add_kernel_wg "$ns" "$dev"
	else
		pid=$(cat "$STATE/$dev.pid")
		is_wggo_for "$pid" "$dev" && kill -TERM "$pid"
		for ((n = 0; n < 100; n++)); do
			ip -n "$ns" link show dev "$dev" >/dev/null 2>&1 || break
			sleep 0.05
		done
		rm -f "$WG_RUN/$dev.sock"
		start_wggo "$ns" "$dev"
		for ((n = 0; n < 100; n++)); do
			[[ -S $WG_RUN/$dev.sock ]] && break
			sleep 0.05
		done
		[[ -S $WG_RUN/$dev.sock ]] || die "timeout waiting for $WG_RUN/$dev.sock"
	fi
	if [[ -n $peer ]]; then
		setup_member "$peer"
	elif [[ -n $spoke ]]; then
		setup_spoke "$spoke"
	else
		setup_front
	fi
}

up_failed() {
	local rc=$?
	trap - EXIT
	say "up failed (rc=$rc), tearing down"
	set +e
	cmd_down
	exit "$rc"
}

cmd_up() {
	local p i ns m s

	((EUID == 0)) || die "must run as root"
	local cmds="ip wg wireguard-go setsid"
	[[ $LAB_WG == kernel ]] && cmds="ip wg"
	for c in $cmds; do
		command -v "$c" >/dev/null || die "missing command: $c"
	done

	if lab_exists; then
		say "lab exists, tearing it down first"
		cmd_down
	fi

	trap up_failed EXIT
	trap 'exit 130' INT TERM

	mkdir -p "$STATE"
	chmod 0700 "$STATE"

	say "namespaces"
	while read -r ns; do
		ip netns add "$ns"
		ip -n "$ns" link set lo up
	done < <(all_ns)
	nsx "$HUB" sysctl -qw net.ipv4.ip_forward=1
	nsx "$HUB" sysctl -qw net.ipv6.conf.all.forwarding=1
	# Peer-to-peer traffic enters and leaves the hub by the front; without
	# this the hub answers every such packet with an ICMP redirect.
	nsx "$HUB" sysctl -qw net.ipv4.conf.all.send_redirects=0

	say "underlay"
	for p in "${PEERS[@]}"; do
		i=${IDX[$p]} ns=${NS[$p]}
		ip link add "vh-$p" netns "$HUB" type veth peer name "vs-$p" netns "$ns"
		ip -n "$HUB" addr add "198.18.$i.1/24" dev "vh-$p"
		ip -n "$ns" addr add "198.18.$i.2/24" dev "vs-$p"
		ip -n "$HUB" link set "vh-$p" up
		ip -n "$ns" link set "vs-$p" up

		# dummy if the kernel has it; otherwise ifb, which behaves the same
		# here (NOARP, carrier on, silently drops what is routed into it).
		ip -n "$ns" link add lan0 type dummy 2>/dev/null ||
			ip -n "$ns" link add lan0 type ifb
		ip -n "$ns" addr add "10.$i.0.1/16" dev lan0
		ip -n "$ns" addr add "fd00:$i::1/48" dev lan0 nodad
		ip -n "$ns" link set lan0 up
	done

	say "keys"
	genkey front
	for p in "${PEERS[@]}"; do
		genkey "member-$p"
		genkey "spoke-$p"
	done

	if [[ $LAB_WG == kernel ]]; then
		say "kernel WireGuard"
		add_kernel_wg "$HUB" "$FRONT"
		for p in "${PEERS[@]}"; do
			add_kernel_wg "$HUB" "${MEMBER[$p]}"
			add_kernel_wg "${NS[$p]}" "${SPOKE[$p]}"
		done
	else
		say "wireguard-go"
		start_wggo "$HUB" "$FRONT"
		for p in "${PEERS[@]}"; do
			start_wggo "$HUB" "${MEMBER[$p]}"
			start_wggo "${NS[$p]}" "${SPOKE[$p]}"
		done
		wait_sockets
	fi

	say "hub"
	setup_front
	for p in "${PEERS[@]}"; do
		i=${IDX[$p]}
		setup_member "$p"
		ip -n "$HUB" route add "10.$i.0.0/16" dev "$FRONT"
		ip -n "$HUB" route add "10.255.0.$i/32" dev "$FRONT"
		ip -n "$HUB" -6 route add "fd00:$i::/48" dev "$FRONT"
	done

	say "spokes"
	echo "$LAB_KEEPALIVE" >"$STATE/keepalive"
	for p in "${PEERS[@]}"; do
		setup_spoke "$p"
	done

	trap - EXIT INT TERM
	say "up ($LAB_WG): hub=$HUB front=$FRONT spokes=$(for p in "${PEERS[@]}"; do printf '%s ' "${NS[$p]}"; done)state=$STATE"
}

# ---------------------------------------------------------------- info ----

cmd_info() {
	local p i sep=""
	printf '{\n'
	printf '  "id": "%s",\n' "$LAB_ID"
	printf '  "wg": "%s",\n' "$LAB_WG"
	printf '  "hub_ns": "%s",\n' "$HUB"
	printf '  "front": "%s",\n' "$FRONT"
	printf '  "front_addr4": "10.255.0.254",\n'
	printf '  "front_addr6": "fd00:ff::1",\n'
	printf '  "peers": [\n'
	for p in "${PEERS[@]}"; do
		i=${IDX[$p]}
		printf '%s    {"name": "%s", "index": %d, "ns": "%s", "member": "%s", "spoke_dev": "%s",\n' \
			"$sep" "$p" "$i" "${NS[$p]}" "${MEMBER[$p]}" "${SPOKE[$p]}"
		printf '     "prefix4": "10.%d.0.0/16", "prefix6": "fd00:%d::/48", "host4": "10.%d.0.1", "host6": "fd00:%d::1",\n' \
			"$i" "$i" "$i" "$i"
		printf '     "tag4": "10.255.0.%d", "tag6": "fe80::%d"}' "$i" "$i"
		sep=$',\n'
	done
	printf '\n  ]\n}\n'
}

# -------------------------------------------------------------- status ----

# One line per device from `wg show DEV dump`. Plain `wg show` is useless
# here: it lists every UAPI socket in /var/run/wireguard, i.e. all labs.
show_dev() { # ns dev
	local ns=$1 dev=$2 out priv pub port fwm now line
	if ! ns_exists "$ns" || ! out=$(nsx "$ns" wg show "$dev" dump 2>/dev/null); then
		printf '  %-12s MISSING\n' "$dev"
		return 1
	fi
	now=$(date +%s)
	{
		read -r priv pub port fwm
		: "$priv" "$fwm"
		printf '  %-12s pub %.8s… port %-5s' "$dev" "$pub" "$port"
		local n=0 ppub psk ep aips hs rx tx ka
		while read -r ppub psk ep aips hs rx tx ka; do
			: "$psk" "$ka"
			n=$((n + 1))
			if ((hs == 0)); then hs=never; else hs="$((now - hs))s ago"; fi
			printf '  peer %.8s… ep %s allowed %s hs %s rx %s tx %s' "$ppub" "$ep" "$aips" "$hs" "$rx" "$tx"
		done
		((n)) || printf '  no peers'
		printf '\n'
	} <<<"$out"
	line=$(ip -n "$ns" -br addr show dev "$dev" 2>/dev/null | awk '{$1=""; print}') || true
	printf '  %-12s %s\n' "" "${line# }"
}

cmd_status() {
	local p rc=0
	printf '%s\n' "$HUB"
	show_dev "$HUB" "$FRONT" || rc=1
	for p in "${PEERS[@]}"; do show_dev "$HUB" "${MEMBER[$p]}" || rc=1; done
	for p in "${PEERS[@]}"; do
		printf '%s\n' "${NS[$p]}"
		show_dev "${NS[$p]}" "${SPOKE[$p]}" || rc=1
	done
	return "$rc"
}

# ------------------------------------------------------------------------

case "${1:-}" in
up) cmd_up ;;
down) ((EUID == 0)) || die "must run as root"; cmd_down ;;
info) cmd_info ;;
status) cmd_status ;;
recreate) cmd_recreate "${2:-}" ;;
kill) cmd_kill "${2:-}" ;;
*)
	echo "usage: [LAB_ID=x] $0 up|down|info|status|recreate DEV|kill DEV" >&2
	exit 2
	;;
esac

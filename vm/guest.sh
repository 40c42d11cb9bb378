#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# Runs inside the qemu guest that vm/run.sh boots (virtme-ng: the host's root
# file system, read-only, with tmpfs overlays; OUT is shared read-write).
# Prepares the guest (bpffs, the wireguard module, BCC's headers if
# VM_NEED_BPF=1), runs pytest on VM_TESTS (default tests/e2e) with kernel
# WireGuard, and leaves pytest's exit code in OUT/result as
# "WGBPF_VM_RESULT rc=N": the host believes nothing else.
# Usage: vm/guest.sh OUT   (OUT/env.sh holds the variables the host passes)
set -uo pipefail
OUT=$1
cd "$(dirname "$0")/.." || exit 3
ROOT=$PWD

# shellcheck source=/dev/null
. "$OUT/env.sh"
say() { printf '\033[1m[guest] %s\033[0m\n' "$*"; }
result() { echo "WGBPF_VM_RESULT rc=$1" >"$OUT/result.tmp" && mv "$OUT/result.tmp" "$OUT/result"; }
fail() { say "error: $*"; result 3; exit 3; }

read -r up _ </proc/uptime
say "booted $(uname -r), $(nproc) cpus, at ${up}s guest uptime"
echo "$up" >"$OUT/boot_seconds"

# virtme-ng's root (9p, cache=none) reads every file from the host again,
# each time: a BCC compile then spends most of its time paging in LLVM and
# the kernel headers. vm/run.sh exports / a second time (tag wgbpf_host);
# mounted with cache=loose, read-only, over /usr and the checkout, each file
# crosses once. An optimisation only: without it the run is just slower.
if mkdir -p /run/wgbpf-host &&
    mount -t 9p -o ro,trans=virtio,version=9p2000.L,access=any,msize=524288,cache=loose \
        wgbpf_host /run/wgbpf-host 2>/dev/null &&
    mount --bind /run/wgbpf-host/usr /usr &&
    mount --bind "/run/wgbpf-host$ROOT" "$ROOT"; then
    cd "$ROOT" || fail "cannot enter $ROOT"
else
    say "warning: no cached view of /usr and $ROOT (slower)"
fi

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || fail "cannot mount bpffs"
modprobe wireguard || fail "modprobe wireguard failed"
ip link add wgbpf-vmchk type wireguard || fail "cannot create a kernel WireGuard device"
ip link del wgbpf-vmchk
say "wireguard module loaded: $(cat /sys/module/wireguard/version 2>/dev/null || echo '?')"
if [ "${VM_NEED_BPF:-1}" = 1 ]; then
    [ -e "/lib/modules/$(uname -r)/build/Makefile" ] || fail "no kernel headers at /lib/modules/$(uname -r)/build (BCC needs them)"
fi
tests=${VM_TESTS:-tests/e2e}

export WGBPF_LAB_WG=kernel
export PYTHONDONTWRITEBYTECODE=1    # the checkout is read-only here
t0=$(date +%s.%N)
mark=()
if [ -n "${VM_MARK:-}" ]; then mark=(-m "$VM_MARK"); fi
say "pytest $tests ${mark[*]} (WGBPF_LAB_WG=kernel CI=${CI:-} WGBPF_TIME_SCALE=${WGBPF_TIME_SCALE:-1})"
# shellcheck disable=SC2086   # VM_TESTS, VM_PYTEST_ARGS: words for pytest, e.g. -k NAME
.venv/bin/python -m pytest -ra -p no:cacheprovider --durations=10 "${mark[@]}" $tests ${VM_PYTEST_ARGS:-} 2>&1 | tee "$OUT/pytest.log"
rc=${PIPESTATUS[0]}
if [ "$rc" = 0 ] && [ "${VM_BENCH:-0}" = 1 ]; then
    # results land in OUT (the checkout is read-only here); the host copies them
    say "bench_allowedips (kernel WireGuard)"
    WGBPF_BENCH_OUT=$OUT .venv/bin/python tests/bench/bench_allowedips.py --wg kernel ${VM_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
    rc=${PIPESTATUS[0]}
fi
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", b - a }' >"$OUT/test_seconds"
say "pytest exit code $rc after $(cat "$OUT/test_seconds")s"
result "$rc"

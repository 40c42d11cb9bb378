#!/bin/bash
# `make vm-test`: the e2e suite (tests/e2e) in a qemu guest whose kernel has
# the WireGuard module, so the lab runs on kernel WireGuard instead of
# wireguard-go. virtme-ng boots Debian's 6.12 rt kernel (vm/kernel.sh) on a
# read-only view of this machine's root file system: the checkout, .venv,
# BCC, wg and the kernel's modules and headers are the host's own.
# Exits with pytest's exit code as the guest reported it in a shared
# directory; no report (guest crashed, hung, never ran pytest) is a failure.
#
# Environment:
#   VM_KVM=auto|0|1       use KVM (auto: when /dev/kvm and vmx/svm are there)
#   VM_MEMORY=2G VM_CPUS=(host's)   guest size
#   VM_TIMEOUT=3600       seconds before the guest is killed (a failure)
#   WGBPF_TIME_SCALE      wait multiplier for tests (default: 8 without KVM)
#   VM_PYTEST_ARGS        extra pytest arguments, e.g. "-k daemon -x"
#   CI                    passed through (CI=true turns skips into failures)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { echo "vm/run: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
[ -x .venv/bin/vng ] || die "no .venv/bin/vng: run vm/setup.sh (make vm-test does)"
export PATH=$ROOT/.venv/bin:$PATH      # vng runs virtme-run from PATH
kver=$(bash vm/kernel.sh) || die "no 6.12 rt kernel with modules and headers: run vm/setup.sh"

kvm=${VM_KVM:-auto}
if [ "$kvm" = auto ]; then
    kvm=0
    if [ -w /dev/kvm ] && grep -qE '\b(vmx|svm)\b' /proc/cpuinfo; then kvm=1; fi
fi
vng_args=(-r "/boot/vmlinuz-$kver" --user root --memory "${VM_MEMORY:-2G}")
if [ -n "${VM_CPUS:-}" ]; then vng_args+=(--cpus "$VM_CPUS"); fi
if [ "$kvm" = 1 ]; then
    scale=${WGBPF_TIME_SCALE:-1}
else
    vng_args+=(--disable-kvm)
    scale=${WGBPF_TIME_SCALE:-8}
fi

OUT=$(mktemp -d /tmp/wgbpf-vm.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
{
    printf 'export WGBPF_TIME_SCALE=%q\n' "$scale"
    if [ -n "${CI:-}" ]; then printf 'export CI=%q\n' "$CI"; fi
    if [ -n "${VM_PYTEST_ARGS:-}" ]; then printf 'VM_PYTEST_ARGS=%q\n' "$VM_PYTEST_ARGS"; fi
} >"$OUT/env.sh"

say "booting $kver in qemu ($([ "$kvm" = 1 ] && echo KVM || echo 'software emulation, no KVM'))"
t0=$(date +%s)
set +e
# A second read-only export of / for vm/guest.sh to mount with caching.
# qemu reopens /proc/self/fd/1 and 2 for the guest's output, which truncates
# a regular file (make vm-test >log): hence the pipe.
timeout -k 30 "${VM_TIMEOUT:-3600}" vng "${vng_args[@]}" --rwdir "$OUT" \
    --qemu-opts="-fsdev local,id=wgbpfhost,path=/,security_model=none,readonly=on,multidevs=remap -device virtio-9p-pci,fsdev=wgbpfhost,mount_tag=wgbpf_host" \
    -- /bin/bash "$ROOT/vm/guest.sh" "$OUT" </dev/null 2>&1 | cat
vrc=${PIPESTATUS[0]}
set -e
t1=$(date +%s)

boot=$(cat "$OUT/boot_seconds" 2>/dev/null || echo '?')
tests=$(cat "$OUT/test_seconds" 2>/dev/null || echo '?')
say "timings: guest booted in ${boot}s, tests ${tests}s, whole vm run $((t1 - t0))s"
[ "$vrc" = 124 ] && echo "vm/run: the guest was killed after ${VM_TIMEOUT:-3600}s" >&2
result=$(cat "$OUT/result" 2>/dev/null || true)
if [[ $result =~ ^WGBPF_VM_RESULT\ rc=([0-9]+)$ ]]; then
    rc=${BASH_REMATCH[1]}
    if [ "$rc" = 0 ]; then
        say "vm-test passed (kernel WireGuard, $kver)"
    else
        say "vm-test FAILED: pytest exit code $rc"
    fi
    exit "$rc"
fi
echo "vm/run: no result from the guest (vng exit $vrc): it crashed, hung or never ran pytest" >&2
exit 1

#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# `make vm-test`: the e2e tests whose outcome depends on WireGuard's
# implementation (marked kernel_wg; VM_TESTS=tests/e2e for the whole suite)
# in a qemu guest whose kernel has the WireGuard module, so the lab runs on
# kernel WireGuard instead of wireguard-go. virtme-ng boots one of two Debian kernels (vm/kernel.sh) on a
# read-only view of this machine's root file system: the checkout, .venv,
# BCC, wg and the kernel's modules and headers are the host's own.
# Exits with pytest's exit code as the guest reported it in a shared
# directory; no report (guest crashed, hung, never ran pytest) is a failure.
#
# Environment:
#   VM_KERNEL=old|new     old (default): Debian 12's 6.12 rt kernel, with headers
#                         (BCC); new: Linux >= 6.16 from trixie-backports
#                         (WGALLOWEDIP_F_REMOVE_ME), no headers: BPF tests can't
#                         run there. Or an installed kernel's version.
#   VM_TESTS              what pytest runs (paths or node ids, space-separated);
#                         unset: tests/e2e -m kernel_wg, the tests whose outcome
#                         depends on WireGuard's implementation (each file says
#                         why in a comment); set, it runs whole, unmarked ones too
#   VM_MARK               a pytest -m expression (default: kernel_wg when
#                         VM_TESTS is unset, none when it is set)
#   VM_NEED_BPF=auto|0|1  check for the kernel's headers (BCC) before pytest;
#                         auto: when a test file in VM_TESTS says require_bcc
#                         or opens a wgbpf lab (lab_session without bpf=False)
#   VM_KVM=auto|0|1       use KVM (auto: when /dev/kvm and vmx/svm are there)
#   VM_MEMORY=4G VM_CPUS=(host's)   guest size (BCC's clang and the guest's
#                         tmpfs live in it: 2G crashed a 30-minute run once)
#   VM_RETRY=1            boot once more when the guest dies without a result
#                         (not on a timeout, not on failed tests)
#   WGBPF_E2E_LOOKUPS     passed through: the lookup modes the e2e tests run
#   WGBPF_E2E_SLOW=1      passed through: also the e2e tests skipped under emulation
#                         (test_recipes: all but the babel recipe)
#   VM_TIMEOUT=3600       seconds before the guest is killed (a failure)
#   WGBPF_TIME_SCALE      wait multiplier for tests (default: 8 without KVM)
#   VM_PYTEST_ARGS        extra pytest arguments, e.g. "-k daemon -x"
#   VM_BENCH=1            after the tests pass, tests/bench/bench_allowedips.py in
#                         the guest; its JSON is copied to bench-results/
#   VM_BENCH_ARGS         its arguments (default: its own, --routes 100000),
#                         e.g. "--routes 20000" for a shorter guest run
#   WGBPF_EXPECT_REMOVE_SINGLE=1|0  passed through: what the allowedips tests
#                         must find the guest kernel's WireGuard able to do
#   CI                    passed through (CI=true turns skips into failures)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { echo "vm/run: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
[ -x .venv/bin/vng ] || die "no .venv/bin/vng: run vm/setup.sh (make vm-test does)"
export PATH=$ROOT/.venv/bin:$PATH      # vng runs virtme-run from PATH
sel=${VM_KERNEL:-old}
kver=$(VM_KERNEL=$sel bash vm/kernel.sh) || die "no '$sel' guest kernel (VM_KERNEL=$sel): run vm/setup.sh"
kimg=$(bash vm/kernel.sh --image "$kver") || die "kernel $kver has no image in /boot or /lib/modules/$kver"

vm_tests=${VM_TESTS:-tests/e2e}
if [ -z "${VM_TESTS:-}" ]; then vm_mark=${VM_MARK-kernel_wg}; else vm_mark=${VM_MARK:-}; fi
need_bpf=${VM_NEED_BPF:-auto}
if [ "$need_bpf" = auto ]; then
    need_bpf=0
    for t in $vm_tests; do
        t=${t%%::*}
        # BCC: a require_bcc, or a lab (labutil.lab_session) not opened with bpf=False
        if [ -e "$t" ] && [ -n "$(grep -rhs --include='*.py' -E 'require_bcc|lab_session\(' -- "$t" |
            grep -v -e 'bpf=False' -e 'import' -e 'def lab_session')" ]; then need_bpf=1; fi
    done
fi
if [ "$need_bpf" = 1 ] && ! [ -e "/lib/modules/$kver/build/Makefile" ]; then
    die "VM_TESTS=$vm_tests needs BPF (BCC) but kernel $kver has no headers; choose tests without BPF (VM_TESTS=...) or VM_KERNEL=old"
fi

kvm=${VM_KVM:-auto}
if [ "$kvm" = auto ]; then
    kvm=0
    if [ -w /dev/kvm ] && grep -qE '\b(vmx|svm)\b' /proc/cpuinfo; then kvm=1; fi
fi
vng_args=(-r "$kimg" --user root --memory "${VM_MEMORY:-4G}")
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
    printf 'VM_TESTS=%q\nVM_MARK=%q\nVM_NEED_BPF=%q\n' "$vm_tests" "$vm_mark" "$need_bpf"
    if [ -n "${CI:-}" ]; then printf 'export CI=%q\n' "$CI"; fi
    if [ -n "${VM_PYTEST_ARGS:-}" ]; then printf 'VM_PYTEST_ARGS=%q\n' "$VM_PYTEST_ARGS"; fi
    if [ -n "${WGBPF_E2E_LOOKUPS:-}" ]; then printf 'export WGBPF_E2E_LOOKUPS=%q\n' "$WGBPF_E2E_LOOKUPS"; fi
    if [ -n "${WGBPF_E2E_SLOW:-}" ]; then printf 'export WGBPF_E2E_SLOW=%q\n' "$WGBPF_E2E_SLOW"; fi
    if [ -n "${WGBPF_EXPECT_REMOVE_SINGLE:-}" ]; then
        printf 'export WGBPF_EXPECT_REMOVE_SINGLE=%q\n' "$WGBPF_EXPECT_REMOVE_SINGLE"
    fi
    printf 'VM_BENCH=%q\nVM_BENCH_ARGS=%q\n' "${VM_BENCH:-0}" "${VM_BENCH_ARGS:-}"
} >"$OUT/env.sh"

say "VM_KERNEL=$sel: booting $kver ($kimg) for pytest $vm_tests${vm_mark:+ -m $vm_mark} (BPF: $([ "$need_bpf" = 1 ] && echo yes || echo no)) in qemu ($([ "$kvm" = 1 ] && echo KVM || echo 'software emulation, no KVM'))"
t0=$(date +%s)
tries=$((1 + ${VM_RETRY:-1}))
for ((try = 1; try <= tries; try++)); do
set +e
# A second read-only export of / for vm/guest.sh to mount with caching.
# qemu reopens /proc/self/fd/1 and 2 for the guest's output, which truncates
# a regular file (make vm-test >log): hence the pipe.
timeout -k 30 "${VM_TIMEOUT:-3600}" vng "${vng_args[@]}" --rwdir "$OUT" \
    --qemu-opts="-fsdev local,id=wgbpfhost,path=/,security_model=none,readonly=on,multidevs=remap -device virtio-9p-pci,fsdev=wgbpfhost,mount_tag=wgbpf_host" \
    -- /bin/bash "$ROOT/vm/guest.sh" "$OUT" </dev/null 2>&1 | cat
vrc=${PIPESTATUS[0]}
set -e
# a guest that died without a word (kernel panic, qemu crash) gets one more
# boot; a timeout or a pytest result, pass or fail, is final
if [ -e "$OUT/result" ] || [ "$vrc" = 124 ] || [ "$try" = "$tries" ]; then break; fi
say "the guest died without a result (vng exit $vrc): booting it once more"
rm -f "$OUT/pytest.log" "$OUT/boot_seconds" "$OUT/test_seconds"
done
t1=$(date +%s)

boot=$(cat "$OUT/boot_seconds" 2>/dev/null || echo '?')
tests=$(cat "$OUT/test_seconds" 2>/dev/null || echo '?')
say "timings: guest booted in ${boot}s, tests ${tests}s, whole vm run $((t1 - t0))s"
[ "$vrc" = 124 ] && echo "vm/run: the guest was killed after ${VM_TIMEOUT:-3600}s" >&2
if compgen -G "$OUT/allowedips-*.json" >/dev/null; then
    mkdir -p bench-results
    for f in "$OUT"/allowedips-*.json; do cp "$f" "bench-results/$(basename "$f" .json)-$kver.json"; done
    say "bench results: $(ls bench-results/allowedips-*-"$kver".json)"
fi
result=$(cat "$OUT/result" 2>/dev/null || true)
if [[ $result =~ ^WGBPF_VM_RESULT\ rc=([0-9]+)$ ]]; then
    rc=${BASH_REMATCH[1]}
    if [ "$rc" = 0 ]; then
        say "vm-test passed (kernel WireGuard, $kver, $vm_tests)"
    else
        say "vm-test FAILED on $kver: pytest exit code $rc"
    fi
    exit "$rc"
fi
echo "vm/run: no result from the guest (vng exit $vrc): it crashed, hung or never ran pytest" >&2
exit 1

#!/bin/bash
# Installs what `make vm-test` needs on top of scripts/setup.sh, as root; safe
# to run again. Runs the e2e suite in a qemu guest whose kernel has the
# WireGuard module (kernel WireGuard instead of wireguard-go):
# - qemu-system-x86 (software emulation works; KVM is used only if usable),
#   busybox-static (virtme-ng's guest init needs a static busybox);
# - Debian 12's 6.12 PREEMPT_RT kernel and its headers, by metapackage, so a
#   fresh machine gets whatever 6.12 build the archive holds. Its modules in
#   /lib/modules/<ver> (wireguard.ko among them) are what the guest loads;
#   the headers package links /lib/modules/<ver>/build for BCC in the guest.
#   The host's own /lib/modules/$(uname -r)/build is left alone;
# - virtme-ng (vng) in the project's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "vm/setup: run as root" >&2; exit 1; }
[ -x .venv/bin/python ] || { echo "vm/setup: no .venv; run scripts/setup.sh first (make setup)" >&2; exit 1; }

PKGS="qemu-system-x86 busybox-static linux-image-6.12-rt-amd64 linux-headers-6.12-rt-amd64"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing Debian packages:$missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

# The guest kernel: the newest 6.12 rt image whose modules and headers are both here.
kver=$(bash vm/kernel.sh) || { echo "vm/setup: no 6.12 rt kernel with modules and headers after install" >&2; exit 1; }
[ -e "/lib/modules/$kver/kernel/drivers/net/wireguard/wireguard.ko" ] ||
    [ -e "/lib/modules/$kver/kernel/drivers/net/wireguard/wireguard.ko.xz" ] ||
    { echo "vm/setup: /lib/modules/$kver has no wireguard module" >&2; exit 1; }

if ! [ -x .venv/bin/vng ]; then
    say "installing virtme-ng into .venv"
    .venv/bin/pip install -q --disable-pip-version-check 'virtme-ng>=1.30'
fi
say "vm setup done: kernel $kver, $(.venv/bin/vng --version 2>&1 | head -1), $(qemu-system-x86_64 --version | head -1)"

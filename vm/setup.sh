#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# Installs what `make vm-test` needs on top of scripts/setup.sh, as root; safe
# to run again. Runs the e2e suite in a qemu guest whose kernel has the
# WireGuard module (kernel WireGuard instead of wireguard-go):
# - qemu-system-x86 (software emulation works; KVM is used only if usable),
#   busybox-static (virtme-ng's guest init needs a static busybox);
# - the old guest kernel (VM_KERNEL=old): Debian 12's 6.12 PREEMPT_RT kernel
#   and its headers, by metapackage, so a fresh machine gets whatever 6.12
#   build the archive holds. Its modules in /lib/modules/<ver> (wireguard.ko
#   among them) are what the guest loads; the headers package links
#   /lib/modules/<ver>/build for BCC in the guest. The host's own
#   /lib/modules/$(uname -r)/build is left alone;
# - the new guest kernel (VM_KERNEL=new): Linux >= 6.16, whose WireGuard
#   netlink can remove one allowed IP (WGALLOWEDIP_F_REMOVE_ME). Debian's
#   plain amd64 image from trixie-backports, which bookworm cannot install:
#   fetched with a private apt configuration in $VM_CACHE/apt (the system's
#   sources are left alone), unpacked with dpkg-deb -x into
#   $VM_KERNELS/<ver>, /lib/modules/<ver> made a symlink to its modules
#   (the guest sees this root file system, so its modprobe finds them there)
#   with <ver>/vmlinuz in it, then depmod. Not under /var/cache: virtme-ng
#   hides that (and /tmp, /var/tmp, /var/log...) behind a tmpfs in the guest. The newest complete image in the
#   archive is taken once; later runs keep it (VM_NEW_KVER=<ver>, e.g.
#   6.17.13+deb13-amd64, fetches that one instead). No headers: the tests on
#   this kernel use no BPF. Failing to get it is fatal only with VM_KERNEL=new;
# - virtme-ng (vng) in the project's .venv.
#
# `vm/setup.sh --new-kernel` does the new kernel only.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/common.sh  # say, apt_install

[ "$(id -u)" = 0 ] || { echo "vm/setup: run as root" >&2; exit 1; }

VM_CACHE=${VM_CACHE:-/var/cache/wgbpf-vm}
APTD=$VM_CACHE/apt
VM_KERNELS=${VM_KERNELS:-/var/lib/wgbpf-vm/kernels}
aptopts=(-o "Dir::Etc::sourcelist=$APTD/sources.list" -o Dir::Etc::sourceparts=-
    -o "Dir::State::Lists=$APTD/lists" -o "Dir::Cache=$APTD/cache"
    -o APT::Sandbox::User=root -o Acquire::Languages=none)

# Linux 6.16 or later, plain amd64 flavour (not -rt-amd64, not -cloud-amd64).
is_new_kver() {
    [[ $1 =~ ^([0-9]+)\.([0-9]+)\.[0-9]+[^-]*-amd64$ ]] || return 1
    local maj=${BASH_REMATCH[1]} min=${BASH_REMATCH[2]}
    [ "$maj" -gt 6 ] || { [ "$maj" = 6 ] && [ "$min" -ge 16 ]; }
}

# Whether package $1 is in the archive (apt-cache show succeeds, silently,
# for a name that is only depended on).
available() {
    # (grep without -q: it reads to the end, so apt-cache gets no SIGPIPE)
    apt-cache "${aptopts[@]}" show --no-all-versions "$1" 2>/dev/null | grep '^Version:' >/dev/null
}

# The packages that make up image $1: linux-image-<ver> and, from 6.19 on,
# what it depends on: linux-binary-<ver> (the vmlinuz), linux-modules-<ver>
# and linux-base-<ver> (modules.builtin, System.map...; optional). Fails when
# the binary or the modules package is not in the archive (it happens).
image_packages() {
    local v=$1 d pkgs="linux-image-$1"
    available "linux-image-$v" || return 1
    for d in $(apt-cache "${aptopts[@]}" show --no-all-versions "linux-image-$v" |
        sed -n 's/^Depends: //p' | tr ',|' '\n' | awk '{ print $1 }'); do
        [[ $d == *-"$v" ]] || continue
        if available "$d"; then
            pkgs="$pkgs $d"
        elif [[ $d != linux-base-* ]]; then
            return 1
        fi
    done
    echo "$pkgs"
}

# The host's kmod (the guest runs the same one) must read the modules'
# compression (trixie's are .ko.xz); if it cannot, they are decompressed.
uncompress_modules() {
    local dir=$1 ext feat
    local -a tool
    for ext in xz zst gz; do
        case $ext in
            xz) feat=XZ tool=(xz -d -q) ;;
            zst) feat=ZSTD tool=(zstd -d -q --rm) ;;
            gz) feat=ZLIB tool=(gzip -d -q) ;;
        esac
        [ -n "$(find "$dir" -name "*.ko.$ext" -print -quit)" ] || continue
        kmod --version | grep "+$feat" >/dev/null && continue
        say "this kmod cannot read .ko.$ext modules: decompressing them"
        find "$dir" -name "*.ko.$ext" -exec "${tool[@]}" {} +
        if [ -e "$dir/modules.order" ]; then sed -i "s/\.ko\.$ext\$/.ko/" "$dir/modules.order"; fi
        rm -f "$dir/modules.dep"
    done
}

new_kernel() {
    local v
    if v=$(VM_KERNEL=new bash vm/kernel.sh 2>/dev/null) &&
        { [ -z "${VM_NEW_KVER:-}" ] || [ "$v" = "$VM_NEW_KVER" ]; }; then
        return 0
    fi
    local pkgs=""
    if [ -n "${VM_NEW_KVER:-}" ]; then
        v=""
        if [ -d "$VM_KERNELS/$VM_NEW_KVER" ]; then v=$VM_NEW_KVER; fi
    else
        # Fetched earlier but not finished (say, depmod was interrupted)?
        v=$(find "$VM_KERNELS" -mindepth 1 -maxdepth 1 -type d ! -name '*.tmp' -printf '%f\n' 2>/dev/null |
            sort -V -r | head -1 || true)
    fi
    if [ -z "$v" ]; then
        mkdir -p "$APTD/lists/partial" "$APTD/cache/archives/partial" "$VM_KERNELS"
        printf 'deb http://deb.debian.org/debian trixie-backports main\n' >"$APTD/sources.list"
        say "reading trixie-backports' package list (private apt configuration in $APTD)"
        apt-get "${aptopts[@]}" update -qq
        local cands
        if [ -n "${VM_NEW_KVER:-}" ]; then
            cands=$VM_NEW_KVER
        else
            # Newest first: the choice depends on the archive only.
            cands=$(apt-cache "${aptopts[@]}" pkgnames linux-image- | sed -n 's/^linux-image-//p' | sort -V -r)
        fi
        for v in $cands; do
            is_new_kver "$v" || continue
            if pkgs=$(image_packages "$v"); then break; fi
            echo "vm/setup: skipping linux-image-$v: it or a package it needs is not in the archive" >&2
            pkgs=""
        done
        [ -n "$pkgs" ] || { echo "vm/setup: no plain amd64 linux-image >= 6.16${VM_NEW_KVER:+ named $VM_NEW_KVER} in trixie-backports" >&2; return 1; }
        kdir=$VM_KERNELS/$v
        dl=$VM_CACHE/dl
        local deb
        say "downloading $pkgs"
        rm -rf "$dl" "$kdir.tmp"
        trap 'rm -rf "$dl" "$kdir.tmp"' EXIT
        mkdir -p "$dl" "$kdir.tmp"
        # shellcheck disable=SC2086
        (cd "$dl" && apt-get "${aptopts[@]}" download -qq $pkgs)
        for deb in "$dl"/*.deb; do dpkg-deb -x "$deb" "$kdir.tmp"; done
        rm -rf "$dl"
        mv "$kdir.tmp" "$kdir"
    fi
    kdir=$VM_KERNELS/$v
    local moddir=$kdir/usr/lib/modules/$v
    [ -d "$moddir/kernel" ] || moddir=$kdir/lib/modules/$v
    [ -d "$moddir/kernel" ] || { echo "vm/setup: $kdir has no modules for $v" >&2; return 1; }
    # The image as <moddir>/vmlinuz (so from 6.19 on; before, /boot/vmlinuz-<ver>).
    if ! [ -e "$moddir/vmlinuz" ]; then
        [ -e "$kdir/boot/vmlinuz-$v" ] || { echo "vm/setup: $kdir has no kernel image" >&2; return 1; }
        ln -s "$(realpath --relative-to="$moddir" "$kdir/boot/vmlinuz-$v")" "$moddir/vmlinuz"
    fi
    if { ! [ -e "/lib/modules/$v" ] && ! [ -L "/lib/modules/$v" ]; } ||
        { [ -L "/lib/modules/$v" ] && [[ $(readlink "/lib/modules/$v") == */wgbpf-vm/* ]] &&
            [ "$(readlink -f "/lib/modules/$v")" != "$(readlink -f "$moddir")" ]; }; then
        # Missing, or ours pointing elsewhere (an older or moved unpacking).
        say "linking /lib/modules/$v -> $moddir"
        ln -sfn "$moddir" "/lib/modules/$v"
    elif [ "$(realpath "/lib/modules/$v")" != "$(realpath "$moddir")" ]; then
        echo "vm/setup: /lib/modules/$v exists and is not $moddir: left alone" >&2
        return 1
    fi
    uncompress_modules "$moddir"
    if ! [ -s "$moddir/modules.dep" ]; then
        say "depmod $v"
        depmod -a "$v"
    fi
    # The host's kmod reads wireguard's module (decompressing it) and resolves
    # its dependencies, as modprobe in the guest will.
    local magic
    magic=$(modinfo -k "$v" -F vermagic wireguard)
    [[ $magic == "$v "* ]] || { echo "vm/setup: wireguard for $v has vermagic '$magic'" >&2; return 1; }
    modprobe -S "$v" --show-depends wireguard >/dev/null
    VM_KERNEL=new bash vm/kernel.sh >/dev/null || { echo "vm/setup: vm/kernel.sh does not find $v" >&2; return 1; }
}

if [ "${1:-}" = --new-kernel ]; then
    new_kernel
    exit
fi

[ -x .venv/bin/python ] || { echo "vm/setup: no .venv; run scripts/setup.sh first (make setup)" >&2; exit 1; }

PKGS="qemu-system-x86 busybox-static linux-image-6.12-rt-amd64 linux-headers-6.12-rt-amd64"
apt_install $PKGS

# The old guest kernel: the newest 6.12 rt image whose modules and headers are both here.
kver=$(VM_KERNEL=old bash vm/kernel.sh) || { echo "vm/setup: no 6.12 rt kernel with modules and headers after install" >&2; exit 1; }
[ -e "/lib/modules/$kver/kernel/drivers/net/wireguard/wireguard.ko" ] ||
    [ -e "/lib/modules/$kver/kernel/drivers/net/wireguard/wireguard.ko.xz" ] ||
    { echo "vm/setup: /lib/modules/$kver has no wireguard module" >&2; exit 1; }

# The new one, in a shell of its own (set -e holds there).
if bash vm/setup.sh --new-kernel && newk=$(VM_KERNEL=new bash vm/kernel.sh); then
    newk="new kernel $newk"
elif [ "${VM_KERNEL:-old}" = new ]; then
    echo "vm/setup: could not prepare the new (>= 6.16) guest kernel" >&2
    exit 1
else
    echo "vm/setup: warning: no new (>= 6.16) guest kernel: VM_KERNEL=new will not work" >&2
    newk="no new kernel"
fi

if ! [ -x .venv/bin/vng ]; then
    say "installing virtme-ng into .venv"
    .venv/bin/pip install -q --disable-pip-version-check 'virtme-ng>=1.30'
fi
say "vm setup done: old kernel $kver, $newk, $(.venv/bin/vng --version 2>&1 | head -1), $(qemu-system-x86_64 --version | head -1)"

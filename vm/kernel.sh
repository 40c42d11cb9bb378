#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# Prints the version of the guest kernel that `make vm-test` boots, chosen by
# VM_KERNEL (exit 1 if there is none; vm/setup.sh installs both):
#   old (default)  the newest installed 6.12 rt kernel that has its image
#                  (/boot/vmlinuz-<ver>), its modules and its headers
#                  (/lib/modules/<ver>/build): the e2e suite with BPF runs here
#   new            a Linux >= 6.16 plain amd64 kernel from trixie-backports
#                  (WireGuard's WGALLOWEDIP_F_REMOVE_ME): $VM_NEW_KVER if set,
#                  else the newest of them in /lib/modules with its image
#                  (/lib/modules/<ver>/vmlinuz), modules.dep and wireguard
#                  module; no headers (no BPF tests there)
#   <version>      that kernel, as is (its image in /boot or /lib/modules/<ver>)
# `vm/kernel.sh --image VER` prints the image file of kernel VER instead.
set -euo pipefail

if [ "${1:-}" = --image ]; then
    for img in "/boot/vmlinuz-$2" "/lib/modules/$2/vmlinuz"; do
        if [ -e "$img" ]; then
            echo "$img"
            exit 0
        fi
    done
    exit 1
fi

case ${VM_KERNEL:-old} in
old)
    for img in $(printf '%s\n' /boot/vmlinuz-6.12.*-rt-amd64 | sort -V -r); do
        [ -e "$img" ] || continue
        v=${img#/boot/vmlinuz-}
        if [ -d "/lib/modules/$v/kernel" ] && [ -e "/lib/modules/$v/build/Makefile" ]; then
            echo "$v"
            exit 0
        fi
    done
    exit 1
    ;;
new)
    if [ -n "${VM_NEW_KVER:-}" ]; then
        cands=$VM_NEW_KVER
    else
        cands=$(printf '%s\n' /lib/modules/*-amd64 | sed 's|^/lib/modules/||' | sort -V -r)
    fi
    for v in $cands; do
        # 6.16 or later, not -rt-amd64 or -cloud-amd64.
        [[ $v =~ ^([0-9]+)\.([0-9]+)\.[0-9]+[^-]*-amd64$ ]] || continue
        maj=${BASH_REMATCH[1]} min=${BASH_REMATCH[2]}
        [ "$maj" -gt 6 ] || { [ "$maj" = 6 ] && [ "$min" -ge 16 ]; } || continue
        d=/lib/modules/$v
        if [ -e "$d/vmlinuz" ] && [ -s "$d/modules.dep" ] &&
            compgen -G "$d/kernel/drivers/net/wireguard/wireguard.ko*" >/dev/null; then
            echo "$v"
            exit 0
        fi
    done
    exit 1
    ;;
*)
    echo "$VM_KERNEL"
    ;;
esac

#!/bin/bash
# Prints the guest kernel's version for `make vm-test`: $VM_KERNEL if set,
# else the newest installed 6.12 rt kernel that has its image, its modules
# and its headers (/lib/modules/<ver>/build). Exit 1 if there is none.
set -euo pipefail
if [ -n "${VM_KERNEL:-}" ]; then
    echo "$VM_KERNEL"
    exit 0
fi
for img in $(printf '%s\n' /boot/vmlinuz-6.12.*-rt-amd64 | sort -V -r); do
    [ -e "$img" ] || continue
    v=${img#/boot/vmlinuz-}
    if [ -d "/lib/modules/$v/kernel" ] && [ -e "/lib/modules/$v/build/Makefile" ]; then
        echo "$v"
        exit 0
    fi
done
exit 1

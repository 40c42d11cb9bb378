#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# Installs what wgbpf needs on Debian 12/13, as root; safe to run again.
# - Debian packages: BCC (python3-bpfcc), bpftool, kernel headers for BCC,
#   wireguard-go + wireguard-tools for the lab, iperf3 for traffic, tmux to
#   test `wgbpf top` as a terminal shows it, bird2, babeld and frr for the
#   recipes' tests (docs/recipes/); FRR's own service kept off (below).
# - the kernel-headers links BCC looks for, only when missing.
# - bpffs at /sys/fs/bpf, only when missing.
# - .venv built on /usr/bin/python3 (where Debian's BCC imports) with
#   --system-site-packages, holding wgbpf (editable) and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/common.sh  # say, apt_install

[ "$(id -u)" = 0 ] || { echo "setup: run as root (BPF, netns and apt need it)" >&2; exit 1; }

PKGS="python3-bpfcc bpftool linux-headers-amd64 wireguard-tools wireguard-go
      iperf3 iproute2 python3-venv python3-pip kmod procps iputils-ping util-linux tmux
      bird2 babeld frr"
apt_install $PKGS

# FRR: the recipes' tests run zebra, staticd and bgpd inside the lab's
# namespaces, each with its own pathspace (-N). Debian's frr.service, which
# the package enables and starts where systemd runs, would start watchfrr,
# zebra and staticd in the root namespace, where a zebra takes part in this
# machine's own routing (at start it sweeps the proto zebra, static and bgp
# routes it finds) and nothing here asks for one. Stop and disable it, on
# every run (an upgrade of frr may enable it again); both are no-ops when
# already done.
if [ -d /run/systemd/system ]; then
    systemctl disable --now frr.service >/dev/null 2>&1 || true
else
    # no systemd (a container; policy-rc.d may have refused the start): stop
    # what the init script started in the default pathspace (its pid files
    # are /run/frr/*.pid; the tests' pathspaces are /run/frr/NAME/), and keep
    # it from starting at boot under sysvinit
    if ls /run/frr/*.pid >/dev/null 2>&1; then
        /usr/lib/frr/frrinit.sh stop >/dev/null 2>&1 || true
    fi
    command -v update-rc.d >/dev/null && update-rc.d frr disable >/dev/null 2>&1 || true
fi

# BCC compiles against /lib/modules/$(uname -r)/build; the running kernel has
# no headers package, so point at Debian's generic ones.
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir/build" ]; then
    # the generic headers linux-headers-amd64 brings, not a -rt flavour
    # that make vm-test may have installed for its guest kernel
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | grep -v -- '-rt-' | sort -V | tail -1)
    [ -n "$hdr" ] || { echo "setup: no /usr/src/linux-headers-*-amd64 after install" >&2; exit 1; }
    mkdir -p "$kdir"
    ln -s "$hdr" "$kdir/build"
    say "linked $kdir/build -> $hdr"
fi
if [ ! -e "$kdir/source" ]; then
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
    [ -n "$common" ] && ln -s "$common" "$kdir/source" && say "linked $kdir/source -> $common"
fi

mountpoint -q /sys/fs/bpf || { mount -t bpf bpf /sys/fs/bpf; say "mounted bpffs at /sys/fs/bpf"; }

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
    say "creating .venv (system site packages, for Debian's BCC)"
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
if ! .venv/bin/python -c 'import wgbpf, pyroute2, click, pytest, hypothesis, xdist' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
    say "installing wgbpf and test tools into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    touch .venv/.installed
fi
say "setup done: $(.venv/bin/python -c 'import bcc, pyroute2; print("bcc", bcc.__version__ if hasattr(bcc, "__version__") else "?", "pyroute2", pyroute2.__version__)')"

#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# make deb-test: the .deb in a fresh Debian root, as an operator installs it.
#   1. a root made with debootstrap from Debian's archive (the mirror of this
#      machine's apt sources), kept in $CACHE and used through an overlay,
#      so every run starts from the same untouched root and throws its
#      changes away; downloaded packages are kept in $CACHE too
#   2. apt install ./wgbpf_<version>_all.deb: Debian's BCC, pyroute2, click,
#      headers, wireguard-tools come with it. That install, less wgbpf, is
#      kept as a second layer for a week (while the package's Depends and
#      Recommends stay the same): later runs install wgbpf alone on it, in
#      seconds instead of minutes. DEB_TEST_FRESH=1: from scratch again.
#   3. wgbpf --version, wgbpf attach --help, systemd-analyze verify on the
#      installed unit, the man page and completion, and tests/e2e/test_installed.py
#      against /usr/bin/wgbpf (the chroot runs on this kernel)
#   4. apt remove with a data plane attached: it keeps steering, the
#      operator's /etc/wgbpf/wg0.toml stays
# SUITE=trixie (or the first argument) does the same on Debian 13 and also
# runs the unit tests there, on Debian 13's Python, pyroute2 and click.
# Root; the host needs debootstrap (installed here, idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
SUITE=${1:-${SUITE:-bookworm}}
CACHE=${DEB_TEST_CACHE:-/var/cache/wgbpf/deb-test}/$SUITE

. scripts/common.sh  # apt_install
say() { printf '\033[1m==> [%s %ss] %s\033[0m\n' "$SUITE" "$SECONDS" "$*"; }
die() { echo "deb-test: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, BPF)"
apt_install debootstrap

# The Debian mirror this machine's apt uses (deb822 or one-line sources).
MIRROR=$(grep -rhoE '(URIs:|^deb) *https?://[^ ]*/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
         | grep -oE 'https?://[^ ]*' | head -1 || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
MIRROR=${MIRROR%/}

version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
deb=wgbpf_${version}_all.deb
[ -e build/deb/wgbpf-$version/debian/control ] && [ -e "$deb" ] || die "no $deb: run make deb first"

# 1. the cached base root: minbase and what the tests need beyond the
# package (the lab's tools, pytest, cc for test_abi, systemd-analyze, man), none of which the
# package depends on, so its dependencies still come from its own install.
TOOLS=python3-pytest,python3-hypothesis,gcc,libc6-dev,wireguard-go,iproute2,iputils-ping,procps,systemd,man-db
if [ "$(cat "$CACHE/root/.wgbpf-base" 2>/dev/null)" != "$TOOLS" ]; then
    say "debootstrap $SUITE from $MIRROR into $CACHE/root"
    rm -rf "$CACHE/root"
    mkdir -p "$CACHE/archives"
    debootstrap --variant=minbase --include="$TOOLS" --cache-dir="$CACHE/archives" \
        "$SUITE" "$CACHE/root" "$MIRROR" \
        > "$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log"; die "debootstrap failed"; }
    security=${MIRROR%/debian}/debian-security
    cat > "$CACHE/root/etc/apt/sources.list" <<EOS
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $security $SUITE-security main
EOS
    rm -f "$CACHE/root/var/cache/apt/archives/"*.deb
    # no man-db index rebuild after every install (man reads pages by path)
    echo "man-db man-db/auto-update boolean false" | chroot "$CACHE/root" debconf-set-selections
    rm -f "$CACHE/root/var/lib/man-db/auto-update"
    rm -rf "$CACHE"/deps-*
    echo "$TOOLS" > "$CACHE/root/.wgbpf-base"
    say "base root made"
fi

# The dependencies' layer, if a fresh install made one lately.
DEPS=$CACHE/deps-$(dpkg-deb -f "$deb" Depends Recommends | sha1sum | cut -c1-12)
if [ -z "${DEB_TEST_FRESH:-}" ] && [ -n "$(find "$DEPS.done" -mtime -7 2>/dev/null)" ]; then
    fresh=""; lower=$DEPS:$CACHE/root
else
    fresh=1; lower=$CACHE/root; rm -rf "$CACHE"/deps-*
fi

# The throwaway root: an overlay on the cached ones, removed on exit.
work=$(mktemp -d /var/tmp/wgbpf-deb-test.XXXXXX)
L=dt$((RANDOM % 1000))  # the lab of step 4 (LAB_ID: at most 5 characters)
R=$work/root
cleanup() {
    set +e
    if [ -d "$R/tmp" ]; then  # labs and pins left by a failure
        LAB_ID=$L chroot "$R" bash /src/lab/lab.sh down >/dev/null 2>&1
    fi
    rm -rf "/sys/fs/bpf/wgbpf-debtest-$L"
    umount -R "$R" 2>/dev/null || umount -Rl "$R" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/upper" "$work/work" "$R"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$work/upper,workdir=$work/work" "$R"
mount -t proc proc "$R/proc"
for d in sys dev; do mount --rbind "/$d" "$R/$d"; mount --make-rslave "$R/$d"; done
mount -t tmpfs tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
mkdir -p "$R/var/cache/apt/archives" "$R/src"
mount --bind "$CACHE/archives" "$R/var/cache/apt/archives"
cp -L /etc/resolv.conf "$R/etc/resolv.conf"
# the tree the package was built from (make deb's copy) and the package
cp -a "build/deb/wgbpf-$version/." "$R/src/"
cp "$deb" "$R/tmp/"

in_root() { chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
# unsafe-io: no fsync per file, the root is thrown away anyway (halves the install)
apt_root() { in_root env DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 \
                 -o Dpkg::Options::=--force-unsafe-io -q "$@"; }

# 2. the install, as the README says
say "apt-get update"
apt_root update >/dev/null
t0=$SECONDS
say "apt install ./$deb${fresh:+ (fresh: the dependencies too)}"
apt_root install -y "/tmp/$deb" > "$work/install.log" 2>&1 || { tail -30 "$work/install.log"; die "install failed"; }
say "installed in $((SECONDS - t0))s: $(grep -oE '[0-9]+ newly installed' "$work/install.log")"
# BCC compiles against /lib/modules/$(uname -r)/build. A Debian kernel's
# headers package links it; this machine's kernel is not Debian's, so point
# at the generic headers the package pulled in (as scripts/setup.sh does).
kdir=/lib/modules/$(uname -r)
hdr=$(cd "$R" && ls -d usr/src/linux-headers-*-amd64 2>/dev/null | grep -v -- '-rt-' | sort -V | tail -1)
[ -n "$hdr" ] || die "the package pulled in no kernel headers"
mkdir -p "$R$kdir"; ln -sfn "/$hdr" "$R$kdir/build"
common=$(cd "$R" && ls -d usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
[ -n "$common" ] && ln -sfn "/$common" "$R$kdir/source"

# 3. what it installed
say "checks"
in_root sh -c 'dpkg-query -W -f="\${Package} \${Version}\n" python3 python3-bpfcc python3-pyroute2 python3-click'
[ "$(in_root wgbpf --version)" = "wgbpf $version" ] || die "wgbpf --version: $(in_root wgbpf --version 2>&1)"
in_root wgbpf attach --help | grep -q -- "--config" || die "wgbpf attach --help"
where=$(in_root python3 -c 'import wgbpf, wgbpf.dataplane as d; print(wgbpf.__file__, d.SOURCE)')
case $where in
    /usr/lib/python3/dist-packages/wgbpf/__init__.py\ /usr/share/wgbpf/bpf/wgbpf.c) ;;
    *) die "wgbpf imports from the wrong place: $where" ;;
esac
unit=$(in_root sh -c 'ls /lib/systemd/system/wgbpf@.service /usr/lib/systemd/system/wgbpf@.service 2>/dev/null | head -1')
[ -n "$unit" ] || die "no wgbpf@.service installed"
in_root systemd-analyze verify "${unit%/*}/wgbpf@wg0.service" || die "systemd-analyze verify $unit"
in_root test -s /usr/share/man/man8/wgbpf.8.gz || die "no man page"
in_root bash -c '. /usr/share/bash-completion/completions/wgbpf && complete -p wgbpf' >/dev/null || die "bash completion"
in_root test -f /etc/wgbpf/wg0.toml.example || die "no /etc/wgbpf/wg0.toml.example"

# The tests run on the installed package: from /, so the checkout's wgbpf/
# is not on sys.path, with WGBPF_CLI pointing at /usr/bin/wgbpf.
pytest_root() {
    in_root sh -c "cd / && CI=true PYTHONDONTWRITEBYTECODE=1 WGBPF_CLI=/usr/bin/wgbpf \
        python3 -m pytest -q -ra -p no:cacheprovider $*"
}
say "e2e on the installed package (BCC compiles the data plane on attach)"
pytest_root /src/tests/e2e/test_installed.py
if [ "$SUITE" != bookworm ]; then
    # The checkout's own tests on this Debian's Python, pyroute2 and click.
    say "unit tests on $SUITE's python3"
    in_root sh -c 'cd /src && PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -q -ra -p no:cacheprovider tests/unit' \
        > "$work/unit.log" 2>&1 || { grep -E "^(FAILED|ERROR)" "$work/unit.log"; tail -1 "$work/unit.log"; die "unit tests failed on $SUITE"; }
    tail -1 "$work/unit.log"
fi

# 4. apt remove with a data plane running
say "apt remove with an instance attached"
lab() { in_root env LAB_ID=$L bash /src/lab/lab.sh "$@"; }
hub_wgbpf() { in_root env WGBPF_PIN_ROOT=/sys/fs/bpf/wgbpf-debtest-$L wgbpf --netns $L-hub "$@"; }
lab up >/dev/null
hub_wgbpf attach $L-wg0 --peer alice=$L-alice,10.255.0.1 --peer bob=$L-bob,10.255.0.2 2>/dev/null
hub_wgbpf route add 10.2.0.0/16 bob >/dev/null
hub_wgbpf route add 10.1.0.0/16 alice >/dev/null
ping_ab() { in_root ip netns exec $L-alice ping -c 2 -i 0.2 -W 2 10.2.0.1 >/dev/null; }
ping_ab || die "no ping through the attached instance"
echo 'front = "wg0"' > "$R/etc/wgbpf/wg0.toml"
apt_root remove -y wgbpf >/dev/null 2>&1 || die "apt remove failed"
in_root test ! -e /usr/bin/wgbpf || die "apt remove left /usr/bin/wgbpf"
ping_ab || die "apt remove stopped the data plane"
ls /sys/fs/bpf/wgbpf-debtest-$L/*/$L-wg0/config >/dev/null || die "apt remove took the pins"
in_root test -f /etc/wgbpf/wg0.toml || die "apt remove took the operator's /etc/wgbpf/wg0.toml"
lab down >/dev/null
if [ -n "$fresh" ]; then
    # what the install added, less wgbpf and the tests' files: the next layer
    rm -rf "$R/src" "$R/etc/wgbpf/wg0.toml"
    apt_root purge -y wgbpf >/dev/null 2>&1
    umount -R "$R"
    mv "$work/upper" "$DEPS" && touch "$DEPS.done"
    say "dependencies kept for the next runs in $DEPS"
fi
say "ok: $deb on $SUITE"

# SPDX-License-Identifier: GPL-2.0-or-later
# Sourced by the setup and build scripts (scripts/setup.sh, scripts/deb.sh,
# scripts/deb-test.sh, vm/setup.sh): progress lines and the Debian package
# install they all do. Not run on its own.

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# apt_install PKG...: installs those of the packages not installed yet
# (idempotent); installing needs root.
apt_install() {
    local p missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
    done
    [ -n "$missing" ] || return 0
    [ "$(id -u)" = 0 ] || { echo "${0##*/}: needs root to install:$missing" >&2; return 1; }
    say "installing Debian packages:$missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
}

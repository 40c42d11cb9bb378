#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# make deb: wgbpf_<version>_all.deb in the repository's top directory, built
# with Debian's own tooling (debhelper, dh-python/pybuild) from a copy of
# the working tree in build/deb, so the tree itself gets no build debris.
# Installs the build tools from Debian's archive first (idempotent, root).
# The version is pyproject.toml's: debian/changelog is written from it here.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's python3 and tools only (not a pyenv or /usr/local one on PATH)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

. scripts/common.sh  # say, apt_install

PKGS="debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
      python3-click lintian fakeroot"
apt_install $PKGS

version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
src="build/deb/wgbpf-$version"
rm -rf build/deb
mkdir -p "$src"
# the working tree as git sees it: tracked and new files, not ignored ones
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
done | xargs -0 cp --parents -t "$src"

# Dated by the last commit, so two builds of one commit are the same.
when=$(git log -1 --format=%cD 2>/dev/null || date -R)
cat > "$src/debian/changelog" <<EOC
wgbpf ($version) unstable; urgency=medium

  * wgbpf $version, built from the source tree (pyproject.toml's version).

 -- $(sed -n 's/^Maintainer: //p' debian/control)  $when
EOC

say "dpkg-buildpackage (wgbpf $version)"
(cd "$src" && dpkg-buildpackage -b -us -uc --no-sign) > build/deb/build.log 2>&1 \
    || { tail -40 build/deb/build.log; echo "deb: dpkg-buildpackage failed (build/deb/build.log)" >&2; exit 1; }
deb="wgbpf_${version}_all.deb"
cp "build/deb/$deb" .

say "lintian $deb"
# tags explained in debian/wgbpf.lintian-overrides; anything else fails
lintian --fail-on error,warning --info "$deb"
say "built $deb"

# SPDX-License-Identifier: GPL-2.0-or-later
"""Every source file in the tree says its license, GPL-2.0-or-later (LICENSE),
in its first three lines as `SPDX-License-Identifier: GPL-2.0-or-later`.

Source files are the tracked ones (`git ls-files`, so untracked junk is
ignored) that are code: *.py, *.c, *.h, *.sh, Makefile, debian/rules and
the maintainer scripts, .ci/run, systemd units, and any other tracked file
that starts with `#!` (lab/ and vm/ scripts among them).

Skipped, as data or text rather than code: *.md (README, HACKING, docs,
recipes), *.json, *.png, *.txt (benchmark figures), *.toml (pyproject.toml,
the example configurations lab/demo.toml and etc/wgbpf/wg0.toml.example),
LICENSE itself, .gitignore, and debian's control, copyright, source/format
and the debhelper lists (wgbpf.docs, .install, .manpages).

The header's form: Python and shell `# SPDX-License-Identifier: ...` (after
a shebang), C `// SPDX-License-Identifier: ...`.
"""
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TAG = "SPDX-License-Identifier: GPL-2.0-or-later"
SUFFIXES = (".py", ".c", ".h", ".sh", ".service", ".socket", ".timer")
NAMED = {"Makefile", ".ci/run", "debian/rules", "debian/wgbpf.postinst", "debian/wgbpf.prerm",
         "debian/wgbpf.preinst", "debian/wgbpf.postrm"}


def tracked():
    try:
        out = subprocess.run(["git", "-C", REPO, "ls-files", "-z"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (an unpacked source or the installed package)")
    return [p for p in out.decode().split("\0") if p]


def is_source(path):
    if path.endswith(SUFFIXES) or path in NAMED or os.path.basename(path) == "Makefile":
        return True
    try:
        with open(os.path.join(REPO, path), "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def sources():
    return [p for p in tracked() if os.path.isfile(os.path.join(REPO, p)) and is_source(p)]


def test_the_scan_sees_the_tree():
    found = set(sources())
    assert {"Makefile", "bpf/wgbpf.c", "wgbpf/cli.py", "debian/rules", ".ci/run",
            "systemd/wgbpf@.service", "lab/lab.sh"} <= found


def test_every_source_file_carries_the_spdx_line():
    missing = []
    for path in sources():
        with open(os.path.join(REPO, path), encoding="utf-8", errors="replace") as f:
            head = [f.readline() for _ in range(3)]
        if not any(TAG in line for line in head):
            missing.append(path)
    assert not missing, (f"{len(missing)} source files lack '{TAG}' in their first 3 lines "
                         f"(tests/unit/test_license.py says where it goes):\n  " + "\n  ".join(missing))

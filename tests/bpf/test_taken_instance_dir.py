# SPDX-License-Identifier: GPL-2.0-or-later
"""`wgbpf route add` on an attached instance whose run files were attacked
(issue 23, item 3): the `nobody` user took the instance's directory
(0777) and planted symlinks at `<front>.writer` and `<front>.lock`. The
command refuses in one line naming the directory and the fix, writes
nothing (the maps and the symlinks' target untouched), and works again
once the fix it names is done."""
import os
import pwd
import subprocess
import sys

import pytest

from bpflab import PeerSpec
from wgbtest import as_nobody
from wgbpf import instance, maps
from wgbpf.files import child_env

WGBPF = [sys.executable, "-m", "wgbpf.cli"]


@pytest.fixture(scope="module")
def inst(bpf_lab):
    return bpf_lab.attach([PeerSpec("alice", tags=("10.255.0.1",))], in_child=True)


def wgbpf(lab, *args):
    return subprocess.run([*WGBPF, "--netns", lab.name, *args], env=child_env(), capture_output=True, text=True,
                          timeout=120)


def routes(lab, front):
    r = wgbpf(lab, "dump", "--json", front)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_route_add_refuses_a_taken_instance_dir(bpf_lab, inst, tmp_path):
    victim = tmp_path / "victim"  # root's 0700 tmp dir: nobody cannot touch it
    victim.write_text("precious\n")
    ns = instance.run_dir(maps.netns_id(bpf_lab.name))
    os.makedirs(ns, mode=0o755, exist_ok=True)
    os.chown(ns, pwd.getpwnam("nobody").pw_uid, -1)  # made by nobody, say, before root ever ran
    writer, lock = (os.path.join(ns, f"{inst.front}{x}") for x in (".writer", ".lock"))

    def attack():
        os.chmod(ns, 0o777)
        for p in (writer, lock):
            if os.path.lexists(p):
                os.unlink(p)
            os.symlink(str(victim), p)
    before = routes(bpf_lab, inst.front)
    scratch = os.path.dirname(instance.RUN_DIR)  # the session's 0700 temp dir: nobody may pass, as /tmp
    os.chmod(scratch, 0o711)
    try:
        as_nobody(attack)
        r = wgbpf(bpf_lab, "route", "add", "10.9.0.0/16", "alice", inst.front)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert ns in lines[0] and f"chown root: {ns}; chmod go-w {ns}" in lines[0], lines[0]
        assert victim.read_text() == "precious\n"
        assert os.path.islink(writer) and os.path.islink(lock)
        assert routes(bpf_lab, inst.front) == before  # refused means untouched
        os.chown(ns, 0, -1)  # the fix the error names ...
        os.chmod(ns, 0o755)
        r = wgbpf(bpf_lab, "route", "add", "10.9.0.0/16", "alice", inst.front)
        assert r.returncode == 1 and "is a symlink, never followed: remove it" in r.stderr, r.stderr
        for p in (writer, lock):  # ... and the links it then names
            os.unlink(p)
        r = wgbpf(bpf_lab, "route", "add", "10.9.0.0/16", "alice", inst.front)
        assert r.returncode == 0, r.stderr
        assert "10.9.0.0/16" in routes(bpf_lab, inst.front) and victim.read_text() == "precious\n"
    finally:
        os.chmod(scratch, 0o700)
        os.chown(ns, 0, -1)
        os.chmod(ns, 0o755)
        for p in (writer, lock):
            if os.path.islink(p):
                os.unlink(p)

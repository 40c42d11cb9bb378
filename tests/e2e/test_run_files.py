# SPDX-License-Identifier: GPL-2.0-or-later
"""Issue 23, item 3 and "run dir full", as the tester met them, as root:

- WGBPF_RUN_DIR under /tmp: the `nobody` user made the run dir or the
  instance directory (0777) and planted symlinks at `<front>.writer` and
  `<front>.lock`. The writer lock (`wgbpf route add`, attach, detach) and
  the daemon's lock refuse in one line naming the directory and the fix;
  the symlinks' target is untouched.
- The pin root made by another user is refused the same way.
- The run dir's filesystem full (a tiny tmpfs in a private mount namespace,
  `unshare -m`): one line, no traceback, no empty lock file left.
"""
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest

from wgbtest import as_nobody, require, require_root, require_tools
from wgbpf import instance
from wgbpf.files import child_env

from labutil import TIME_SCALE

# lock files and directories only, no WireGuard: the host tier runs it, the
# vm tier (emulated, where each child's import takes seconds) need not
pytestmark = pytest.mark.skipif(TIME_SCALE > 1 and os.environ.get("WGBPF_E2E_SLOW") != "1",
                                reason="host tier only: nothing here depends on the WireGuard implementation "
                                       "(WGBPF_E2E_SLOW=1 runs it here)")

# the lock code as `wgbpf route add` and `wgbpf daemon` run it, in a process
# of its own (RUN_DIR is read at import); a refusal prints as the CLI does
LOCK = """
import os, sys
from wgbpf import instance
try:
    if sys.argv[1] == "writer":
        with instance.writer_lock("wg0"):
            pass
    else:
        instance.daemon_lock("wg0")
except instance.InstanceError as e:
    print(f"wgbpf: error: {e}", file=sys.stderr)
    sys.exit(1)
"""


def take_lock(kind, run_dir, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-c", LOCK, kind], env=dict(child_env(), WGBPF_RUN_DIR=run_dir),
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def tmp1777():
    """A sticky world-writable directory, as /tmp is (pytest's tmp_path is
    root's 0700: nobody could not reach into it)."""
    d = tempfile.mkdtemp(prefix="wgbpf-attack-")
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def victim(tmp_path):
    v = tmp_path / "victim"  # root's, where nobody cannot write
    v.write_text("precious\n")
    return v


def cookie():
    return os.path.basename(instance.run_dir())


def plant(ns_dir, victim):
    for name in ("wg0.writer", "wg0.lock"):
        os.symlink(str(victim), os.path.join(ns_dir, name))


def assert_refused(r, path, victim):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert path in lines[0] and f"chmod go-w {path}" in lines[0], lines[0]
    assert victim.read_text() == "precious\n" and os.stat(victim).st_size == len("precious\n")


@pytest.mark.parametrize("kind", ["writer", "daemon"])
def test_run_dir_made_by_another_user(tmp1777, victim, kind):
    """nobody makes WGBPF_RUN_DIR before root ever ran: all of it 0777."""
    run = os.path.join(tmp1777, "run")
    ns = os.path.join(run, cookie())

    def attack():
        os.mkdir(run, 0o777)
        os.mkdir(ns, 0o777)
        os.chmod(run, 0o777)
        os.chmod(ns, 0o777)
        plant(ns, victim)
    uid = as_nobody(attack)
    r = take_lock(kind, run)
    assert_refused(r, run, victim)
    assert f"owned by uid {uid}, not root" in r.stderr and f"chown root: {run}" in r.stderr
    assert os.path.islink(os.path.join(ns, "wg0.writer")) and os.path.islink(os.path.join(ns, "wg0.lock"))


@pytest.mark.parametrize("kind", ["writer", "daemon"])
def test_instance_dir_made_by_another_user(tmp1777, victim, kind):
    """Root's run dir, but the namespace's directory in it is nobody's and
    0777 (made while the run dir was open, say): refused by its name."""
    run = os.path.join(tmp1777, "run")
    os.mkdir(run, 0o755)
    ns = os.path.join(run, cookie())
    os.mkdir(ns, 0o755)
    os.chown(ns, pwd.getpwnam("nobody").pw_uid, -1)

    def attack():
        os.chmod(ns, 0o777)
        plant(ns, victim)
    as_nobody(attack)
    r = take_lock(kind, run)
    assert_refused(r, ns, victim)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_group_or_world_writable_run_dir_refused(tmp1777, victim, mode):
    """Root's own, but others may write it: nobody plants the links."""
    run = os.path.join(tmp1777, "run")
    ns = os.path.join(run, cookie())
    os.makedirs(ns, 0o755)
    os.chown(run, -1, pwd.getpwnam("nobody").pw_gid)  # 0770: nobody's group may write it
    os.chmod(run, mode)
    os.chmod(ns, 0o777)
    as_nobody(lambda: plant(ns, victim))
    for kind in ("writer", "daemon"):
        assert_refused(take_lock(kind, run), run, victim)


def test_root_made_dirs_pass(tmp1777):
    """The default shape (what wgbpf makes itself, as /run/wgbpf is): taken."""
    run = os.path.join(tmp1777, "run")
    for kind in ("writer", "daemon"):
        r = take_lock(kind, run)
        assert r.returncode == 0, r.stderr
    for d in (run, os.path.join(run, cookie())):
        st = os.stat(d)
        assert st.st_uid == 0 and st.st_mode & 0o022 == 0


def test_pin_root_made_by_another_user(monkeypatch):
    """The pin root (bpffs) gets the same check: refused before a map is
    opened or pinned."""
    require_root()
    from wgbpf import maps
    from wgbpf.dataplane import AttachError
    from wgbpf.dataplane.pins import check_pin_dirs
    base = os.environ["WGBPF_PIN_ROOT"] + "-attack"
    require(os.path.isdir("/sys/fs/bpf"), "needs bpffs at /sys/fs/bpf")
    os.makedirs(base, exist_ok=True)
    try:
        monkeypatch.setattr(maps, "PIN_ROOT", base)
        directory = maps.pin_dir("wg0")
        check_pin_dirs(directory)  # 0755 root: fine
        os.chown(base, pwd.getpwnam("nobody").pw_uid, -1)
        with pytest.raises(AttachError, match=f"{base} is owned by uid"):
            check_pin_dirs(directory)
        os.chown(base, 0, -1)
        os.chmod(base, 0o777)
        with pytest.raises(AttachError, match=f"chmod go-w {base}"):
            check_pin_dirs(directory)
    finally:
        shutil.rmtree(base, ignore_errors=True)


FULL = r"""
set -e
mount -t tmpfs -o size=4k,mode=0755 wgbpf-full "$1"
mkdir -m 0755 "$1/run" "$1/run/$2"
if [ "$4" = pid-there ]; then printf '12345\n' > "$1/run/$2/wg0.lock"; fi
dd if=/dev/zero of="$1/fill" bs=4k 2>/dev/null || true
set +e
WGBPF_RUN_DIR="$1/run" "$3" -c "$5" "$6"
echo "rc=$?"
ls -A "$1/run/$2"
[ "$4" = pid-there ] && cat "$1/run/$2/wg0.lock"
exit 0
"""


@pytest.mark.parametrize("kind", ["writer", "daemon"])
def test_run_dir_full(tmp_path, kind):
    """ENOSPC: the lock file is made (an inode) but its first bytes find no
    block. One line, no traceback, and the empty file is removed."""
    require_root()
    require_tools("unshare", "mount", "dd")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", FULL, "sh", str(mnt), cookie(),
                        sys.executable, "fresh", LOCK, kind], env=child_env(), capture_output=True, text=True,
                       timeout=60)
    assert "rc=1" in r.stdout, r.stdout + r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("wgbpf: error:")]
    assert "Traceback" not in r.stderr and len(errors) == 1, r.stderr
    assert "No space left on device" in errors[0] and "filesystem is full" in errors[0], errors[0]
    listed = r.stdout.split("rc=1", 1)[1].split()
    assert listed == [], f"left behind in the run dir: {listed}"
    assert os.listdir(mnt) == []  # the tmpfs was private to the namespace


def test_run_dir_full_daemon_lock_there(tmp_path):
    """A lock file an earlier daemon left (its pid in it) is rewritten in
    place: a full filesystem does not stop the next daemon."""
    require_root()
    require_tools("unshare", "mount", "dd")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", FULL, "sh", str(mnt), cookie(),
                        sys.executable, "pid-there", LOCK, "daemon"], env=child_env(), capture_output=True,
                       text=True, timeout=60)
    assert "rc=0" in r.stdout and "Traceback" not in r.stderr, r.stdout + r.stderr
    after = r.stdout.split("rc=0", 1)[1].split()
    assert after[0] == "wg0.lock" and after[1].isdigit() and after[1] != "12345", after


def test_nobody_cannot_hold_the_writer_lock_nor_delete_the_daemons(tmp1777):
    """Issue 23, item 3: in a run dir wgbpf made (root's, 0755; lock files
    0600), the `nobody` user can neither open `<front>.writer` to hold
    its flock (which would block every write) nor delete `<front>.lock`
    (after which a second daemon would start)."""
    run = os.path.join(tmp1777, "run")
    for kind in ("writer", "daemon"):
        assert take_lock(kind, run).returncode == 0
    ns_dir = os.path.join(run, cookie())
    writer, lock = os.path.join(ns_dir, "wg0.writer"), os.path.join(ns_dir, "wg0.lock")
    assert os.path.exists(writer) and os.path.exists(lock)

    def attack():
        import fcntl
        for how, fn in (("open the writer lock", lambda: fcntl.flock(os.open(writer, os.O_RDONLY), fcntl.LOCK_EX)),
                        ("delete the daemon lock", lambda: os.unlink(lock))):
            try:
                fn()
            except PermissionError:
                continue
            raise AssertionError(f"nobody could {how}")
    as_nobody(attack)
    assert os.path.exists(lock)
    assert take_lock("writer", run).returncode == 0  # nothing holds it

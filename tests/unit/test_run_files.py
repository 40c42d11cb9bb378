# SPDX-License-Identifier: GPL-2.0-or-later
"""The run dir as any user finds it (issue 23, item 3): a directory that
others may write is refused with the fix in one line, a symlink planted at
a lock file's name is refused and never written through, and what wgbpf
makes itself is 0755 / 0600. The attacks by another user are in
tests/e2e/test_run_files.py and tests/bpf/test_taken_instance_dir.py (root, as nobody)."""
import os
import stat

import pytest

from wgbpf import files, instance


@pytest.fixture
def run(monkeypatch, tmp_path):
    d = tmp_path / "run"
    monkeypatch.setattr(instance, "RUN_DIR", str(d))
    return d


@pytest.fixture
def victim(tmp_path):
    v = tmp_path / "victim"
    v.write_text("precious\n")
    return v


def lock(kind):
    if kind == "writer":
        with instance.writer_lock("wg0"):
            pass
    else:
        os.close(instance.daemon_lock("wg0"))


@pytest.mark.parametrize("kind", ["writer", "daemon"])
def test_made_by_us_is_ours_alone(run, kind):
    lock(kind)
    ns = instance.run_dir()
    for d in (str(run), ns):
        assert stat.S_IMODE(os.stat(d).st_mode) & 0o022 == 0
    name = "wg0.writer" if kind == "writer" else "wg0.lock"
    assert stat.S_IMODE(os.stat(os.path.join(ns, name)).st_mode) == 0o600


@pytest.mark.parametrize("kind", ["writer", "daemon"])
def test_symlink_at_a_lock_is_refused_not_followed(run, victim, kind):
    os.makedirs(instance.run_dir(), mode=0o755)
    link = instance.writer_lock_path("wg0") if kind == "writer" else instance.lock_path("wg0")
    os.symlink(victim, link)
    with pytest.raises(instance.InstanceError) as e:
        lock(kind)
    assert "symlink" in str(e.value) and link in str(e.value) and "\n" not in str(e.value)
    assert victim.read_text() == "precious\n" and os.path.islink(link)


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777])
@pytest.mark.parametrize("which", ["run dir", "namespace dir"])
def test_a_dir_others_may_write_is_refused(run, victim, mode, which):
    ns = instance.run_dir()
    os.makedirs(ns, mode=0o755)
    d = str(run) if which == "run dir" else ns
    os.chmod(d, mode)
    os.symlink(victim, instance.writer_lock_path("wg0"))
    for kind in ("writer", "daemon"):
        with pytest.raises(instance.InstanceError) as e:
            lock(kind)
        msg = str(e.value)
        assert f"{d} is writable by group or others" in msg and f"chmod go-w {d}" in msg, msg
    assert victim.read_text() == "precious\n"
    assert not os.path.exists(instance.lock_path("wg0"))


def test_run_dir_itself_a_symlink_is_refused(run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, run)
    with pytest.raises(instance.InstanceError, match="is a symlink"):
        lock("writer")
    assert os.listdir(elsewhere) == []


def test_fifo_at_the_lock_is_refused_not_hung_on(run):
    os.makedirs(instance.run_dir(), mode=0o755)
    os.mkfifo(instance.lock_path("wg0"))
    with pytest.raises(instance.InstanceError, match="not a regular file"):
        lock("daemon")
    assert instance.read_status("wg0") is None and not instance.daemon_alive("wg0")


def test_unsafe_dir_names_the_fix(tmp_path):
    assert files.unsafe_dir(str(tmp_path / "missing")) is None
    assert files.unsafe_dir(str(tmp_path)) is None  # pytest's: 0700, ours
    os.chmod(tmp_path, 0o770)
    why = files.unsafe_dir(str(tmp_path))
    assert why.startswith(f"{tmp_path} is writable by group or others (mode 0770)") and "chmod go-w" in why


def test_status_and_build_record_not_read_through_a_symlink(run, tmp_path):
    """A planted status or build record is not taken for ours: a build
    record names the filters detach may remove as its own."""
    from wgbpf.dataplane import build
    fake = tmp_path / "fake.json"
    fake.write_text('{"state": "stopped", "pid": 1, "key": "k", "programs": {"front_egress": 7}}')
    os.makedirs(instance.run_dir(), mode=0o755)
    os.symlink(fake, instance.status_path("wg0"))
    os.symlink(fake, instance.build_path("wg0"))
    assert instance.read_status("wg0") is None
    assert build.recorded_programs("wg0") == set()

# SPDX-License-Identifier: GPL-2.0-or-later
"""Shared test helpers: root/tool requirements, throwaway network namespaces.

Imported as `wgbtest` (a conftest.py per tier would make `import conftest`
ambiguous); tests/conftest.py turns the fixtures on for every tier.

Outside CI a test that needs root or a missing tool is skipped with the
reason; under CI (CI=true) CI has installed everything, so the same gap is
a failure: the end-to-end tier must never hide behind a skip there.
"""
import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import sys
import uuid

import click.testing
import pytest

CI = os.environ.get("CI") == "true"


class _Result81(click.testing.Result):
    @property
    def output(self):
        return self.stdout + (self.stderr if self.stderr_bytes else "")


class _SeparateStderrRunner(click.testing.CliRunner):
    """The tests read results as click >= 8.2 gives them: stderr apart, and
    output both streams. click 8.1 (Debian 12's 8.1.3) is told so."""
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("mix_stderr", False)
        super().__init__(*args, **kwargs)

    def invoke(self, *args, **kwargs):
        r = super().invoke(*args, **kwargs)
        r.__class__ = _Result81
        return r


if "mix_stderr" in click.testing.CliRunner.__init__.__code__.co_varnames:
    click.testing.CliRunner = _SeparateStderrRunner  # before the test modules import it
RUN_ID = uuid.uuid4().hex[:4]  # unique per pytest run: names of netns, devices, pins
_seq = itertools.count()


def require(ok, reason):
    """Skip (or fail under CI) unless `ok`."""
    if not ok:
        if CI:
            pytest.fail(f"CI is missing a requirement: {reason}")
        pytest.skip(reason)


def require_root():
    require(os.geteuid() == 0, "needs root (BPF, tc, network namespaces)")


def require_tools(*tools):
    for t in tools:
        require(shutil.which(t) is not None, f"needs {t} on PATH")


def require_bcc():
    require_root()
    try:
        import bcc  # noqa: F401
    except ImportError:
        require(False, "needs Debian's BCC (python3-bpfcc); make the venv with --system-site-packages")
    build = f"/lib/modules/{os.uname().release}/build"
    require(os.path.exists(build), f"BCC needs kernel headers at {build} (run scripts/setup.sh)")


def unique(prefix):
    """A name unique to this run, short enough for an interface (15 chars)."""
    return f"{prefix}{RUN_ID}{next(_seq)}"[:15]


def sh(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


@pytest.fixture
def netns():
    """A fresh network namespace, removed afterwards even on failure."""
    require_root()
    name = unique("wgbt")
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        sh("ip", "netns", "del", name, check=False)


def as_nobody(fn):
    """Run fn() in a child process as the `nobody` user (the attacker of
    the run-file and pin tests); returns nobody's uid."""
    require_root()
    nobody = pwd.getpwnam("nobody")
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            fn()
            os._exit(0)
        except BaseException as e:  # said, then the parent fails
            print(f"as nobody: {e!r}", file=sys.stderr)
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == 0, "the attacker's setup failed"
    return nobody.pw_uid


class MemSets:
    """setmaps.Sets over a dict: {id: value bytes}, counting writes (for
    KernelSets without a kernel: tests/unit/test_setmaps.py, test_nexthops.py)."""

    def __init__(self):
        self.values, self.writes = {}, 0

    def all(self, first=1, last=None):
        last = last or _setmaps().abi.MAX_SETS
        return {i: _setmaps().unpack(v) for i, v in self.values.items() if first <= i < last and v[1]}

    def write(self, sid, value):
        self.values[sid] = value
        self.writes += 1

    def free(self, sid):
        self.write(sid, bytes(_setmaps().SET_SIZE))


def _setmaps():
    from wgbpf import setmaps
    return setmaps

"""A daemon that fails at its start (its attach refused) leaves no instance
to list, but its status file says failed, and `status --check` reports it
while its front is there."""
import json
import os

from click.testing import CliRunner

from wgbpf import cli, daemon


def write_status(front, **st):
    os.makedirs(daemon.run_dir(), exist_ok=True)
    with open(daemon.status_path(front), "w") as f:
        json.dump(dict(st, front=front, pid=1, backend="bpf"), f)


def test_a_daemon_that_failed_to_start_fails_the_check(monkeypatch):
    monkeypatch.setattr(daemon, "_device_exists", lambda name, netns=None: name == "wgfail0")
    write_status("wgfail0", state="failed", error="peer 'a': member device 'x' does not exist")
    write_status("wggone0", state="failed", error="whatever")  # its front is gone: not listed
    write_status("wgstop0", state="stopped")
    try:
        r = CliRunner().invoke(cli.main, ["status", "--check"], prog_name="wgbpf")
        assert r.exit_code == 2, r.output
        assert r.output.strip() == ("wgfail0: daemon failed: peer 'a': member device 'x' does not exist "
                                    "(no instance attached)")
    finally:
        for f in ("wgfail0", "wggone0", "wgstop0"):
            os.unlink(daemon.status_path(f))

# SPDX-License-Identifier: GPL-2.0-or-later
"""A daemon that fails at its start (its attach refused) leaves no instance
to list, but its status file says failed, and `status --check` reports it
while its front is there."""
import json
import os

from click.testing import CliRunner

from wgbpf import cli, instance


def write_status(front, **st):
    os.makedirs(instance.run_dir(), exist_ok=True)
    with open(instance.status_path(front), "w") as f:
        json.dump(dict(st, front=front, pid=1, backend="bpf"), f)


def test_a_daemon_that_failed_to_start_fails_the_check(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # `status` needs root; nothing here does
    # its front: a device that exists here (lo), the other one's does not
    write_status("lo", state="failed", error="peer 'a': member device 'x' does not exist")
    write_status("wggone0", state="failed", error="whatever")  # its front is gone: not listed
    write_status("wgstop0", state="stopped")
    try:
        r = CliRunner().invoke(cli.main, ["status", "--check"], prog_name="wgbpf")
        assert r.exit_code == 2, r.output
        assert r.output.strip() == ("lo: daemon failed: peer 'a': member device 'x' does not exist "
                                    "(no instance attached)")
    finally:
        for f in ("lo", "wggone0", "wgstop0"):
            os.unlink(instance.status_path(f))

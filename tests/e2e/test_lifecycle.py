# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: one configuration, forwarding, and an instance's lifecycle.

A repeated attach does not compile again; forwarding off is warned about
and shown; `wgbpf daemon FRONT` with no peers adopts the attached instance
(and -v logs the route events it applies), or attaches <config dir>/
<front>.toml over it, the difference shown by status first; a daemon whose
front is gone for good exits 1; detach removes the instance's run files.

The tests run in order on one lab, attached once (each attach costs a
compile under the vm tier's emulation).
"""
import json
import os
import subprocess
import time

import pytest

from wgbtest import RUN_ID
from labutil import TIME_SCALE, WGBPF, DaemonProc, lab_session, run
from wgbpf.config import default_path
from wgbpf.instance import run_dir

pytestmark = [pytest.mark.root, pytest.mark.e2e]


@pytest.fixture(scope="module")
def lab():
    with lab_session(f"c{RUN_ID}", "ping", "sysctl") as lab:
        try:
            first = json.loads(lab.attach(None, "--json").stdout)
            assert first["compiled"]
            lab.route_every_peer(("alice", "bob"), families=(4,))
            yield lab
        finally:
            with_file(lab, None)


def with_file(lab, text):
    """The front's default config file (the session's config dir), or none."""
    path = default_path(lab.front)
    if text is None:
        if os.path.exists(path):
            os.unlink(path)
    else:
        with open(path, "w") as f:
            f.write(text)
    return path


def sysctl(lab, *settings):
    r = run("ip", "netns", "exec", lab.hub, "sysctl", "-qw", *settings)
    assert r.returncode == 0, r.stderr


def test_a_repeated_attach_does_not_compile(lab):
    t0 = time.monotonic()
    r = json.loads(lab.attach(None, "--json").stdout)
    assert not r["compiled"] and not r["changes"] and not r["programs_reloaded"]
    assert time.monotonic() - t0 < 10 * TIME_SCALE
    assert lab.ping("alice", lab.peers["bob"]["host4"])  # the programs kept run on
    # no --peer, no config file: the attached instance, attached again as it is
    r = json.loads(lab.wgbpf("attach", lab.front, "--json").stdout)
    assert r["peers"] == 3 and not r["changes"] and not r["compiled"]


def test_forwarding_off_is_warned_and_shown(lab):
    try:
        sysctl(lab, "net.ipv4.ip_forward=0")
        r = lab.attach()
        assert r.returncode == 0 and "unchanged" in r.stdout
        assert "warning: forwarding is off" in r.stderr and f"net.ipv4.conf.{lab.front}.forwarding" in r.stderr
        assert not lab.ping("alice", lab.peers["bob"]["host4"], count=2)  # what the warning is about
        assert lab.status()["forwarding_off"] == [f"net.ipv4.conf.{lab.front}.forwarding"]
        c = lab.wgbpf("status", "--check", check=False)
        assert c.returncode == 2 and "forwarding off" in c.stdout
    finally:
        sysctl(lab, "net.ipv4.ip_forward=1")
    assert lab.status()["forwarding_off"] == []
    assert lab.ping("alice", lab.peers["bob"]["host4"])


def test_the_daemon_adopts_the_attached_instance(lab):
    alice = lab.peers["alice"]
    d = DaemonProc(lab.hub, "daemon", lab.front, "-v")  # no --peer, no config file
    try:
        st = lab.status()
        assert st["config"] == {"source": "attached"}
        assert sorted(m["peer"] for m in st["members"]) == ["alice", "bob", "carol"]
        lab.ip("route", "add", "10.77.0.0/16", "via", alice["tag4"], "dev", lab.front, "onlink")
        d.wait_for("route 10.77.0.0/16 -> alice", timeout=5)
        lab.ip("route", "del", "10.77.0.0/16")
        d.wait_for("route 10.77.0.0/16 withdrawn", timeout=5)
        assert "10.77.0.0/16" not in [r["prefix"] for r in lab.dump()["routes"]]
    finally:
        d.stop()
    assert d.proc.returncode == 0
    assert lab.status()["daemon"]["state"] == "stopped"


def test_the_config_file_wins_and_the_difference_is_shown(lab):
    bob, carol = lab.peers["bob"], lab.peers["carol"]
    # the file leaves carol out
    text = "".join(f'[[peer]]\nname = "{n}"\nmember = "{p["member"]}"\ntags = ["{p["tag4"]}", "{p["tag6"]}"]\n'
                   for n, p in lab.peers.items() if n != "carol")
    path = with_file(lab, text)
    try:
        st = lab.status()
        assert st["config"] == {"path": path, "differences": ["peer carol: attached, not in the config"]}
        c = lab.wgbpf("status", "--check", check=False)
        assert c.returncode == 2 and "peer carol: attached, not in the config" in c.stdout
        d = DaemonProc(lab.hub, "daemon", lab.front)
        try:
            assert f"differs from {path}: peer carol: attached, not in the config; attaching the config" \
                in d.text()
            st = lab.status()
            assert st["config"] == {"path": path, "differences": []}
            assert sorted(m["peer"] for m in st["members"]) == ["alice", "bob"]
            assert lab.ping("alice", bob["host4"])
        finally:
            d.stop()
    finally:
        with_file(lab, None)
    r = lab.attach()  # carol back, from the command line (no compile)
    assert f"peer carol ({carol['member']}" in r.stdout


def test_an_attach_under_a_command_line_daemon_is_flagged_by_check(lab):
    """A daemon run from its command line with `--source loose`; an
    operator's attach without it sets the instance back to strict under
    the daemon. The daemon resyncs and says how the instance differs from
    its command line, and `status --check` fails on it (it said ok)."""
    d = DaemonProc(lab.hub, "daemon", lab.front, *lab.peer_args(), "--source", "loose")
    try:
        assert lab.wgbpf("status", "--check", check=False).returncode == 0
        lab.attach()
        deadline = time.monotonic() + 10 * TIME_SCALE
        while True:
            c = lab.wgbpf("status", "--check", check=False)
            if c.returncode:
                break
            assert time.monotonic() < deadline, c.stdout
            time.sleep(0.2)
        assert "differs from the daemon's command line: source: attached strict, config loose" in c.stdout, c.stdout
    finally:
        d.stop()
    lab.attach()


# a re-attach after the pins went compiles again: dear under emulation, and
# nothing here depends on the WireGuard implementation
HOST_ONLY = pytest.mark.skipif(TIME_SCALE > 1 and os.environ.get("WGBPF_E2E_SLOW") != "1",
                               reason="compiles twice: host tier only (WGBPF_E2E_SLOW=1 runs it here)")


@HOST_ONLY
def test_pins_removed_under_the_filters_are_flagged_and_repaired(lab):
    """The pin directory removed while attached: the filters run on, on
    maps nothing can write. status --check says so (exit 1), a plain
    attach takes its own orphaned filters back (no --force), and detach
    removes them when the pins are gone again."""
    bob = lab.peers["bob"]
    pins = lab.pin_dir()

    def remove_pins():
        for f in os.listdir(pins):
            os.unlink(os.path.join(pins, f))
        os.rmdir(pins)

    def check():
        return run(*WGBPF, "--netns", lab.hub, "status", "--check")

    remove_pins()
    r = check()
    assert r.returncode != 0 and "pins gone" in r.stdout + r.stderr, (r.returncode, r.stdout, r.stderr)
    assert lab.front in r.stdout + r.stderr
    r = lab.attach(None, "--json")  # no --force: the orphaned filters run programs it recorded
    assert check().returncode == 0
    lab.route_every_peer(("alice", "bob"), families=(4,))
    assert lab.ping("alice", bob["host4"]), "steering after the re-attach"
    remove_pins()
    r = lab.wgbpf("detach", lab.front)
    assert "detached" in r.stdout, r.stdout
    r = check()
    assert "pins gone" not in r.stdout + r.stderr, r.stdout
    assert not lab.ping("alice", bob["host4"], count=2), "a filter was left running"
    lab.attach()  # as the tests after this one expect it
    lab.route_every_peer(("alice", "bob"), families=(4,))
    assert lab.ping("alice", bob["host4"])


def test_gone_for_good_then_detach(lab):
    d = DaemonProc(lab.hub, "daemon", lab.front, "--gone-after", "1")
    try:
        lab.ip("link", "del", lab.front)
        d.proc.wait(15 * TIME_SCALE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the daemon ran on with its front gone:\n{d.text()}")
    finally:
        d.stop()
    assert d.proc.returncode == 1
    assert f"front {lab.front} does not exist for 1s: gone for good" in d.text()
    st = lab.status()
    assert st["daemon"]["state"] == "failed"
    files = [f for f in os.listdir(run_dir(lab.netns_id())) if f.startswith(f"{lab.front}.")]
    assert f"{lab.front}.json" in files
    lab.wgbpf("detach", lab.front)
    assert not os.path.exists(run_dir(lab.netns_id())) or \
        not [f for f in os.listdir(run_dir(lab.netns_id())) if f.startswith(f"{lab.front}.")]
    r = run(*WGBPF, "--netns", lab.hub, "status", "--json")
    assert r.returncode == 0 and lab.front not in [s["front"] for s in json.loads(r.stdout)]

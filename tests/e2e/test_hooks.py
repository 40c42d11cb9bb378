# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: a second instance of the same front under another pin root
(a container sharing the hub's network namespace, with a bpffs of its own)
cannot take the hooks unnoticed.

        alice ----\\                 /---- bob
                   wg-alice  wg0  wg-bob        (hub: front wg0, one member per peer)
                          \\_ hub _/            instance A: the test's pin root
                          wg-carol ---- carol   instance B: another pin root, same names

B's attach is refused while A holds the hooks; forced, B takes them: A's
daemon logs it (and does not fight over the hooks), A's `status --check`
names each device it lost (exit 2); A's detach leaves B's filters in place.
"""
import os
import shutil
import subprocess

import pytest

from wgbtest import RUN_ID
from labutil import TIME_SCALE, WGBPF, DaemonProc, lab_session

pytestmark = [pytest.mark.root, pytest.mark.e2e]

# Instance B's own pin root (on the same bpffs: pins must be) and run
# directory, as a container with its own bpffs and /run would have them.
OTHER = dict(os.environ, WGBPF_PIN_ROOT=os.environ["WGBPF_PIN_ROOT"] + "-other",
             WGBPF_RUN_DIR=os.environ["WGBPF_RUN_DIR"] + "-other")


@pytest.fixture(scope="module")
def lab():
    with lab_session(f"h{RUN_ID}", "tc") as lab:
        try:
            yield lab
        finally:
            other(lab, "detach", lab.front)
            shutil.rmtree(OTHER["WGBPF_PIN_ROOT"], ignore_errors=True)
            shutil.rmtree(OTHER["WGBPF_RUN_DIR"], ignore_errors=True)


def other(lab, *args):
    """wgbpf as instance B: the same namespace and names, its own pin root."""
    return subprocess.run([*WGBPF, "--netns", lab.hub, *args], env=OTHER, capture_output=True,
                          text=True, timeout=60 * TIME_SCALE)


def test_a_second_pin_root_cannot_take_the_hooks_unnoticed(lab):
    lab.attach()
    assert lab.wgbpf("status", "--check").returncode == 0

    r = other(lab, "attach", lab.front, *lab.peer_args())
    assert r.returncode == 1, r.stdout + r.stderr
    assert "another wgbpf instance" in r.stderr and "--force" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert lab.wgbpf("status", "--check").returncode == 0  # refused means untouched

    d = DaemonProc(lab.hub, "daemon", lab.front, *lab.peer_args())
    try:
        r = other(lab, "attach", lab.front, *lab.peer_args(), "--force")
        assert r.returncode == 0, r.stdout + r.stderr
        d.wait_for(f"hook on {lab.front} runs program id ")
        assert "not taken back" in d.text(), d.text()
    finally:
        d.stop()
    r = lab.wgbpf("status", "--check", check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    devices = [lab.front] + [p["member"] for p in lab.peers.values()]
    for dev in devices:  # one line per device: "tc egress hook on wg0 runs program id N, not this instance's M"
        assert f" hook on {dev} runs program id " in r.stdout, r.stdout
    assert r.stdout.count("not this instance's ") == len(devices), r.stdout
    assert other(lab, "status", "--check", "--front", lab.front).returncode == 0

    # A's detach removes only what runs its programs: B stays hooked
    lab.wgbpf("detach", lab.front)
    r = other(lab, "status", "--check", "--front", lab.front)
    assert r.returncode == 0, r.stdout + r.stderr

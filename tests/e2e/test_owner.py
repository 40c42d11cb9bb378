# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: wgbpf owns only what it created, and one writer at a time.

        alice ----\\                 /---- bob
                   wg-alice  wg0  wg-bob        (hub: front wg0, one member per peer)
                          \\_ hub _/
                          wg-carol ---- carol

An operator's tc filters and clsact qdisc survive detach; a member another
instance holds is refused; concurrent attaches are serialized; an attach or
detach under a running daemon makes it follow the pinned maps at once; a
pin removed by hand is repaired by the next attach.
"""
import ctypes
import json
import os
import subprocess
import time

import pytest

from wgbtest import RUN_ID
from labutil import TIME_SCALE, WGBPF, DaemonProc, lab_session, run
from wgbpf import abi, bpfsys
from wgbpf.instance import read_status
from wgbpf.maps import pin_dir

pytestmark = [pytest.mark.root, pytest.mark.e2e]

# An operator's filter, before ours (priority 1): it never matches (the
# first word of an IPv4/IPv6 header is never 0x12345678), so traffic goes
# on to ours. (Plain u32: this kernel has no tc action modules to load.)
OPERATOR_FILTER = ["prio", "1", "u32", "match", "u32", "0x12345678", "0xffffffff", "at", "0",
                   "classid", "1:1"]


@pytest.fixture(scope="module")
def lab():
    with lab_session(f"o{RUN_ID}", "ping", "tc") as lab:
        try:
            yield lab
        finally:
            run(*WGBPF, "--netns", lab.hub, "detach", "other0")


@pytest.fixture
def fresh(lab):
    """Each test starts detached, with no tc state on the hub's devices."""
    lab.wgbpf("detach", lab.front, check=False)
    for dev in [lab.front] + [p["member"] for p in lab.peers.values()]:
        tc(lab, "qdisc", "del", "dev", dev, "clsact", check=False)
    yield lab
    lab.wgbpf("detach", lab.front, check=False)


def tc(lab, *args, check=True):
    r = run("tc", "-n", lab.hub, *args)
    if check:
        assert r.returncode == 0, f"tc {' '.join(args)}: {r.stderr}"
    return r



def add_routes(lab):
    """Each spoke's IPv4 prefix to its peer (`wgbpf route`, no daemon)."""
    for name, p in lab.peers.items():
        lab.add_route(name, p["prefix4"])


def has_clsact(lab, dev):
    return "clsact" in tc(lab, "qdisc", "show", "dev", dev).stdout


def ingress_filters(lab, dev):
    return tc(lab, "filter", "show", "dev", dev, "ingress", check=False).stdout


def lookup_peers(lab, addr):
    return json.loads(lab.wgbpf("lookup", addr, "--json").stdout).get("peers")


def wait_for(what, check, timeout=2.0):
    """Seconds until check() is true; fails after timeout."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout * TIME_SCALE, f"{what}: not within {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_detach_keeps_the_operators_filters_and_clsact(fresh):
    lab = fresh
    alice, bob, carol = (lab.peers[n]["member"] for n in ("alice", "bob", "carol"))
    # alice: the operator's clsact and filter, there before wgbpf
    tc(lab, "qdisc", "add", "dev", alice, "clsact")
    tc(lab, "filter", "add", "dev", alice, "ingress", *OPERATOR_FILTER)
    lab.attach()
    # bob: the operator's filter added on the clsact wgbpf created
    tc(lab, "filter", "add", "dev", bob, "ingress", *OPERATOR_FILTER)
    add_routes(lab)
    assert lab.ping("alice", lab.peers["bob"]["host4"], count=2)
    lab.wgbpf("detach", lab.front)
    for dev in (alice, bob):
        assert "u32" in ingress_filters(lab, dev), f"{dev}: the operator's filter is gone"
        assert "bpf" not in ingress_filters(lab, dev)
        assert has_clsact(lab, dev), f"{dev}: clsact deleted under the operator's filter"
    # carol's clsact was wgbpf's and nothing else is on it: gone with wgbpf
    assert not has_clsact(lab, carol)
    # and re-attaching after an operator's clsact of their own is fine too
    tc(lab, "qdisc", "add", "dev", carol, "clsact")
    lab.attach()
    lab.wgbpf("detach", lab.front)
    assert has_clsact(lab, carol), "the operator's empty clsact was deleted"


def test_a_member_of_another_instance_is_refused(fresh):
    lab = fresh
    lab.attach()
    add_routes(lab)
    before = lab.status()
    r = lab.wgbpf("attach", "other0", "--members-only",
                  "--peer", f"mallory={lab.peers['alice']['member']},10.255.9.9", check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"belongs to wgbpf instance {lab.front!r}" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    # nothing made for the refused one, the first untouched and working
    assert lab.wgbpf("status", "--front", "other0", check=False).returncode != 0
    after = lab.status()
    assert [m for m in after["members"]] == [m for m in before["members"]]
    assert all(m["hooked"] for m in after["members"])
    assert lab.ping("alice", lab.peers["bob"]["host4"], count=2)
    # the same for a front another instance uses as a member
    r = lab.wgbpf("attach", lab.peers["carol"]["member"], "--peer",
                  f"x={lab.peers['bob']['member']}", check=False)
    assert r.returncode == 1 and f"instance {lab.front!r}" in r.stderr, r.stderr
    # re-attaching the instance itself is of course fine
    assert "unchanged" in lab.attach().stdout


def test_concurrent_attaches_are_serialized(fresh):
    lab = fresh
    cmd = [*WGBPF, "--netns", lab.hub, "attach", lab.front, *lab.peer_args()]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120 * TIME_SCALE) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in err, f"{out}\n{err}"
    # the second waited for the first and found nothing to change
    assert sum("created" in out for out, _ in outs) == 1, outs
    st = lab.status()
    assert st["front_hooked"] and all(m["hooked"] for m in st["members"])
    assert sorted(m["peer"] for m in st["members"]) == sorted(lab.peers)
    add_routes(lab)
    assert lab.ping("alice", lab.peers["carol"]["host4"], count=2)


@pytest.fixture
def routed(fresh):
    """Kernel routes by tag (instead of the lab's `dev front`) and a daemon
    following them."""
    lab = fresh
    for p in lab.peers.values():
        run("ip", "-n", lab.hub, "route", "del", p["prefix4"])
        lab.ip("route", "add", p["prefix4"], "via", p["tag4"], "dev", lab.front, "onlink")
    d = DaemonProc(lab.hub, "daemon", lab.front, *lab.peer_args())
    try:
        yield lab, d
    finally:
        d.stop()
        for p in lab.peers.values():
            run("ip", "-n", lab.hub, "route", "replace", p["prefix4"], "dev", lab.front)


def test_detach_and_attach_under_a_running_daemon(routed):
    lab, d = routed
    bob = lab.peers["bob"]
    wait_for("bob's route", lambda: lookup_peers(lab, bob["host4"]) == ["bob"])
    lab.wgbpf("detach", lab.front)
    # the daemon notices its maps are gone, and says so
    d.wait_for("instance detached", timeout=3)
    assert read_daemon_state(lab) == "detached"
    # and `status --check` says so: nothing is steered while it waits
    r = run(*WGBPF, "--netns", lab.hub, "status", "--check")
    assert r.returncode == 2 and "running on a detached instance" in r.stdout, r.stdout + r.stderr
    t0 = time.monotonic()
    lab.attach()
    wait_for("lookup after attach", lambda: lookup_peers(lab, bob["host4"]) == ["bob"],
             timeout=2.0 - (time.monotonic() - t0))
    assert lab.ping("alice", bob["host4"], count=2)
    assert read_daemon_state(lab) == "running"


def test_a_smaller_peer_set_under_a_running_daemon(routed):
    lab, d = routed
    alice, carol = lab.peers["alice"], lab.peers["carol"]
    wait_for("carol's route", lambda: lookup_peers(lab, carol["host4"]) == ["carol"])
    r = lab.attach(["alice", "bob"])  # carol leaves
    assert "the running daemon reopens the maps and resyncs" in r.stdout, r.stdout
    d.wait_for("sync (attach)", timeout=2)  # told, it resynced at once
    assert lookup_peers(lab, alice["host4"]) == ["alice"]
    assert lab.ping("bob", alice["host4"], count=2)
    lab.attach()  # and comes back: the daemon gives her routes back at once
    wait_for("carol's route again", lambda: lookup_peers(lab, carol["host4"]) == ["carol"])
    assert lab.ping("alice", carol["host4"], count=2)


def test_a_pin_removed_by_hand_is_repaired(fresh):
    lab = fresh
    lab.attach()
    bob = lab.peers["bob"]
    add_routes(lab)
    os.unlink(os.path.join(pin_dir(lab.front, lab.hub), "routes4"))
    r = lab.attach()
    assert "pins repaired: routes4" in r.stdout, r.stdout
    # the entry written before is still there, and read by the programs
    assert lookup_peers(lab, bob["host4"]) == ["bob"]
    assert lab.ping("alice", bob["host4"], count=2)


def test_a_pin_removed_under_a_running_daemon_then_repaired(routed):
    """The daemon stops writing while its maps are unpinned, and resumes
    once attach pins the very maps it holds again."""
    lab, d = routed
    bob = lab.peers["bob"]
    wait_for("bob's route", lambda: lookup_peers(lab, bob["host4"]) == ["bob"])
    os.unlink(os.path.join(pin_dir(lab.front, lab.hub), "routes4"))
    d.wait_for("instance detached", timeout=3)
    r = lab.attach()
    assert "pins repaired: routes4" in r.stdout, r.stdout
    d.wait_for("maps pinned again", timeout=3)
    wait_for("running again", lambda: read_daemon_state(lab) == "running")
    # and it follows the kernel again
    lab.ip("route", "replace", "10.77.0.0/16", "via", bob["tag4"], "dev", lab.front, "onlink")
    try:
        wait_for("a new route", lambda: lookup_peers(lab, "10.77.0.1") == ["bob"])
    finally:
        lab.ip("route", "del", "10.77.0.0/16", check=False)


def test_a_pin_replaced_by_hand_reloads_the_programs_on_it(fresh):
    lab = fresh
    lab.attach()
    # another (empty) map pinned in routes4's place: the programs never read it
    path = os.path.join(pin_dir(lab.front, lab.hub), "routes4")
    spec = abi.MAPS["routes4"]
    os.unlink(path)
    fd = bpfsys.map_create(spec.type, ctypes.sizeof(spec.key), ctypes.sizeof(spec.value),
                           spec.max_entries, spec.flags, "routes4")
    try:
        bpfsys.obj_pin(fd, path)
    finally:
        os.close(fd)
    r = lab.attach()
    assert "pins repaired: routes4 pinned is not the map the programs read" in r.stdout, r.stdout
    # what is written now (to the pinned map) is what steers: the routes
    # are added only now, so traffic flows only if the programs read it
    add_routes(lab)
    assert lookup_peers(lab, lab.peers["bob"]["host4"]) == ["bob"]
    assert lab.ping("alice", lab.peers["bob"]["host4"], count=2)


def read_daemon_state(lab):
    """The daemon's state as its status file says (`wgbpf status` needs an
    instance attached)."""
    return (read_status(lab.front, lab.hub) or {}).get("state")

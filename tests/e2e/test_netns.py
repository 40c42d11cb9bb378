# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: wgbpf instances are scoped to their network namespace.

The lab's hub (namespace A) holds front F with members for alice, bob and
carol. A second namespace B, made here, holds a TUN front of the same name
F and two TUN members (dave, erin), with tags and prefixes that collide
with A's. Each must keep its own peers, routes, pins, lock and status;
listings see only their own namespace; detach in one leaves the other
running; `status --check` says when a member is unhooked.
"""
import contextlib
import json
import os
import shutil
import subprocess

import pytest

from wgbpf import instance, maps
from wgbtest import RUN_ID, require_root
from labutil import LAB, WGBPF, WG_MODE, lab_session, run

pytestmark = [pytest.mark.root, pytest.mark.e2e]


class Other:
    """Namespace B: TUN devices named like the lab's front, and members."""

    def __init__(self, lab):
        self.ns = f"{lab.id}-other"
        self.front = lab.front
        self.members = {"dave": f"{lab.id}-dave", "erin": f"{lab.id}-erin"}

    def ip(self, *args):
        r = run("ip", "-n", self.ns, *args)
        assert r.returncode == 0, r.stderr

    def tun(self, dev):
        """A layer-3 device: TUN, or where the kernel has WireGuard (the vm
        tier's guest has no /dev/net/tun) a peerless WireGuard device."""
        if WG_MODE == "kernel":
            self.ip("link", "add", dev, "type", "wireguard")
        else:
            self.ip("tuntap", "add", "dev", dev, "mode", "tun")
        self.ip("link", "set", dev, "up")

    def up(self):
        r = run("ip", "netns", "add", self.ns)
        assert r.returncode == 0, r.stderr
        self.ip("link", "set", "lo", "up")
        # a hub forwards (status --check reports forwarding off)
        r = run("ip", "netns", "exec", self.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1")
        assert r.returncode == 0, r.stderr
        for dev in [self.front, *self.members.values()]:
            self.tun(dev)

    def wgbpf(self, *args, check=True):
        r = run(*WGBPF, "--netns", self.ns, *args)
        if check:
            assert r.returncode == 0, f"wgbpf {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        return r

    def down(self):
        if os.path.exists(f"/run/netns/{self.ns}"):
            self.wgbpf("detach", self.front, check=False)
            with contextlib.suppress(OSError):
                from wgbpf.maps import pin_dir
                shutil.rmtree(pin_dir(self.front, self.ns), ignore_errors=True)
            run("ip", "netns", "del", self.ns)


@pytest.fixture(scope="module")
def two():
    with lab_session(f"n{RUN_ID}", "ping") as lab:
        other = Other(lab)
        other.down()
        try:
            lab.attach()
            lab.route_every_peer(families=(4,))
            other.up()
            # the same front name, colliding tags and prefixes, in namespace B
            other.wgbpf("attach", other.front, "--peer", f"dave={other.members['dave']},10.255.0.1",
                        "--peer", f"erin={other.members['erin']},fe80::2")
            other.wgbpf("route", "add", "10.1.0.0/16", "dave")
            other.wgbpf("route", "add", "10.9.0.0/16", "erin")
            yield lab, other
        finally:
            other.down()


def routes(dump):
    return {r["prefix"]: r["peers"] for r in dump["routes"]}


def test_same_front_in_two_namespaces_is_two_instances(two):
    lab, other = two
    a = lab.dump()
    b = json.loads(other.wgbpf("dump", "--json").stdout)
    assert [p["name"] for p in a["peers"]] == ["alice", "bob", "carol"]
    assert [p["name"] for p in b["peers"]] == ["dave", "erin"]
    assert routes(a)["10.1.0.0/16"] == ["alice"] and "10.9.0.0/16" not in routes(a)
    assert routes(b)["10.1.0.0/16"] == ["dave"] and routes(b)["10.9.0.0/16"] == ["erin"]
    assert lab.pin_dir() != json.loads(other.wgbpf("status", "--json").stdout)[0]["pin_dir"]
    assert lab.ping("alice", lab.peers["bob"]["host4"]), "traffic through A broke when B attached"


def test_listings_see_only_their_namespace(two):
    lab, other = two
    a = json.loads(run(*WGBPF, "--netns", lab.hub, "status", "--json").stdout)
    b = json.loads(other.wgbpf("status", "--json").stdout)
    assert [s["front"] for s in a] == [lab.front] and [s["front"] for s in b] == [other.front]
    assert [m["peer"] for m in a[0]["members"]] == ["alice", "bob", "carol"]
    assert [m["peer"] for m in b[0]["members"]] == ["dave", "erin"]
    # without --front: the one instance of this namespace, not "several instances"
    r = other.wgbpf("lookup", "10.1.2.3", "--json")
    assert json.loads(r.stdout)["peers"] == ["dave"]
    r = run(*WGBPF, "--netns", lab.hub, "lookup", "10.1.2.3", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["peers"] == ["alice"], r.stderr
    # --all: both, each with its namespace's id and name
    every = json.loads(run(*WGBPF, "status", "--all", "--json").stdout)
    mine = {s["netns_name"]: s for s in every if s["netns_name"] in (lab.hub, other.ns)}
    assert set(mine) == {lab.hub, other.ns}
    assert mine[lab.hub]["front"] == mine[other.ns]["front"] == lab.front
    assert mine[lab.hub]["netns"] != mine[other.ns]["netns"]
    assert [m["peer"] for m in mine[other.ns]["members"]] == ["dave", "erin"]


@pytest.mark.parametrize("name, error", [
    ("", "wgbpf: error: --netns '': name a network namespace"),
    (f"nope{RUN_ID}", f"wgbpf: error: --netns: network namespace 'nope{RUN_ID}': No such file or directory"),
], ids=["empty", "missing"])  # ids free of RUN_ID: xdist's workers must collect the same names
def test_bad_netns_is_an_error(two, name, error):
    r = run(*WGBPF, "--netns", name, "status")
    assert r.returncode == 1 and r.stderr.startswith(error) and "Traceback" not in r.stderr, r.stderr


def test_check_healthy_then_a_recreated_member_in_b(two):
    lab, other = two
    r = run(*WGBPF, "--netns", lab.hub, "status", "--check")
    assert r.returncode == 0 and r.stdout.startswith("ok: 1 instance"), r.stdout + r.stderr
    assert other.wgbpf("status", "--check").returncode == 0
    dave = other.members["dave"]
    other.ip("link", "del", dave)
    other.tun(dave)  # same name, new ifindex, no filter: nothing re-hooks it without a daemon
    r = other.wgbpf("status", "--check", check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout.startswith(f"{other.front}: peer dave: member {dave} unhooked: {dave} was re-created"), r.stdout
    s = json.loads(other.wgbpf("status", "--json").stdout)[0]
    assert [m["hooked"] for m in s["members"]] == [False, True]
    # A is not B: still healthy
    assert run(*WGBPF, "--netns", lab.hub, "status", "--check").returncode == 0


def test_detach_in_one_leaves_the_other_running(two):
    lab, other = two
    before = routes(lab.dump())
    b_pins = json.loads(other.wgbpf("status", "--json").stdout)[0]["pin_dir"]
    other.wgbpf("detach", other.front)
    assert not os.path.exists(b_pins) and os.path.isdir(lab.pin_dir())
    assert routes(lab.dump()) == before
    assert lab.ping("alice", lab.peers["bob"]["host4"]), "detach in B broke traffic through A"
    assert run(*WGBPF, "--netns", lab.hub, "status", "--check").returncode == 0
    r = other.wgbpf("status", "--json")
    assert json.loads(r.stdout) == []


def test_check_a_recreated_member_without_a_daemon(two):
    lab, _ = two
    member = lab.peers["carol"]["member"]
    r = subprocess.run(["bash", LAB, "recreate", member], env=lab.env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = run(*WGBPF, "--netns", lab.hub, "status", "--check")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{lab.front}: peer carol: member {member} unhooked: {member} was re-created" in r.stdout, r.stdout


# -- without the lab: what needs root but no WireGuard (from tests/unit/test_netns.py) --

HERE = maps.netns_id()


def test_paths_are_keyed_by_namespace(tmp_path, monkeypatch):
    require_root()  # the path's namespace is joined from a thread: setns(2)
    monkeypatch.setattr(maps, "PIN_ROOT", "/p")
    monkeypatch.setattr(instance, "RUN_DIR", "/r")
    assert maps.pin_dir("wg0") == f"/p/{HERE}/wg0"
    assert maps.pin_dir("wg0", 99) == "/p/99/wg0"
    assert instance.status_path("wg0") == f"/r/{HERE}/wg0.json"
    assert instance.lock_path("wg0", 99) == "/r/99/wg0.lock"
    assert maps.netns_id("/proc/self/ns/net") == HERE  # a path, read from a thread


def test_attach_under_ip_netns_exec_is_refused_not_pinned_into_thin_air(netns):
    """`ip netns exec` gives the command a mount namespace of its own with a
    fresh /sys: a bpffs mounted there, and the pins in it, would vanish
    when the command exits. Refused, pointing at --netns."""
    import sys
    code = "from wgbpf import dataplane; dataplane.ensure_bpffs()"
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code],
                       capture_output=True, text=True, env=maps.child_env())
    assert r.returncode != 0 and "`ip netns exec`?" in r.stderr and "--netns" in r.stderr, r.stderr
    # where the command shares its parent's mount namespace, bpffs is found (or mounted)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=maps.child_env())
    assert r.returncode == 0, r.stderr

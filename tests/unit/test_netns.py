# SPDX-License-Identifier: GPL-2.0-or-later
"""Instances scoped to their network namespace, and `status --check`,
through click's CliRunner with no kernel state touched: the pin and run
roots are tmp dirs, the maps and tc filters are faked."""
import contextlib
import json
import os

import pytest
from click.testing import CliRunner

from wgbpf import abi, cli, dataplane, inspect, instance, maps

HERE = maps.netns_id()


def run(*args):
    return CliRunner().invoke(cli.main, list(args), prog_name="wgbpf")


class FakeMaps:
    """What status reads, over plain values: front wg0 (ifindex 5), alice
    on wg-alice (11), bob on wg-bob (12)."""
    dir = "/fake"

    def __init__(self):
        self.peer_map = {1: abi.Peer(ifindex=11, flags=abi.PEER_UP, name=b"alice", member=b"wg-alice"),
                         2: abi.Peer(ifindex=12, flags=abi.PEER_UP, name=b"bob", member=b"wg-bob")}
        self.tries = FakeTries()
        self.sets = FakeSets()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def peers(self):
        return dict(self.peer_map)

    def tags(self):
        return {}

    def monitor(self):
        return abi.Monitor()  # nobody listening

    def peer_stats(self, pid):
        return abi.PeerStats()

    def config(self):
        return abi.Config(front_ifindex=5, front=b"wg0")

    def fill(self):
        return {"routes4": (0, 10)}

    def counters(self):
        return {r: 0 for r in abi.Reason}


class FakeSets:
    def peers(self):
        return {}

    def rows(self, names):
        return []


class FakeTries:
    def routes(self, version, trie="routes"):
        return []


@pytest.fixture
def world(tmp_path, monkeypatch):
    """One instance wg0 in this namespace; devices and filters as the test
    sets them in world["links"] and world["filters"]."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(maps, "PIN_ROOT", str(tmp_path / "pins"))
    monkeypatch.setattr(instance, "RUN_DIR", str(tmp_path / "run"))
    os.makedirs(maps.pin_dir("wg0"))
    w = {"links": {"wg0": 5, "wg-alice": 11, "wg-bob": 12, "lo": 1},
         "filters": {(5, "egress"), (11, "ingress"), (11, "egress"), (12, "ingress"), (12, "egress")}}
    monkeypatch.setattr(maps.Maps, "open", classmethod(lambda cls, d, readonly=False: FakeMaps()))
    monkeypatch.setattr(dataplane, "iproute", contextlib.nullcontext)
    monkeypatch.setattr(dataplane.tc, "filter_programs", lambda i, hook, nl=None: {"wgbpf-wg0": 7} if (i, hook) in w["filters"] else {})
    monkeypatch.setattr(inspect, "current_links", lambda: dict(w["links"]))
    monkeypatch.setattr(dataplane, "forwarding_off", lambda devices: [])  # not this host's sysctls
    return w


def test_a_namespace_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError):
        maps.netns_id(str(tmp_path / "nope"))


@pytest.mark.parametrize("name", ["", " ", ".", ".."])
def test_empty_netns_is_an_error(name):
    r = run("--netns", name, "status")
    assert r.exit_code == 1 and r.stderr.startswith("wgbpf: error: --netns"), r.output
    assert "name a network namespace" in r.stderr and "Traceback" not in r.output


def test_missing_netns_names_the_option(monkeypatch):
    def enter(name):
        raise dataplane.AttachError(f"network namespace {name!r}: No such file or directory")
    monkeypatch.setattr(dataplane, "enter_netns", enter)
    r = run("--netns", "nope", "dump")
    assert r.exit_code == 1
    assert r.stderr == "wgbpf: error: --netns: network namespace 'nope': No such file or directory\n"


def test_listings_see_only_this_namespace(world, monkeypatch):
    os.makedirs(maps.pin_dir("wg1", 424242))  # another namespace's instances
    os.makedirs(maps.pin_dir("wg0", 424242))
    r = run("status", "--json")
    assert r.exit_code == 0, r.output
    assert [s["front"] for s in json.loads(r.stdout)] == ["wg0"]
    assert cli.pick_front(None) == "wg0"  # not "several instances"
    r = run("dump", "--front", "wg1")
    assert r.exit_code == 1
    assert "no wgbpf instance 'wg1' in this network namespace (attached: wg0)" in r.stderr
    assert "another namespace" in r.stderr and "status --all" in r.stderr


def test_status_all_lists_every_namespace(world):
    os.makedirs(maps.pin_dir("wg0", 424242))  # no name, no process leads to it
    r = run("status", "--all", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert [(s["netns"], s["front"], s["current"]) for s in res] == [(HERE, "wg0", True), (424242, "wg0", False)]
    assert "not found" in res[1]["error"] and maps.pin_dir("wg0", 424242) in res[1]["error"]
    r = run("status", "--all")
    assert f"== netns {HERE}" in r.stdout and "== netns 424242" in r.stdout
    r = run("status", "--all", "--front", "wg0")
    assert r.exit_code == 1 and "--all" in r.stderr


def test_check_healthy(world):
    r = run("status", "--check")
    assert r.exit_code == 0, r.output
    assert r.stdout == "ok: 1 instance, every device hooked\n"
    s = json.loads(run("status", "--json").stdout)[0]
    assert s["front_hooked"] and s["front_problem"] is None
    assert [(m["device"], m["hooked"], m["problem"]) for m in s["members"]] == [
        ("wg-alice", True, None), ("wg-bob", True, None)]


def test_check_reports_each_unhooked_device(world):
    world["links"]["wg-alice"] = 31            # re-created: a new ifindex, nothing on it
    del world["links"]["wg-bob"]               # gone
    world["links"]["eth9"] = 12                # its old ifindex, now another device's
    world["filters"].discard((5, "egress"))    # the front lost our filter
    r = run("status", "--check")
    assert r.exit_code == 2, r.output
    assert r.stdout.splitlines() == [
        "wg0: front wg0 unhooked: no wgbpf-wg0 filter on its egress",
        "wg0: peer alice: member wg-alice unhooked: wg-alice was re-created (ifindex 31, recorded 11)",
        "wg0: peer bob: member wg-bob unhooked: wg-bob does not exist",
    ]
    s = json.loads(run("status", "--json").stdout)[0]
    assert not s["front_hooked"] and [m["hooked"] for m in s["members"]] == [False, False]
    human = run("status").stdout
    assert "UNHOOKED (wg-bob does not exist)" in human and "eth9" not in human
    dump = json.loads(run("dump", "--json").stdout)
    assert [p["member"] for p in dump["peers"]] == ["wg-alice", "wg-bob"]  # never eth9
    r = run("status", "--check", "--json")
    assert r.exit_code == 2 and len(json.loads(r.stdout)["problems"]) == 3


def test_check_member_egress_missing(world):
    world["filters"].discard((12, "egress"))
    r = run("status", "--check")
    assert r.exit_code == 2
    assert r.stdout == "wg0: peer bob: member wg-bob unhooked: no wgbpf-wg0 filter on its egress\n"


def test_check_failed_daemon(world):
    os.makedirs(instance.run_dir())
    with open(instance.status_path("wg0"), "w") as f:
        json.dump({"state": "failed", "pid": 2 ** 22 + 1, "error": "KeyError: 'alice'"}, f)
    r = run("status", "--check")
    assert r.exit_code == 2
    assert r.stdout == "wg0: daemon failed: KeyError: 'alice'\n"


def test_check_daemon_killed(world):
    os.makedirs(instance.run_dir())
    with open(instance.status_path("wg0"), "w") as f:
        json.dump({"state": "running", "pid": 2 ** 22 + 1}, f)  # no such pid
    r = run("status", "--check")
    assert r.exit_code == 2 and "daemon not running" in r.stdout
    with open(instance.status_path("wg0"), "w") as f:
        json.dump({"state": "stopped", "pid": 2 ** 22 + 1}, f)  # SIGTERM: stopped on purpose
    assert run("status", "--check").exit_code == 0


def test_status_all_lists_an_older_wgbpfs_pins(world):
    old = os.path.join(maps.PIN_ROOT, "wg5")
    os.makedirs(old)
    open(os.path.join(old, "config"), "w").close()
    r = run("status", "--all", "--check")
    assert r.exit_code == 2
    assert r.stdout.startswith("wg5: pinned by an older wgbpf") and f"rm -r {old}" in r.stdout
    assert "== an older wgbpf's pins" in run("status", "--all").stdout
    assert run("status", "--check").exit_code == 0  # this namespace's own are healthy


def test_run_namespaces_are_those_with_a_status(world):
    os.makedirs(instance.run_dir(77))
    assert instance.run_namespaces() == set()
    open(instance.status_path("wg0", 77), "w").close()
    assert instance.run_namespaces() == {77}

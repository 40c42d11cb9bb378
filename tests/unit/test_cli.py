# SPDX-License-Identifier: GPL-2.0-or-later
"""wgbpf/cli.py through click's CliRunner, with no kernel state touched.

maps.PIN_ROOT points at an empty tmp dir, os.geteuid is faked (so the tests
behave the same as root or not), and dataplane.attach/detach, Maps.open and
iproute are replaced: nothing here loads BPF, opens a pinned map or changes
a device.
"""
import contextlib
import ipaddress
import json
import os

import click
import pytest
from click.testing import CliRunner

from wgbpf import abi, cli, dataplane, inspect, maps
from wgbpf import setmaps
from wgbpf.routemaps import make_route

ERR = "wgbpf: error:"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real instance, no real data plane: a test that needs one fakes it."""
    root = tmp_path / "bpf" / "wgbpf"
    monkeypatch.setattr(maps, "PIN_ROOT", str(root))

    def refuse(*a, **kw):
        raise AssertionError("a unit test reached the real data plane")
    monkeypatch.setattr(dataplane, "attach", refuse)
    monkeypatch.setattr(dataplane, "iproute", refuse)            # the daemon's
    monkeypatch.setattr(dataplane.lifecycle, "iproute", refuse)  # attach's and detach's
    monkeypatch.setattr(dataplane, "enter_netns", refuse)
    monkeypatch.setattr(maps.Maps, "open", classmethod(refuse))
    monkeypatch.setattr(maps.Maps, "create", classmethod(refuse))
    return root / str(maps.netns_id())  # this namespace's instances


@pytest.fixture(params=[0, 1000], ids=["root", "user"])
def euid(request, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: request.param)
    return request.param


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)


@pytest.fixture
def as_user(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)


def run(*args):
    return CliRunner().invoke(cli.main, list(args), prog_name="wgbpf")


def failed(r, *fragments, code=1):
    """The command failed with a wgbpf error naming every fragment."""
    assert r.exit_code == code, f"exit {r.exit_code}, output:\n{r.output}\n{r.exception!r}"
    if code == 1:
        assert r.stderr.startswith(ERR), f"stderr is not a wgbpf error:\n{r.stderr}\n{r.exception!r}"
        assert "Traceback" not in r.output
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    for f in fragments:
        assert f in r.stderr, f"{f!r} not in:\n{r.stderr}"
    return r.stderr


# -- help ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    ([], ["attach", "detach", "route", "dump", "lookup", "status", "--netns", "front", "peer"]),
    (["attach"], ["[FRONT]", "--peer", "NAME=DEV", "--config", "TOML", "--members-only", "--no-route",
                  "pass", "drop", "--json", "wgbpf attach wg0"]),
    (["detach"], ["[FRONT]", "Remove", "filters", "pins", "--json"]),
    (["route"], ["add", "del", "prefix", "peer"]),
    (["route", "add"], ["PREFIX", "PEER[,PEER...] [FRONT]", "ECMP"]),
    (["route", "del"], ["PREFIX [FRONT]", "Remove"]),
    (["dump"], ["[FRONT]", "prefix", "peers", "counters", "--json"]),
    (["lookup"], ["[ADDRESS] [FRONT]", "longest match", "--from PEER", "--json"]),
    (["status"], ["[FRONT]", "attached", "counters", "--json"]),
    (["top"], ["[FRONT]", "--once"]),
    (["monitor"], ["[FRONT]", "--count"]),
    (["daemon"], ["[FRONT]", "--peer", "NAME=DEV", "--table"]),
])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(args, words, flag, euid):
    r = run(*args, flag)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("Usage: wgbpf")
    for w in words:
        assert w in r.output, f"{w!r} not in `wgbpf {' '.join(args)} {flag}`:\n{r.output}"


def test_unknown_command():
    r = run("atach")
    assert r.exit_code == 2 and "atach" in r.output


# -- attach: input errors come first ------------------------------------------------

@pytest.mark.parametrize("args, fragments", [
    (["wg0", "--peer", "alice"], ["--peer 'alice'", "NAME=MEMBER_DEV"]),
    (["wg0", "--peer", "alice=wg-alice,10.0.0.0/24"], ["'10.0.0.0/24'", "not a prefix"]),
    (["wg0", "--peer", "alice=wg-alice,ff02::1"], ["'ff02::1'", "unicast"]),
    (["wg0", "--peer", "alice=wg/alice"], ["'wg/alice'", "interface name"]),
    (["wg0", "--peer", "-alice=wg-alice"], ["'-alice'", "peer name"]),
    (["wg0", "-p", "alice=wg-a", "-p", "alice=wg-b"], ["'alice'", "twice"]),
    (["wg0", "-p", "alice=wg-a,fe80::1", "-p", "bob=wg-b,fe80::1"], ["fe80::1", "'alice'", "'bob'"]),
    (["wg0", "-p", "alice=wg0"], ["'wg0'", "front"]),
    (["wg0"], ["no peers"]),
    (["--peer", "alice=wg-a"], ["no front"]),
    (["wg/0", "--peer", "alice=wg-a"], ["'wg/0'", "interface name"]),
])
def test_attach_bad_args(args, fragments, euid):
    failed(run("attach", *args), *fragments)


@pytest.mark.parametrize("toml, fragments", [
    ('front = "wg0"\n[[peer]]\nname = "alice"\nmember = "wg-alice"\ntags = ["10.0.0.0/24"]\n',
     ["peer[0].tags[0]", "'10.0.0.0/24'"]),
    ('front = "wg0"\nfrnt = 1\n', ["unknown setting", "'frnt'"]),
    ('front = "wg0"\n', ["no peers"]),
    ('front = \n', ["not valid TOML"]),
    ('[[peer]]\nname = "alice"\nmember = "wg-alice"\n', ["no front"]),
    ('front = "wg0"\nno_route = "reject"\n[[peer]]\nname = "a"\nmember = "wg-a"\n', ["no_route", "'reject'"]),
])
def test_attach_bad_config_file(tmp_path, toml, fragments, euid):
    path = tmp_path / "wg0.toml"
    path.write_text(toml)
    err = failed(run("attach", "--config", str(path)), *fragments)
    if "no front" not in fragments and "no peers" not in fragments:
        assert str(path) in err


def test_attach_missing_config_file(tmp_path, euid):
    path = str(tmp_path / "missing.toml")
    failed(run("attach", "-c", path), path, "No such file")


def test_attach_config_is_a_directory(tmp_path, euid):
    r = run("attach", "-c", str(tmp_path))
    assert r.exit_code == 2 and str(tmp_path) in r.output and "directory" in r.output


def test_attach_bad_no_route(euid):
    r = run("attach", "wg0", "-p", "alice=wg-a", "--no-route", "reject")
    assert r.exit_code == 2 and "'reject'" in r.output and "--no-route" in r.output


def test_attach_good_args_need_root(as_user):
    failed(run("attach", "wg0", "-p", "alice=wg-a"), "needs root")


def fake_attach(monkeypatch, seen):
    def attach(cfg, log=lambda m: None, debug=False, force=False):
        seen.append(cfg)
        log("compiling")
        return {"front": cfg.front, "pin_dir": maps.pin_dir(cfg.front), "peers": len(cfg.peers),
                "members_only": cfg.members_only, "created": True, "programs_reloaded": True,
                "changes": ["peer alice added"], "warnings": [], "compile_seconds": 0.5, "seconds": 1.25}
    monkeypatch.setattr(dataplane, "attach", attach)


def test_attach_passes_config(monkeypatch, tmp_path, as_root):
    seen = []
    fake_attach(monkeypatch, seen)
    path = tmp_path / "wg0.toml"
    path.write_text('front = "wg0"\nno_route = "pass"\n[[peer]]\nname = "alice"\nmember = "wg-alice"\n'
                    'tags = ["fe80::1"]\n')
    r = run("attach", "wg1", "-c", str(path), "-p", "bob=wg-bob,10.255.0.2", "--no-route", "drop",
            "--members-only")
    assert r.exit_code == 0, (r.output, r.exception)
    cfg, = seen
    assert cfg.front == "wg1" and cfg.members_only is True and cfg.no_route is abi.Policy.DROP
    assert [(p.name, p.member, p.tags) for p in cfg.peers] == [
        ("alice", "wg-alice", [ipaddress.ip_address("fe80::1")]),
        ("bob", "wg-bob", [ipaddress.ip_address("10.255.0.2")])]
    assert "wg1: created, 2 peers (members only)" in r.stdout
    assert "peer alice added" in r.stdout
    assert "compiling" in r.stderr


def test_attach_json(monkeypatch, as_root):
    seen = []
    fake_attach(monkeypatch, seen)
    r = run("attach", "wg0", "-p", "alice=wg-a", "--json")
    assert r.exit_code == 0, (r.output, r.exception)
    res = json.loads(r.stdout)
    assert res["front"] == "wg0" and res["peers"] == 1
    assert "compiling" not in r.output  # --json: no progress log


def test_attach_error_from_dataplane(monkeypatch, as_root):
    def attach(cfg, log=None, debug=False, force=False):
        raise dataplane.AttachError("member device 'wg-a' does not exist")
    monkeypatch.setattr(dataplane, "attach", attach)
    failed(run("attach", "wg0", "-p", "alice=wg-a"), "'wg-a' does not exist")


# -- route / lookup: the bad value is reported before root or instance checks ---------

@pytest.mark.parametrize("args, bad", [
    (["route", "add", "10.0.0.300/8", "alice"], "'10.0.0.300/8'"),
    (["route", "add", "10.0.0.0/33", "alice"], "'10.0.0.0/33'"),
    (["route", "add", "alice", "10.0.0.0/8"], "'alice'"),
    (["route", "add", "2001:db8::/129", "alice"], "'2001:db8::/129'"),
    (["route", "del", "10.0.0.0/", ], "'10.0.0.0/'"),
    (["route", "del", "nope"], "'nope'"),
    (["route", "add", "--front", "wg0", "x/8", "alice"], "'x/8'"),
])
def test_route_bad_prefix(args, bad, euid):
    failed(run(*args), bad, "prefix")


@pytest.mark.parametrize("addr", ["10.0.0.256", "10.0.0.0/8", "alice", "", "fe80::1::2"])
def test_lookup_bad_address(addr, euid):
    failed(run("lookup", addr), repr(addr), "not an IPv4 or IPv6 address")


def test_route_missing_args():
    r = run("route", "add", "10.0.0.0/8")
    assert r.exit_code == 2 and "PEER" in r.output


# -- root and instance checks ---------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["route", "add", "10.0.0.0/8", "alice"],
    ["route", "del", "10.0.0.0/8"],
    ["lookup", "10.1.2.3"],
    ["dump"],
    ["status"],
    [],
    ["detach", "wg0"],
])
def test_needs_root(args, as_user):
    failed(run(*args), "needs root")


@pytest.mark.parametrize("args", [
    ["route", "add", "10.0.0.0/8", "alice"],
    ["route", "del", "10.0.0.0/8"],
    ["lookup", "10.1.2.3"],
    ["dump"],
    ["detach"],
])
def test_no_instance(args, as_root):
    failed(run(*args), "no wgbpf instance is attached", "wgbpf attach")


@pytest.mark.parametrize("args", [
    ["route", "add", "--front", "wg7", "10.0.0.0/8", "alice"],
    ["lookup", "-f", "wg7", "10.1.2.3"],
    ["dump", "--front", "wg7"],
    ["detach", "wg7"],
    ["status", "--front", "wg7"],
])
def test_named_instance_missing(args, as_root, isolated):
    (isolated / "wg0").mkdir(parents=True)
    failed(run(*args), "no wgbpf instance 'wg7'", "attached: wg0")


def test_several_instances(as_root, isolated):
    (isolated / "wg0").mkdir(parents=True)
    (isolated / "wg1").mkdir()
    failed(run("lookup", "10.1.2.3"), "several instances", "wg0, wg1", "--front")


def test_status_without_instances(as_root):
    for args in (["status"], []):
        r = run(*args)
        assert r.exit_code == 0, r.output
        assert "no wgbpf instance attached" in r.output
    r = run("status", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == []


def test_map_error_is_a_clean_error(monkeypatch, as_root, isolated):
    (isolated / "wg0").mkdir(parents=True)

    def open_(cls, directory, readonly=False):
        raise maps.MapError(f"{directory}/routes4: No such file or directory")
    monkeypatch.setattr(maps.Maps, "open", classmethod(open_))
    failed(run("dump"), str(isolated / "wg0" / "routes4"), "No such file")


def test_bad_netns(monkeypatch, tmp_path):
    def enter(name):
        raise dataplane.AttachError(f"network namespace {name!r}: No such file or directory")
    monkeypatch.setattr(dataplane, "enter_netns", enter)
    failed(run("--netns", "nope", "status"), "network namespace 'nope'")


# -- order: input that can be judged without maps should be judged first ---------------

@pytest.mark.parametrize("peers", [",", "a,b,c,d,e,f,g,h,i", "a,a"])
def test_route_add_bad_peer_list_first(peers, as_user):
    failed(run("route", "add", "10.0.0.0/8", peers), repr(peers))


@pytest.mark.parametrize("front", ["..", "."])
def test_detach_dot_dot_is_refused(front, monkeypatch, tmp_path, isolated, as_root):
    isolated.mkdir(parents=True)
    (isolated / "wg0").mkdir()
    victim = isolated.parent / "someone-elses-pin"
    victim.write_text("")
    monkeypatch.setattr(dataplane.lifecycle, "iproute", contextlib.nullcontext)

    def open_(cls, directory, readonly=False):
        raise maps.MapError("not a bpffs pin")
    monkeypatch.setattr(maps.Maps, "open", classmethod(open_))
    r = run("detach", front)
    assert victim.exists() and (isolated / "wg0").is_dir(), "detach removed files outside its instance"
    failed(r, repr(front))


def test_detach_removes_the_instance(monkeypatch, isolated, as_root):
    d = isolated / "wg0"
    d.mkdir(parents=True)
    (d / "routes4").write_text("")
    monkeypatch.setattr(dataplane.lifecycle, "iproute", contextlib.nullcontext)
    monkeypatch.setattr(dataplane.lifecycle, "named_filters", lambda ipr, front=None: {})  # no departed peer hooked

    def open_(cls, directory, readonly=False):
        raise maps.MapError("not a bpffs pin")
    monkeypatch.setattr(maps.Maps, "open", classmethod(open_))
    r = run("detach")
    assert r.exit_code == 0, (r.output, r.exception)
    assert "wg0: detached from 0 devices, pins removed" in r.stdout
    assert not d.exists() and not isolated.exists()  # the namespace's directory went with it
    assert isolated.parent.is_dir()


# -- route/lookup/dump against a fake instance ----------------------------------------

class FakeMaps:
    """The Maps methods cli.py calls, over plain dicts (its tries, guard
    and DIR-24-8 arrays: FakeTries, FakeGuard, FakeDir24)."""

    def __init__(self, peers, routes=(), tags=(), no_route=abi.Policy.PASS):
        self.peer_map = {i: abi.Peer(ifindex=900000 + i, flags=abi.PEER_UP if up else 0, name=n.encode(),
                                     member=f"wg-{n}".encode())
                         for i, (n, up) in peers.items()}
        self.route_map = {}
        self.sets = FakeSets()
        for prefix, ids, origin in routes:
            net = ipaddress.ip_network(prefix)
            self.route_map[net] = make_route(net, self.sets.operator_id(tuple(ids)), origin)
        self.tag_map = {ipaddress.ip_address(a): i for a, i in tags}
        self.accept_map = {}
        self.cfg = abi.Config(front_ifindex=5, no_route=no_route)
        self.directory = "/fake"
        self.closed = False
        self.tries, self.guard, self.dir24 = FakeTries(self), FakeGuard(), FakeDir24()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True

    def peers(self):
        return dict(self.peer_map)

    def tags(self):
        return dict(self.tag_map)

    def peer_stats(self, pid):
        return abi.PeerStats(tx_packets=pid, tx_bytes=100 * pid)

    def config(self):
        return self.cfg


class FakeSets:
    """m.sets over a dict: {id: (members, weights)}, interned by content."""

    def __init__(self):
        self.by_id = {}

    def operator_id(self, members, weights=None):
        for sid, have in self.by_id.items():
            if have == (tuple(members), weights):
                return sid
        sid = abi.OPERATOR_SETS + len(self.by_id)
        self.by_id[sid] = (tuple(members), weights)
        return sid

    def peers(self):
        return dict(self.by_id)

    def members(self, sid):
        return self.by_id[sid][0] if sid else ()

    def read(self, sid):
        m, w = self.by_id[sid]
        return abi.SetKind.INTERNED, 0, m, w, setmaps.fill(m, w)

    def weighed(self, sid):
        m, w = self.by_id[sid] if sid else ((), None)
        return m, w or (1,) * len(m)

    def rows(self, names):
        return [{"set": sid, "kind": "interned", "owner": "operator", "peers": [names[p] for p in m],
                 "weights": list(w or [1] * len(m)), "buckets": [setmaps.fill(m, w).count(i) for i in range(len(m))]}
                for sid, (m, w) in self.by_id.items()]


class FakeGuard:
    def locals(self):
        return {ipaddress.ip_address("192.0.2.1"): 5}


class FakeDir24:
    def compile(self):
        self.compiled = getattr(self, "compiled", 0) + 1  # LPM mode: nothing to compile


class FakeTries:
    """FakeMaps' route_map and accept_map as m.tries reads and writes them."""

    def __init__(self, m):
        self.route_map, self.accept_map, self.sets = m.route_map, m.accept_map, m.sets

    def routes(self, version, trie="routes"):
        return [(n, r) for n, r in (self.accept_map if trie == "accept" else self.route_map).items()
                if n.version == version]

    def lookup(self, addr, trie="routes"):
        hits = [n for n in self.route_map if addr in n]
        if not hits:
            return None
        net = max(hits, key=lambda n: n.prefixlen)
        return net, self.route_map[net]

    def get_route(self, net, trie="routes"):
        return self.route_map.get(net)

    def set_route(self, net, ids, origin, trie="routes", weights=None):
        if not 1 <= len(ids) <= abi.MAX_ECMP:
            raise ValueError("bounds")
        self.route_map[net] = make_route(net, self.sets.operator_id(tuple(ids), weights), origin)

    def del_route(self, net, trie="routes"):
        return self.route_map.pop(net, None) is not None


@pytest.fixture
def instance(monkeypatch, isolated, as_root):
    (isolated / "wg0").mkdir(parents=True)
    fake = FakeMaps({1: ("alice", True), 2: ("bob", True), 3: ("carol", False)},
                    routes=[("10.0.0.0/8", [1], abi.Origin.STATIC),
                            ("10.1.0.0/16", [1, 2], abi.Origin.KERNEL),
                            ("10.3.0.0/16", [3], abi.Origin.STATIC),
                            ("10.4.0.0/16", [2, 3], abi.Origin.STATIC),
                            ("10.255.0.1/32", [1], abi.Origin.TAG),
                            ("2001:db8::/32", [2], abi.Origin.STATIC)],
                    tags=[("10.255.0.1", 1), ("fe80::1", 1), ("fe80::2", 2)],
                    no_route=abi.Policy.DROP)
    opened = []

    def open_(cls, directory, readonly=False):
        opened.append((directory, readonly))
        return fake
    monkeypatch.setattr(maps.Maps, "open", classmethod(open_))
    fake.opened = opened
    return fake


def test_route_add(instance):
    r = run("route", "add", "10.9.0.0/16", "bob,alice")
    assert r.exit_code == 0, (r.output, r.exception)
    assert r.stdout.strip() == "10.9.0.0/16 -> bob,alice"
    rt = instance.route_map[ipaddress.ip_network("10.9.0.0/16")]
    assert instance.sets.members(rt.set) == (2, 1) and rt.origin == abi.Origin.STATIC and rt.prefixlen == 16
    assert instance.opened == [(maps.pin_dir("wg0"), False)] and instance.closed


@pytest.mark.parametrize("peers, fragments", [
    ("zed", ["unknown peer 'zed'", "alice, bob, carol"]),
    ("alice,zed", ["unknown peer 'zed'"]),
    (",", ["','", "at least one peer"]),
    ("a,b,c,d,e,f,g,h,i", ["at most 8", "not 9"]),
    ("alice,alice", ["'alice,alice'", "twice"]),
])
def test_route_add_bad_peers(instance, peers, fragments):
    failed(run("route", "add", "10.9.0.0/16", peers), *fragments)
    assert ipaddress.ip_network("10.9.0.0/16") not in instance.route_map


def test_route_del(instance):
    failed(run("route", "del", "10.1.2.3/16"), "host bits", "10.1.0.0/16")  # refused, as by ip route
    assert ipaddress.ip_network("10.1.0.0/16") in instance.route_map
    r = run("route", "del", "10.1.0.0/16")
    assert r.exit_code == 0 and r.stdout.strip() == "10.1.0.0/16 removed"
    assert ipaddress.ip_network("10.1.0.0/16") not in instance.route_map
    failed(run("route", "del", "10.1.0.0/16"), "no entry for 10.1.0.0/16")
    failed(run("route", "del", "10.1.0.0/24"), "no entry for 10.1.0.0/24")


@pytest.mark.parametrize("addr, want", [
    ("10.1.2.3", {"rule": "kernel route", "prefix": "10.1.0.0/16", "peers": ["alice", "bob"],
                  "verdict": "steer by flow hash to one of alice, bob"}),
    ("10.2.0.1", {"rule": "static route", "prefix": "10.0.0.0/8", "peers": ["alice"], "verdict": "steer to alice"}),
    ("10.255.0.1", {"rule": "tag route", "prefix": "10.255.0.1/32", "verdict": "steer to alice"}),
    ("10.3.0.1", {"prefix": "10.3.0.0/16", "peers": ["carol"], "down": ["carol"],
                  "verdict": "every peer down: no_route policy: drop"}),
    ("10.4.0.1", {"peers": ["bob", "carol"], "down": ["carol"], "verdict": "steer to bob (the others down)"}),
    ("192.0.2.1", {"rule": "no route", "prefix": None, "peers": [], "verdict": "no_route policy: drop"}),
    ("2001:db8::1", {"rule": "static route", "prefix": "2001:db8::/32", "verdict": "steer to bob"}),
    ("224.0.0.5", {"rule": "link-local multicast", "peers": ["alice", "bob"], "verdict": "flood to 2 members"}),
    ("ff02::1", {"rule": "link-local multicast", "peers": ["alice", "bob"], "verdict": "flood to 2 members"}),
])
def test_lookup(instance, addr, want):
    r = run("lookup", addr, "--json")
    assert r.exit_code == 0, (r.output, r.exception)
    res = json.loads(r.stdout)
    assert res["address"] == str(ipaddress.ip_address(addr))
    for k, v in want.items():
        assert res[k] == v, (k, res)
    assert instance.opened[-1][1] is True  # read-only
    r = run("lookup", addr)
    assert r.exit_code == 0 and want["verdict"] in r.stdout


@pytest.mark.parametrize("src, peer, verdict, step", [
    ("10.1.2.3", "alice", "passed", "leads to alice"),
    ("10.3.0.1", "alice", "spoofed", "leads to carol, not alice"),
    ("172.16.0.1", "alice", "spoofed", "no best route, so not alice's"),
    ("fe80::1", "alice", "passed", "link-local"),
    ("fe80::1", "bob", "spoofed", "link-local"),
    # martians, as the data plane drops them: before any lookup, each its reason
    ("::ffff:10.1.2.3", "alice", "martian_mapped", "IPv4-mapped"),
    ("::10.1.2.3", "alice", "martian_mapped", "IPv4-compatible"),
    ("127.0.0.1", "alice", "martian_loopback", "loopback"),
    ("::1", "alice", "martian_loopback", "loopback"),
    ("0.1.2.3", "alice", "martian_unspec", "0.0.0.0/8"),
    ("::", "alice", "martian_unspec", "unspecified"),
    ("255.255.255.255", "alice", "martian_reserved", "broadcast"),
    ("224.0.0.5", "alice", "martian_multicast", "multicast"),
    ("ff02::1", "alice", "martian_multicast", "multicast"),
    ("192.0.2.1", "alice", "martian_local", "own addresses"),
])
def test_lookup_source(instance, src, peer, verdict, step):
    r = run("lookup", "--source", src, "--peer", peer, "--json")
    assert r.exit_code == 0, (r.output, r.exception)
    res = json.loads(r.stdout)
    assert res["verdict"] == verdict and step in res["step"], res


def test_lookup_source_with_a_zone_is_refused(instance):
    failed(run("lookup", "--source", "fe80::1%wg-alice", "--peer", "alice"),
           "--source", "'fe80::1%wg-alice'", "scoped addresses")


def test_lookup_of_a_v4_in_v6_destination_says_it_as_route_add_does(instance):
    # issue 32: it said "no route"; `route add` refuses the same words
    failed(run("lookup", "::ffff:10.1.0.1"), "ADDRESS", "'::ffff:10.1.0.1'", "IPv4-mapped", "10.1.0.1")
    failed(run("route", "add", "::ffff:10.1.0.1/128", "alice"), "IPv4-mapped", "10.1.0.1")


def test_lookup_human(instance):
    r = run("lookup", "10.3.0.9")
    sid = instance.route_map[ipaddress.ip_network("10.3.0.0/16")].set
    assert r.stdout.splitlines() == ["10.3.0.9: static route 10.3.0.0/16", f"  set {sid}: carol",
                                     "  peers: carol (down: carol)", "  every peer down: no_route policy: drop"]


def test_lookup_shows_the_set_and_its_weights(instance):
    net = ipaddress.ip_network("10.7.0.0/16")
    sid = instance.sets.operator_id((1, 2), (3, 1))
    instance.route_map[net] = make_route(net, sid, abi.Origin.KERNEL)
    lines = run("lookup", "10.7.1.2").stdout.splitlines()
    assert lines[1] == f"  set {sid}: alice 3, bob 1"
    assert lines[-1] == "  steer by flow hash to one of alice, bob, by weight (3:1)"
    res = json.loads(run("lookup", "10.7.1.2", "--json").stdout)
    assert (res["set"], res["weights"], res["peers"]) == (sid, [3, 1], ["alice", "bob"])
    res = json.loads(run("dump", "--json").stdout)
    row = next(x for x in res["routes"] if x["prefix"] == "10.7.0.0/16")
    assert (row["set"], row["peers"], row["weights"]) == (sid, ["alice", "bob"], [3, 1])
    s = next(x for x in res["sets"] if x["set"] == sid)
    assert (s["kind"], s["owner"], s["peers"], s["weights"], s["buckets"]) == \
        ("interned", "operator", ["alice", "bob"], [3, 1], [48, 16])
    # bob's share of 256:1 is under half a bucket: said, not promised flows
    net = ipaddress.ip_network("10.8.0.0/16")
    instance.route_map[net] = make_route(net, instance.sets.operator_id((1, 2), (256, 1)), abi.Origin.KERNEL)
    assert run("lookup", "10.8.0.1").stdout.splitlines()[-1] == \
        "  steer by flow hash to one of alice; bob: weight under half a bucket, no flow"
    line = next(ln for ln in run("dump").stdout.splitlines() if ln.startswith("10.7.0.0/16"))
    assert line.split() == ["10.7.0.0/16", str(sid), "alice", "3,bob", "1", "kernel"]


def test_dump(instance, monkeypatch):
    # alice's member is the device recorded; bob's was re-created; carol's is gone
    monkeypatch.setattr(inspect, "current_links", lambda: {"wg-alice": 900001, "wg-bob": 42, "lo": 900003})
    r = run("dump", "--json")
    assert r.exit_code == 0, (r.output, r.exception)
    res = json.loads(r.stdout)
    assert res["front"] == "wg0"
    sid = {str(n): r.set for n, r in instance.route_map.items()}
    assert res["routes"][0] == {"prefix": "10.0.0.0/8", "set": sid["10.0.0.0/8"], "peers": ["alice"],
                                "weights": [1], "origin": "static"}
    assert {"prefix": "10.1.0.0/16", "set": sid["10.1.0.0/16"], "peers": ["alice", "bob"], "weights": [1, 1],
            "origin": "kernel"} in res["routes"]
    assert res["routes"][-1]["prefix"] == "2001:db8::/32"  # IPv4 first, then IPv6
    alice = res["peers"][0]
    assert alice["name"] == "alice" and alice["up"] is True and alice["tags"] == ["10.255.0.1", "fe80::1"]
    assert alice["member"] == "wg-alice" and alice["member_problem"] is None and alice["tx_packets"] == 1
    assert res["peers"][1]["member_problem"] == "wg-bob was re-created (ifindex 42, recorded 900002)"
    assert res["peers"][2]["member_problem"] == "wg-carol does not exist"
    assert [p["up"] for p in res["peers"]] == [True, True, False]
    r = run("dump")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["PREFIX", "SET", "PEERS", "ORIGIN"]
    assert lines[1].split() == ["10.0.0.0/8", str(sid["10.0.0.0/8"]), "alice", "static"]
    assert any(ln.split()[:4] == ["alice", "wg-alice", "up", "10.255.0.1,fe80::1"] for ln in lines)
    assert any(ln.split()[:4] == ["bob", "wg-bob", "(re-created)", "up"] for ln in lines)
    # never the name of the device that holds carol's old ifindex now
    assert any(ln.split()[:4] == ["carol", "wg-carol", "(gone)", "down"] for ln in lines)
    assert "accept" not in res and "ACCEPT" not in r.stdout  # no accept table attached


def test_dump_shows_the_accept_table_when_there_is_one(instance):
    instance.cfg.accept_table = 100
    net = ipaddress.ip_network("10.9.0.0/16")
    sid = instance.sets.operator_id((2, 3))
    instance.accept_map[net] = make_route(net, sid, abi.Origin.KERNEL)
    res = json.loads(run("dump", "--json").stdout)
    assert res["accept"] == [{"prefix": "10.9.0.0/16", "set": sid, "peers": ["bob", "carol"], "weights": [1, 1],
                              "origin": "kernel"}]
    lines = run("dump").stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.split()[:2] == ["ACCEPT", "PREFIX"])
    assert lines[at + 1].split() == ["10.9.0.0/16", str(sid), "bob,carol", "kernel"]


def test_resolve_peers_direct():
    m = FakeMaps({1: ("alice", True), 7: ("bob", False)})
    assert inspect.resolve_peers(m, cli.peer_names("bob, alice")) == [7, 1]
    for bad in ("alice,", ",alice", "alice,,bob"):
        with pytest.raises(cli.UsageError, match="an empty peer name"):
            cli.peer_names(bad)


# -- table() ---------------------------------------------------------------------

def test_table(capsys):
    cli.table([("10.0.0.0/8", "alice", "static"), ("2001:db8::/32", "bob,carol", 3)], ["PREFIX", "PEERS", "ORIGIN"])
    assert capsys.readouterr().out.splitlines() == [
        "PREFIX         PEERS      ORIGIN",
        "10.0.0.0/8     alice      static",
        "2001:db8::/32  bob,carol  3",
    ]


def test_table_empty(capsys):
    cli.table([], ["PEER", "MEMBER", "STATE"])
    assert capsys.readouterr().out == "PEER  MEMBER  STATE\n"


def test_table_header_wider_than_cells(capsys):
    cli.table([("a", "")], ["NAME", "X"])
    assert capsys.readouterr().out.splitlines() == ["NAME  X", "a"]


@pytest.mark.parametrize("args", [["detach", ""], ["status", "--front", ""], ["dump", "--front", ""],
                                  ["lookup", "10.0.0.1", "--front", ""],
                                  ["route", "add", "10.0.0.0/8", "alice", "--front", ""]])
def test_empty_front_is_refused_not_the_only_instance(args, as_root):
    """An unset shell variable must not act on whatever instance is there."""
    failed(run(*args), "'' is not an interface name")


# -- one shape: FRONT last and positional; the older spellings still work ------------

@pytest.mark.parametrize("new, old", [
    (["route", "add", "10.9.0.0/16", "bob", "wg0"], ["route", "add", "--front", "wg0", "10.9.0.0/16", "bob"]),
    (["route", "del", "10.1.0.0/16", "wg0"], ["route", "del", "-f", "wg0", "10.1.0.0/16"]),
    (["dump", "wg0", "--json"], ["dump", "--front", "wg0", "--json"]),
    (["lookup", "10.1.2.3", "wg0", "--json"], ["lookup", "-f", "wg0", "10.1.2.3", "--json"]),
    (["lookup", "10.1.2.3", "--from", "alice", "--json"], ["lookup", "--source", "10.1.2.3", "--peer", "alice", "--json"]),
    (["lookup", "10.1.2.3", "wg0", "--from", "bob", "--json"],
     ["lookup", "--front", "wg0", "--source", "10.1.2.3", "--peer", "bob", "--json"]),
])
def test_new_and_old_spellings_agree(instance, new, old):
    got = []
    saved = dict(instance.route_map)
    for args in (new, old):
        r = run(*args)
        assert r.exit_code == 0, (args, r.output, r.exception)
        got.append((r.stdout, {net: (instance.sets.members(x.set), x.origin) for net, x in instance.route_map.items()}))
        instance.route_map.clear()
        instance.route_map.update(saved)  # each spelling starts from the same maps
    assert got[0] == got[1]
    assert all(d == maps.pin_dir("wg0") for d, _ in instance.opened)


def test_lookup_from_peer(instance):
    r = run("lookup", "10.3.0.1", "--from", "alice")
    assert r.exit_code == 0, (r.output, r.exception)
    assert r.stdout.startswith("from 10.3.0.1 via alice: spoofed (source check strict")


@pytest.mark.parametrize("args, fragments", [
    (["route", "add", "10.9.0.0/16", "bob", "wg0", "--front", "wg1"], ["'wg0'", "'wg1'", "one instance"]),
    (["lookup", "10.1.2.3", "--source", "10.1.2.4", "--peer", "alice"], ["address once"]),
    (["lookup", "10.1.2.3", "--from", "alice", "--peer", "bob"], ["peer once"]),
    (["lookup", "--source", "10.1.2.3"], ["--from PEER"]),
    (["lookup"], ["give an ADDRESS"]),
    (["lookup", "10.1.2.3", "--from", "zed"], ["unknown peer 'zed'", "alice, bob, carol"]),
    (["status", "wg0", "--all"], ["--all", "FRONT"]),
])
def test_shape_errors(instance, args, fragments):
    failed(run(*args), *fragments)


@pytest.mark.parametrize("option, enum, skip", [
    ("--no-route", abi.Policy, ()), ("--lookup", abi.Lookup, ()), ("--source", abi.Source, ("default",)),
])
@pytest.mark.parametrize("command", ["attach", "daemon"])
def test_choices_are_the_abi_enums(command, option, enum, skip):
    """The choice lists are the enum names (one definition), refused otherwise."""
    cmd = cli.main.get_command(click.Context(cli.main), command)
    [param] = [p for p in cmd.params if option in p.opts]
    assert list(param.type.choices) == [m.name.lower() for m in enum if m.name.lower() not in skip]
    r = run(command, "wg0", option, "nonsense")
    assert r.exit_code == 2 and "nonsense" in r.output

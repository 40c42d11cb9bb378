# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: `wgbpf daemon --backend allowedips` on one multi-peer device.

The lab (lab/lab.sh) is reshaped: its front device in the hub becomes an
ordinary WireGuard device with every spoke as a peer (the member devices
stay unused), and each spoke talks to it instead of to its member. No BPF:
the hub's routes name peers by tag (`via 10.255.0.2 dev FRONT onlink`), the
daemon turns them into AllowedIPs, and WireGuard itself then carries (or
refuses) the traffic. Runs on wireguard-go here and on kernel WireGuard in
the vm tier (`make vm-test`), on a kernel with single allowed-IP removal
(6.16+) and one without.

WGBPF_EXPECT_REMOVE_SINGLE=1|0, when set (the vm tier sets it per kernel),
is what the daemon's probe for WGALLOWEDIP_F_REMOVE_ME must find; without
it a removal goes through a throwaway peer (never a list rewrite).
"""
import base64
import json
import os
import time

import pytest

from wgbtest import RUN_ID
from labutil import TIME_SCALE, WGBPF, DaemonProc, lab_session, run, wg_pubkey

pytestmark = [pytest.mark.root, pytest.mark.e2e]
# kernel_wg (the vm tier, on both guest kernels): the whole file. The
# backend writes AllowedIPs through WireGuard's own netlink API, whose
# flags (WGALLOWEDIP_F_REMOVE_ME, 6.16+), list semantics and the traffic it
# then lets through are WireGuard's implementation.
pytestmark.append(pytest.mark.kernel_wg)
PORT = 51800
CONFIGURED = ("alice", "bob")  # carol stays the operator's


def hub(lab, *cmd, check=True):
    r = run("ip", "netns", "exec", lab.hub, *cmd)
    if check:
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"
    return r


def spoke(lab, name, *cmd):
    r = lab.spoke(name, *cmd)
    assert r.returncode == 0, f"{name}: {' '.join(cmd)}: {r.stderr}"
    return r


@pytest.fixture(scope="module")
def lab():
    with lab_session(f"a{RUN_ID}", "ping", bpf=False) as lab:
        front_pub = wg_pubkey(lab.hub, lab.front)
        hub(lab, "wg", "set", lab.front, "listen-port", str(PORT))
        for name, p in lab.peers.items():
            p["pub"] = wg_pubkey(p["ns"], p["spoke_dev"])
            member_pub = wg_pubkey(lab.hub, p["member"])
            hub(lab, "wg", "set", lab.front, "peer", p["pub"], "endpoint", f"198.18.{p['index']}.2:51900")
            spoke(lab, name, "wg", "set", p["spoke_dev"], "peer", member_pub, "remove",
                  "peer", front_pub, "allowed-ips", "0.0.0.0/0,::/0", "endpoint", f"198.18.{p['index']}.1:{PORT}")
        lab.drop_front_routes()  # the daemon's routes name peers by tag
        # carol is not the daemon's: what the operator gave her stays
        hub(lab, "wg", "set", lab.front, "peer", lab.peers["carol"]["pub"], "allowed-ips", "10.3.0.0/16,10.255.0.3/32")
        yield lab


def peer_args(lab, names=CONFIGURED):
    out = []
    for n in names:
        p = lab.peers[n]
        out += ["--peer", f"{n}={p['pub']},{p['tag4']},{p['tag6']}"]
    return out


def start(lab, *extra):
    return DaemonProc(lab.hub, "daemon", "--backend", "allowedips", lab.front, *peer_args(lab), *extra)


@pytest.fixture
def daemon(lab):
    d = start(lab)
    yield d
    d.stop()


def allowed(lab):
    """{peer name: set of prefixes} as the device reports them."""
    names = {p["pub"]: n for n, p in lab.peers.items()}
    out = {}
    for line in hub(lab, "wg", "show", lab.front, "allowed-ips").stdout.splitlines():
        pub, _, ips = line.partition("\t")
        out[names.get(pub, pub)] = set(ips.split()) - {"(none)"}
    return out


def wait_allowed(lab, check, what, timeout=2.0):
    deadline = time.monotonic() + timeout * TIME_SCALE
    while True:
        got = allowed(lab)
        if check(got):
            return got
        assert time.monotonic() < deadline, f"{what}: AllowedIPs are {got}"
        time.sleep(0.02)


def route(lab, verb, prefix, peer, family=4):
    p = lab.peers[peer]
    via = ["via", p["tag4"], "dev", lab.front, "onlink"] if family == 4 else ["via", p["tag6"], "dev", lab.front]
    hub(lab, "ip", f"-{family}", "route", verb, prefix, *via)


def ping(lab, dst, src):
    r = hub(lab, "ping", "-c", "2", "-i", "0.2", "-W", "2", "-I", src, dst, check=False)
    return r.returncode == 0


def daemon_status(lab):
    with open(lab.run_files()[0]) as f:
        return json.load(f)


def wait_status(lab, check, timeout=3.0):
    """The daemon's status file (rewritten every second) once `check` holds."""
    deadline = time.monotonic() + timeout * TIME_SCALE
    while True:
        st = daemon_status(lab)
        if check(st):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.1)


def test_routes_become_allowed_ips_and_traffic_follows(lab, daemon):
    alice, bob = lab.peers["alice"], lab.peers["bob"]
    got = allowed(lab)
    # tags are the peers' own; carol untouched
    assert got["alice"] == {"10.255.0.1/32", "fe80::1/128"}
    assert got["bob"] == {"10.255.0.2/32", "fe80::2/128"}
    assert got["carol"] == {"10.3.0.0/16", "10.255.0.3/32"}
    assert not ping(lab, alice["host4"], "10.255.0.254")  # no route, no allowed IP

    route(lab, "add", alice["prefix4"], "alice")
    route(lab, "add", bob["prefix6"], "bob", 6)
    wait_allowed(lab, lambda g: alice["prefix4"] in g["alice"] and bob["prefix6"] in g["bob"], "added")
    assert ping(lab, alice["host4"], "10.255.0.254")
    assert ping(lab, bob["host6"], "fd00:ff::1")

    # the route moves to bob: so does the allowed IP, and alice's host is
    # out of reach (bob does not forward)
    route(lab, "replace", alice["prefix4"], "bob")
    got = wait_allowed(lab, lambda g: alice["prefix4"] in g["bob"], "moved")
    assert alice["prefix4"] not in got["alice"]
    assert not ping(lab, alice["host4"], "10.255.0.254")

    # deleted: gone from every peer, the tags stay
    hub(lab, "ip", "route", "del", alice["prefix4"])
    hub(lab, "ip", "-6", "route", "del", bob["prefix6"])
    got = wait_allowed(lab, lambda g: alice["prefix4"] not in g["bob"] and bob["prefix6"] not in g["bob"], "deleted")
    assert got["bob"] == {"10.255.0.2/32", "fe80::2/128"}
    assert got["carol"] == {"10.3.0.0/16", "10.255.0.3/32"}
    # a removal never rewrites the peer's list: WGALLOWEDIP_F_REMOVE_ME
    # where the device has it, else through a throwaway peer
    st = wait_status(lab, lambda st: st["allowedips_changes"] >= 9)  # 4 tags, 2 adds, a move, 2 deletes
    expect = os.environ.get("WGBPF_EXPECT_REMOVE_SINGLE")
    if expect is not None:
        assert st["remove_single"] is (expect == "1"), st
    assert st["removal"] == ("flag" if st["remove_single"] else "throwaway"), st
    assert st["peer_rewrites"] == 0, st
    # a throwaway peer lives until the next status write (about a second)
    wait_allowed(lab, lambda g: set(g) == set(lab.peers), "a throwaway peer was left behind")


def test_start_removes_stale_allowed_ips_and_a_restart_changes_nothing(lab):
    hub(lab, "wg", "set", lab.front, "peer", lab.peers["alice"]["pub"], "allowed-ips",
        "10.66.0.0/16,10.255.0.1/32")
    route(lab, "add", "10.1.0.0/16", "alice")
    try:
        d = start(lab)
        try:
            got = allowed(lab)
            assert got["alice"] == {"10.1.0.0/16", "10.255.0.1/32", "fe80::1/128"}
        finally:
            d.stop()
        d = start(lab)
        try:
            assert " 0 allowed-IP changes" in d.text(), d.text()
        finally:
            d.stop()
    finally:
        hub(lab, "ip", "route", "del", "10.1.0.0/16", check=False)


def test_ecmp_route_goes_to_one_peer_warned_once_and_counted(lab, daemon):
    """A multipath prefix goes to one peer: the heaviest, then the lowest
    tag (alice's 10.255.0.1 before bob's); the status says the rule."""
    prefixes = ["10.91.0.0/16", "10.92.0.0/16", "10.93.0.0/16"]
    weights = {"10.91.0.0/16": ("1", "1"), "10.92.0.0/16": ("1", "3"), "10.93.0.0/16": ("2", "1")}
    try:
        for p in prefixes:
            hub(lab, "ip", "route", "add", p,
                "nexthop", "via", "10.255.0.1", "dev", lab.front, "onlink", "weight", weights[p][0],
                "nexthop", "via", "10.255.0.2", "dev", lab.front, "onlink", "weight", weights[p][1])
        got = wait_allowed(lab, lambda g: all(p in g["alice"] | g["bob"] for p in prefixes), "ecmp")
        for p in prefixes:
            assert (p in got["alice"]) != (p in got["bob"]), f"{p} must have exactly one peer: {got}"
        assert {p for p in prefixes if p in got["bob"]} == {"10.92.0.0/16"}, got  # bob weighs 3 there
        wait_status(lab, lambda st: st["ecmp_prefixes"] == 3)
        # bob's weight on 10.91/16 raised: it moves to him, and no other prefix moves
        hub(lab, "ip", "route", "replace", "10.91.0.0/16",
            "nexthop", "via", "10.255.0.1", "dev", lab.front, "onlink",
            "nexthop", "via", "10.255.0.2", "dev", lab.front, "onlink", "weight", "2")
        got = wait_allowed(lab, lambda g: "10.91.0.0/16" in g["bob"], "10.91.0.0/16 to bob")
        assert {p for p in prefixes if p in got["bob"]} == {"10.91.0.0/16", "10.92.0.0/16"}, got
        r = run(*WGBPF, "--netns", lab.hub, "status", "--front", lab.front, "--json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["backend"] == "allowedips" and st["daemon"]["ecmp_prefixes"] == 3, st
        assert st["daemon"]["ecmp_pick"] == "the heaviest peer, then the lowest tag", st
        r = run(*WGBPF, "--netns", lab.hub, "status")
        assert f"{lab.front}: allowedips backend" in r.stdout and \
            "3 ECMP prefixes given to one peer (the heaviest peer, then the lowest tag)" in r.stdout, r.stdout
        assert daemon.text().count("multipath routes name several peers") == 1, daemon.text()
    finally:
        for p in prefixes:
            hub(lab, "ip", "route", "del", p, check=False)
    wait_allowed(lab, lambda g: not any(p in g["alice"] | g["bob"] for p in prefixes), "ecmp deleted")


def test_a_burst_of_routes_all_arrives(lab, daemon):
    prefixes = [f"10.{100 + i // 200}.{i % 200}.0/24" for i in range(400)]
    batch = "".join(f"route add {p} via 10.255.0.{1 + i % 2} dev {lab.front} onlink\n"
                    for i, p in enumerate(prefixes))
    path = f"/tmp/wgbpf-aip-{RUN_ID}.batch"
    with open(path, "w") as f:
        f.write(batch)
    try:
        hub(lab, "ip", "-batch", path)
        got = wait_allowed(lab, lambda g: all(p in (g["alice"] if i % 2 == 0 else g["bob"])
                                              for i, p in enumerate(prefixes)), "burst", timeout=10)
        assert len(got["alice"]) + len(got["bob"]) == 400 + 4
        with open(path, "w") as f:
            f.write(batch.replace("route add", "route del"))
        hub(lab, "ip", "-batch", path)
        got = wait_allowed(lab, lambda g: len(g["alice"]) + len(g["bob"]) == 4, "burst deleted", timeout=10)
    finally:
        os.unlink(path)


def test_bad_device_and_unknown_peer(lab):
    # not a WireGuard device: a clear error, non-zero exit
    r = run(*WGBPF, "--netns", lab.hub, "daemon", "--backend", "allowedips", "lo", *peer_args(lab))
    assert r.returncode == 1
    assert "lo: " in r.stderr and "WireGuard" in r.stderr, r.stderr
    # a configured key the device does not have: named in a warning, the rest syncs
    stranger = base64.b64encode(bytes(range(32))).decode()
    d = DaemonProc(lab.hub, "daemon", "--backend", "allowedips", lab.front, *peer_args(lab),
                   "--peer", f"dave={stranger},10.255.0.9")
    try:
        assert "peers not on" in d.text() and "dave" in d.text(), d.text()
    finally:
        d.stop()

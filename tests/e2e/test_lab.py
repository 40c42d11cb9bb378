# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: the demo topology (lab/lab.sh) with wireguard-go, real traffic.

        alice ----\\                 /---- bob
                   wg-alice  wg0  wg-bob        (hub: front wg0, one member per peer)
                          \\_ hub _/
                          wg-carol ---- carol

Each test drives `wgbpf` as a user does (the CLI, in the hub's namespace)
and checks what a user would see: pings answered or not, iperf3 bytes,
counters, exit codes. The lab is built once per module with a name unique
to this run and removed afterwards, even when a test fails.
"""
import json
import os
import subprocess
import time

import pytest

from wgbtest import RUN_ID

from labutil import LOOKUPS, TIME_SCALE, lab_session, run

pytestmark = [pytest.mark.root, pytest.mark.e2e]
# kernel_wg (some tests, marked): the data plane through kernel members:
# steering, GSO/GRO super-packets (iperf3), the source check on what a
# member hands up, link-local multicast. One lookup mode there (the vm tier
# sets WGBPF_E2E_LOOKUPS=lpm): the modes do not depend on WireGuard.


@pytest.fixture(scope="module", params=LOOKUPS)
def lab(request):
    """The demo lab, attached in each lookup mode in turn: the same traffic
    must take the same paths whichever mode answers."""
    with lab_session(f"e{RUN_ID}", "iperf3", "ping", lookup=request.param) as lab:
        lab.attach()
        lab.route_every_peer()
        yield lab


@pytest.mark.kernel_wg
def test_ping_between_every_pair_of_spokes_both_families(lab):
    before = {n: lab.peer(n)["tx_packets"] for n in lab.peers}
    for src in lab.peers:
        for dst, p in lab.peers.items():
            if src == dst:
                continue
            assert lab.ping(src, p["host4"]), f"{src} -> {dst} {p['host4']}"
            assert lab.ping(src, p["host6"]), f"{src} -> {dst} {p['host6']}"
    after = {n: lab.peer(n)["tx_packets"] for n in lab.peers}
    # each spoke was pinged 3 x 2 families x 2 sources, and answered 12 times
    for n in lab.peers:
        assert after[n] - before[n] >= 24, (n, before, after)


def test_lookup_and_dump_name_the_right_peer(lab):
    r = json.loads(lab.wgbpf("lookup", "10.2.77.1", "--json").stdout)
    assert r["peers"] == ["bob"]
    if lab.lookup == "fib":  # the kernel's route answers, there are no prefix maps
        assert r["rule"] == f"kernel route via {lab.peers['bob']['tag4']}"
        # a weighted multipath route: both peers, each hop with its weight
        a, b = lab.peers["alice"]["tag4"], lab.peers["bob"]["tag4"]
        lab.ip("route", "add", "10.88.0.0/16", "nexthop", "via", a, "dev", lab.front, "onlink", "weight", "3",
               "nexthop", "via", b, "dev", lab.front, "onlink")
        try:
            r = json.loads(lab.wgbpf("lookup", "10.88.0.1", "--json").stdout)
            assert r["peers"] == ["alice", "bob"] and r["rule"] == f"kernel route via {a} weight 3, via {b}", r
            assert r["verdict"] == ("steer as the kernel's multipath hash picks, by the route's weights, "
                                    "one of alice, bob"), r
        finally:
            lab.ip("route", "del", "10.88.0.0/16")
        return
    assert r["prefix"] == "10.2.0.0/16"
    r = json.loads(lab.wgbpf("lookup", lab.peers["carol"]["tag6"], "--json").stdout)
    assert r["rule"] == "tag route" and r["peers"] == ["carol"]
    routes = {x["prefix"]: x["peers"] for x in lab.dump()["routes"]}
    assert routes["fd00:3::/48"] == ["carol"]
    assert routes[f"{lab.peers['alice']['tag4']}/32"] == ["alice"]


@pytest.mark.kernel_wg
def test_iperf3_through_the_front(lab):
    bob = lab.peers["bob"]
    server = subprocess.Popen(["ip", "netns", "exec", bob["ns"], "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5 * TIME_SCALE)
        before = lab.peer("bob")["tx_bytes"]
        secs = str(round(2 * TIME_SCALE))  # the same bytes need longer under emulation
        r = lab.spoke("alice", "iperf3", "-c", bob["host4"], "-t", secs, "-J", timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        sent = json.loads(r.stdout)["end"]["sum_received"]["bytes"]
    finally:
        server.kill()
        server.wait()
    assert sent > 1_000_000, f"iperf3 moved only {sent} bytes"
    # every byte bob received was steered to bob's member by front_egress
    assert lab.peer("bob")["tx_bytes"] - before >= sent


@pytest.mark.kernel_wg
def test_spoofed_source_is_dropped_and_counted(lab):
    alice, bob, carol = (lab.peers[n] for n in ("alice", "bob", "carol"))
    forged = bob["host4"].rsplit(".", 1)[0] + ".99"  # inside bob's prefix
    lab.spoke("alice", "ip", "addr", "add", f"{forged}/32", "dev", alice["spoke_dev"])
    try:
        spoofed_before = lab.status()["counters"]["spoofed"]
        alice_before = lab.peer("alice")["spoofed"]
        assert not lab.ping("alice", carol["host4"], count=3, extra=("-I", forged))
        assert lab.status()["counters"]["spoofed"] - spoofed_before >= 3
        assert lab.peer("alice")["spoofed"] - alice_before >= 3
        # alice's own address still works
        assert lab.ping("alice", carol["host4"], count=1)
    finally:
        lab.spoke("alice", "ip", "addr", "del", f"{forged}/32", "dev", alice["spoke_dev"])


@pytest.mark.kernel_wg
def test_tag_address_reaches_its_peer_and_multicast_reaches_all(lab):
    # unicast to a neighbour's link-local tag: the tag's implicit host route
    r = run("ip", "netns", "exec", lab.hub, "ping", "-c", "2", "-i", "0.2", "-W", "2",
            f"{lab.peers['bob']['tag6']}%{lab.front}")
    assert r.returncode == 0, r.stdout + r.stderr
    # all-nodes multicast from the front is cloned to every member; each
    # spoke answers from its link-local tag, so the hub hears three replies
    flooded = lab.status()["counters"]["flooded"]
    r = run("ip", "netns", "exec", lab.hub, "ping", "-c", "2", "-i", "0.5", "-w", "3",
            f"ff02::1%{lab.front}")
    replies = {line.split()[3].rstrip(":").split("%")[0] for line in r.stdout.splitlines()
               if "bytes from" in line}
    replies.discard("fe80::fe")  # the hub's own front answers too
    assert replies == {p["tag6"] for p in lab.peers.values()}, r.stdout
    assert lab.status()["counters"]["flooded"] > flooded


def _ping_during(lab, action):
    """Ping alice -> bob every 20 ms for as long as `action` runs; no
    request may go unanswered."""
    last, lost, out = lab.ping_during("alice", lab.peers["bob"]["host4"], action)
    assert last >= 20, f"only {last} pings answered"  # it really ran across the action
    assert lost == [], f"no reply to icmp_seq {lost} of {last}"
    return out


def test_attach_again_changes_nothing_and_drops_nothing(lab):
    out = _ping_during(lab, lambda: lab.attach(None, "--json"))
    res = json.loads(out.stdout)
    assert res["changes"] == [] and res["programs_reloaded"] is False


def test_attach_with_changed_peers_updates_in_place(lab):
    # carol leaves: her member is unhooked and her routes go; alice <-> bob
    # keeps flowing while the instance changes under it
    out = _ping_during(lab, lambda: lab.attach(["alice", "bob"]))
    assert "peer carol removed" in out.stdout
    st = lab.status()
    assert {m["peer"] for m in st["members"]} == {"alice", "bob"}
    assert not lab.ping("alice", lab.peers["carol"]["host4"], count=1)
    # carol comes back under the same name
    lab.attach()
    carol = lab.peers["carol"]
    lab.add_route("carol", carol["prefix4"])
    assert lab.ping("alice", carol["host4"], count=2)


def test_bad_input_leaves_the_data_plane_as_it_was(lab):
    before = lab.dump()["routes"]
    r = lab.wgbpf("attach", lab.front, "--peer", "alice=nosuchdev0", check=False)
    assert r.returncode != 0 and "nosuchdev0" in r.stderr
    r = lab.wgbpf("route", "add", "10.9.0.0/33", "alice", check=False)
    assert r.returncode != 0 and "10.9.0.0/33" in r.stderr
    r = lab.wgbpf("route", "add", "10.9.0.0/16", "mallory", check=False)
    assert r.returncode != 0 and "mallory" in r.stderr
    assert lab.dump()["routes"] == before
    assert lab.ping("alice", lab.peers["bob"]["host4"], count=1)


def test_detach_restores_plain_behaviour_then_members_only_filters(lab):
    """Runs last: detach, check the kernel alone no longer steers, then
    members-only mode on routes `dev <member>`."""
    lab.wgbpf("detach", lab.front)
    assert not os.path.exists(lab.pin_dir())
    tc = run("ip", "netns", "exec", lab.hub, "tc", "filter", "show", "dev", lab.front, "egress")
    assert "wgbpf" not in tc.stdout
    assert not lab.ping("alice", lab.peers["bob"]["host4"], count=2)

    # the per-peer-interface setup: routes straight to members, wgbpf only filters
    for p in lab.peers.values():
        run("ip", "-n", lab.hub, "route", "replace", p["prefix4"], "dev", p["member"], check=True)
    lab.wgbpf("attach", lab.front, "--members-only", "--lookup", lab.lookup, *lab.peer_args())
    for p in lab.peers.values():
        lab.wgbpf("route", "add", p["prefix4"], p["name"])
    assert lab.ping("alice", lab.peers["bob"]["host4"], count=2)
    alice, bob = lab.peers["alice"], lab.peers["bob"]
    forged = bob["host4"].rsplit(".", 1)[0] + ".98"
    lab.spoke("alice", "ip", "addr", "add", f"{forged}/32", "dev", alice["spoke_dev"])
    try:
        before = lab.status()["counters"]["spoofed"]
        assert not lab.ping("alice", lab.peers["carol"]["host4"], count=2, extra=("-I", forged))
        assert lab.status()["counters"]["spoofed"] - before >= 2
    finally:
        lab.spoke("alice", "ip", "addr", "del", f"{forged}/32", "dev", alice["spoke_dev"])
    lab.wgbpf("detach", lab.front)

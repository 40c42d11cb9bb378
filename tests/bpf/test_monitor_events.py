# SPDX-License-Identifier: GPL-2.0-or-later
"""`wgbpf monitor`'s events, as the data plane writes them.

The programs write an event to the events ring buffer only while the
monitor map holds a listener whose lease has not run out (wgbpf/monitor.py
renews it every second): with nobody watching, or a listener dead without
clearing the map, nothing is written and the verdicts are the same. Each
event names the device, the hook, the addresses and ports, the peer, the
reason and whether the packet was dropped; a per-CPU token bucket keeps a
flood of drops to WGBPF_MONITOR_BURST events, counting the rest.

The lab: alice owns 10.1.0.0/16, bob 10.2.0.0/16; carol (member down) owns
10.3.0.0/16.
"""
import contextlib
import ctypes
import socket
import time

import pytest

from wgbpf import abi, bpfsys, monitor

import packets as P
from bpflab import PeerSpec

pytestmark = pytest.mark.root

OK, SHOT, REDIRECT = P.TC_ACT_OK, P.TC_ACT_SHOT, P.TC_ACT_REDIRECT


@pytest.fixture(scope="module")
def inst(bpf_lab):
    inst = bpf_lab.attach([PeerSpec("alice", ("10.255.0.1",)), PeerSpec("bob", ("10.255.0.2",)),
                           PeerSpec("carol", ("10.255.0.3",), up=False)])
    inst.set_route("10.1.0.0/16", ["alice"])
    inst.set_route("10.2.0.0/16", ["bob"])
    inst.set_route("10.3.0.0/16", ["carol"])
    return inst


@contextlib.contextmanager
def listening(inst, mode=abi.Watch.DROPS):
    lst = monitor.Listener(inst.maps, mode)
    try:
        yield lst
    finally:
        lst.close()


def events(lst):
    """The events queued now, as dicts (the --json form)."""
    names = monitor.Names(lst.m)
    size = ctypes.sizeof(abi.Event)
    return [monitor.describe(abi.Event.from_buffer_copy(r[:size]), names, 0)
            for r in lst.ring.records()]


def test_nothing_is_written_while_nobody_watches(inst):
    with listening(inst) as lst:
        pass  # a listener came and went: the map says off again
    assert monitor.watched(inst.maps) is None
    ring = monitor.RingBuffer(inst.maps.fds["events"], abi.EVENTS_SIZE)
    try:
        ring.skip()
        retval, d = inst.measure("member_ingress", P.udp_frame("10.2.0.9", "10.1.0.1"), via="alice")
        assert (retval, d) == (SHOT, {"spoofed": 1, "spoofed:alice": 1})
        assert ring.records() == []
    finally:
        ring.close()


def test_a_lapsed_lease_writes_nothing(inst):
    """A listener killed by SIGKILL never clears the map: its lease does."""
    with listening(inst) as lst:
        bpfsys.update(inst.maps.fds["monitor"], ctypes.c_uint32(0),
                      abi.Monitor(mode=abi.Watch.ALL, pid=1, until=time.monotonic_ns() - 1))
        assert monitor.watched(inst.maps) is None
        assert inst.run("member_ingress", P.udp_frame("10.2.0.9", "10.1.0.1"), via="alice") == SHOT
        assert lst.ring.records() == []


def test_spoofed_source_event(inst):
    with listening(inst) as lst:
        retval = inst.run("member_ingress", P.udp_frame("10.2.0.9", "10.1.0.1", sport=4000, dport=53),
                          via="alice")
        got = events(lst)
    assert retval == SHOT
    assert len(got) == 1
    e = got[0]
    assert {k: e[k] for k in ("device", "hook", "src", "dst", "proto", "sport", "dport", "peer",
                              "reason", "dropped")} == {
        "device": inst.members["alice"], "hook": "member_ingress", "src": "10.2.0.9",
        "dst": "10.1.0.1", "proto": "udp", "sport": 4000, "dport": 53, "peer": "alice",
        "reason": "spoofed", "dropped": True}
    assert e["len"] > 0


@pytest.mark.parametrize("frame,reason,peer", [
    (P.tcp_frame("10.1.0.5", "10.9.0.1"), "no_route", None),
    (P.tcp_frame("10.1.0.5", "10.3.0.1"), "peer_down", "carol"),
], ids=["no_route", "peer_down"])
def test_front_drop_events(inst, frame, reason, peer):
    with inst.policy(abi.Policy.DROP), listening(inst) as lst:
        assert inst.run("front_egress", frame, via=inst.front) == SHOT
        got = events(lst)
    assert [(e["hook"], e["reason"], e["peer"], e["proto"], e["dport"], e["dropped"]) for e in got] \
        == [("front_egress", reason, peer, "tcp", 443, True)]
    assert got[0]["device"] == inst.front


def test_passed_packets_only_with_all(inst):
    steer = P.udp_frame("10.1.0.5", "10.2.0.7")
    no_route = P.udp_frame("10.1.0.5", "10.9.0.1")  # policy pass: handed on, not dropped
    with listening(inst) as lst:
        assert inst.run("front_egress", steer) == REDIRECT
        assert inst.run("front_egress", no_route) == OK
        assert events(lst) == []
    with listening(inst, abi.Watch.ALL) as lst:
        assert inst.run("front_egress", steer) == REDIRECT
        assert inst.run("front_egress", no_route) == OK
        assert inst.run("member_ingress", P.udp_frame("10.1.0.5", "10.2.0.7"), via="alice") == REDIRECT
        got = [(e["reason"], e["peer"], e["dropped"], e["src"]) for e in events(lst)]
    assert got == [("steered", "bob", False, "10.1.0.5"), ("no_route", None, False, "10.1.0.5"),
                   ("passed", "alice", False, "10.1.0.5")]


def test_ipv6_and_malformed(inst):
    with listening(inst) as lst:
        inst.run("member_ingress", P.udp_frame("2001:db8::9", "2001:db8::1"), via="bob")
        inst.run("member_ingress", P.eth(P.ETH_P_ARP, P.arp_request()), via="bob")
        got = [(e["src"], e["dst"], e["reason"], e["peer"]) for e in events(lst)]
    assert got == [("2001:db8::9", "2001:db8::1", "spoofed", "bob"), (None, None, "malformed", None)]


def test_a_flood_of_drops_is_rate_limited(inst):
    with listening(inst) as lst:
        held0, _ = lst.held_back()
        n = 3 * abi.MONITOR_BURST
        assert inst.run("member_ingress", P.udp_frame("10.2.0.9", "10.1.0.1"), via="alice", repeat=n) == SHOT
        got = len(lst.ring.records())
        held, lost = lst.held_back()
    # the burst, plus what the bucket refilled while the run lasted
    assert abi.MONITOR_BURST // 2 <= got < abi.MONITOR_BURST + n // 3, got
    assert got + (held - held0) + lost == n


def test_one_listener_at_a_time(inst):
    with listening(inst):
        # the same pid may renew (not a second listener); another live pid may not
        bpfsys.update(inst.maps.fds["monitor"], ctypes.c_uint32(0),
                      abi.Monitor(mode=abi.Watch.DROPS, pid=1, until=time.monotonic_ns() + 10**10))
        with pytest.raises(monitor.MonitorError, match="pid 1"):
            monitor.Listener(inst.maps)
        assert monitor.watched(inst.maps) == {"mode": "drops", "pid": 1}


def test_names_device_for_unknown_ifindex(inst):
    names = monitor.Names(inst.maps)
    assert names.device(inst.net.ifindex[inst.members["bob"]]) == inst.members["bob"]
    assert names.device(2**31 - 1).startswith("#")
    assert names.peer(0) is None and names.peer(inst.ids["bob"]) == "bob"
    assert socket  # the module is imported for if_indextoname's sake in Names

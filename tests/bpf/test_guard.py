# SPDX-License-Identifier: GPL-2.0-or-later
"""Fail closed, in the programs: martian sources and the guard against
devices wgbpf has not vetted.

Martians: sources no route can make legitimate are dropped at member
ingress before any lookup, each under its own reason, even when the sending
peer owns the default route (a peer that is the upstream), in every source
mode but off.

The guard: a member re-created by `wg-quick down/up` has a new ifindex and
no filter until the daemon hooks it, so what it receives reaches the
forwarding path unchecked. front_egress and member_egress let a forwarded
packet out to a peer only if it came in by the front (after member_ingress),
by a hooked member, or by a device vetted as no member
(skb->ingress_ifindex, set here through the test run's context)."""
import pytest

from wgbpf import abi, dataplane, nsenter

import packets as P
from bpflab import PeerSpec, passed, sh, unique

pytestmark = pytest.mark.root

OK, SHOT, REDIRECT = P.TC_ACT_OK, P.TC_ACT_SHOT, P.TC_ACT_REDIRECT
LOCAL = "10.99.0.1"   # given to a device of the namespace: the host's own

MARTIANS = [
    ("0.0.0.0", "martian_unspec"), ("0.1.2.3", "martian_unspec"), ("::", "martian_unspec"),
    ("127.0.0.1", "martian_loopback"), ("127.255.0.9", "martian_loopback"), ("::1", "martian_loopback"),
    ("224.0.0.5", "martian_multicast"), ("239.1.1.1", "martian_multicast"),
    ("ff02::1", "martian_multicast"), ("ff0e::1:2", "martian_multicast"),
    ("240.0.0.1", "martian_reserved"), ("255.255.255.255", "martian_reserved"),
    ("::ffff:10.2.0.1", "martian_mapped"), ("::ffff:0.0.0.0", "martian_mapped"),
    ("::10.2.0.1", "martian_mapped"),
    (LOCAL, "martian_local"),
]


@pytest.fixture(scope="module")
def inst(bpf_lab):
    """alice owns the default routes (she is the upstream), bob a /16."""
    inst = bpf_lab.attach([PeerSpec("alice", ("10.255.0.1", "fe80::1")),
                           PeerSpec("bob", ("10.255.0.2", "fe80::2"))], front_carrier=True)
    for net in ("0.0.0.0/0", "::/0"):
        inst.set_route(net, ["alice"])
    inst.set_route("10.2.0.0/16", ["bob"])
    # a host address appears after attach: what the daemon does on RTM_NEWADDR
    dev = bpf_lab.tun(unique("wgbl"))
    sh("ip", "-n", bpf_lab.name, "addr", "add", f"{LOCAL}/32", "dev", dev)
    with nsenter.entered(bpf_lab.name):
        with dataplane.iproute() as ipr:
            dataplane.vet(ipr, inst.maps, set(inst.members.values()))
    return inst


def frame(src):
    return P.udp_frame(src, "2001:db8::1" if ":" in src else "10.2.0.9")


@pytest.mark.parametrize("mode", [abi.Source.STRICT, abi.Source.FEASIBLE, abi.Source.LOOSE])
@pytest.mark.parametrize("src,reason", MARTIANS, ids=[f"{s}-{r}" for s, r in MARTIANS])
def test_martian_source_dropped_despite_default_route(inst, mode, src, reason):
    with inst.settings(source=mode):
        retval, d = inst.measure("member_ingress", frame(src), via="alice")
    assert (retval, d) == (SHOT, {reason: 1, "spoofed:alice": 1})


@pytest.mark.parametrize("src,reason", MARTIANS[:3], ids=[s for s, _ in MARTIANS[:3]])
def test_martian_source_passes_with_source_check_off(inst, src, reason):
    with inst.settings(source=abi.Source.OFF):
        retval, d = inst.measure("member_ingress", frame(src), via="alice")
    assert (retval, d) == (REDIRECT, passed("alice", "passed_unchecked"))


def test_ordinary_source_under_the_default_route_still_passes(inst):
    """The check is for martians only: the upstream may source the internet."""
    for src in ("8.8.8.8", "2606:4700::1111", "192.0.2.7", "2001:db8::9"):
        retval, d = inst.measure("member_ingress", frame(src), via="alice")
        assert (retval, d) == (REDIRECT, passed("alice")), src


def test_local_addresses_are_kept_by_vet(inst):
    assert str(next(a for a in inst.maps.guard.locals() if str(a) == LOCAL)) == LOCAL


@pytest.fixture
def newcomer(bpf_lab):
    """A device created after attach and not vetted: a re-created member
    before the daemon sees it."""
    return bpf_lab.tun(unique("wgbn"))


def test_front_egress_drops_what_an_unvetted_device_forwards(inst, newcomer):
    retval, d = inst.measure("front_egress", frame("10.2.0.9"), came_in=newcomer)
    assert (retval, d) == (SHOT, {"unvetted": 1})


@pytest.mark.parametrize("came_in", ["front", "local", "vetted"])
def test_front_egress_steers_what_a_vetted_way_in_forwards(inst, bpf_lab, came_in):
    """By the front (member_ingress passed it), made here (0), a device
    present at attach."""
    where = {"front": inst.front, "local": None,
             "vetted": next(d for d in bpf_lab.devices if d not in inst.members.values()
                            and d != inst.front)}[came_in]
    retval, d = inst.measure("front_egress", P.udp_frame("10.2.0.1", "10.2.0.9"), came_in=where)
    assert (retval, d) == (REDIRECT, {"steered": 1, "tx:bob": 1})


def test_front_egress_drops_what_a_member_forwards_itself(inst):
    """With a front, what member_ingress passes arrives by the front; a
    packet forwarded straight from a member skipped the check (its filter
    was removed, a filter ahead of ours took it, the device moved to another
    namespace and back): its ifindex is no proof."""
    retval, d = inst.measure("front_egress", frame("10.2.0.9"), came_in="alice")
    assert (retval, d) == (SHOT, {"unvetted": 1})


def test_members_only_lets_out_only_what_member_ingress_stamped(bpf_lab):
    """No front: member_ingress leaves what it passed on the member,
    stamped; an unstamped packet from a member (the test run cannot stamp)
    is dropped on its way out by another member."""
    mo = bpf_lab.attach([PeerSpec("xena", ("10.255.2.1",)), PeerSpec("yuri", ("10.255.2.2",))],
                        members_only=True)
    retval, d = mo.measure("member_egress", frame("10.2.0.9"), came_in="xena")
    assert (retval, d) == (SHOT, {"unvetted": 1})
    retval, d = mo.measure("member_egress", frame("10.2.0.9"))
    assert (retval, d) == (OK, {})


def test_member_egress_guards_routes_that_leave_by_a_member(inst, newcomer):
    retval, d = inst.measure("member_egress", frame("10.2.0.9"), came_in=newcomer)
    assert (retval, d) == (SHOT, {"unvetted": 1})
    retval, d = inst.measure("member_egress", frame("10.2.0.9"), came_in=inst.front)
    assert (retval, d) == (OK, {})
    retval, d = inst.measure("member_egress", frame("10.2.0.9"))
    assert (retval, d) == (OK, {})


def test_unvetted_device_is_vetted_by_a_new_vet(inst, bpf_lab):
    dev = bpf_lab.tun(unique("wgbv"))
    retval, _ = inst.measure("front_egress", frame("10.2.0.9"), came_in=dev)
    assert retval == SHOT
    with nsenter.entered(bpf_lab.name):
        with dataplane.iproute() as ipr:
            dataplane.vet(ipr, inst.maps, set(inst.members.values()))
    retval, d = inst.measure("front_egress", frame("10.2.0.9"), came_in=dev)
    assert (retval, d) == (REDIRECT, {"steered": 1, "tx:bob": 1})

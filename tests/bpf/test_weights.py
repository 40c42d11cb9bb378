# SPDX-License-Identifier: GPL-2.0-or-later
"""Weighted peer sets in the data plane (issue 31), by BPF_PROG_TEST_RUN of
front_egress over many flows (distinct source ports): a 3:1 set splits
3:1 to within the table's resolution (1/64) and the spread of the flows;
with one of four equal members down, only its flows move, spread over the
others, and they all come back with it; a set rewritten in place (a
nexthop object's) steers every route naming it at once."""
import ipaddress
import math

import pytest

import packets as P
from bpflab import PeerSpec
from wgbpf import abi, bpfsys, setmaps
from wgbpf.routemaps import _key

pytestmark = pytest.mark.root

PEERS = ["alice", "bob", "carol", "dave"]
FLOWS = 10000


@pytest.fixture(scope="module")
def inst(bpf_lab):
    return bpf_lab.attach([PeerSpec(p, (f"10.255.0.{i + 1}",)) for i, p in enumerate(PEERS)],
                          front_carrier=True)


def frames(dst, n=FLOWS):
    return [P.udp_frame("192.0.2.1", dst, 1024 + i % 60000, 53 + i // 60000) for i in range(n)]


def placement(inst, frames):
    return [inst.steer(f) for f in frames]


def within(share, want, n):
    """The table's resolution, and three standard deviations of n flows."""
    return abs(share - want) <= 1 / setmaps.BUCKETS + 3 * math.sqrt(want * (1 - want) / n)


def test_a_3_to_1_set_splits_3_to_1(inst):
    net = ipaddress.ip_network("10.31.0.0/16")
    inst.maps.tries.set_route(net, [inst.ids["alice"], inst.ids["bob"]], abi.Origin.STATIC, weights=(3, 1))
    try:
        got = placement(inst, frames("10.31.1.1"))
        assert set(got) == {"alice", "bob"}
        assert within(got.count("alice") / len(got), 0.75, len(got)), got.count("alice")
    finally:
        inst.del_route(net)


def test_a_16_bit_weight_is_followed_to_a_bucket(inst):
    net = ipaddress.ip_network("10.32.0.0/16")
    inst.maps.tries.set_route(net, [inst.ids["alice"], inst.ids["bob"]], abi.Origin.STATIC, weights=(1, 65535))
    try:
        got = placement(inst, frames("10.32.1.1", 2000))
        assert got.count("bob") == len(got)  # alice's share, 1/65536, is under half a bucket
    finally:
        inst.del_route(net)


def test_one_of_four_down_moves_only_its_flows(inst):
    net = ipaddress.ip_network("10.33.0.0/16")
    inst.set_route(net, PEERS)
    try:
        f = frames("10.33.1.1")
        before = placement(inst, f)
        assert all(within(before.count(p) / FLOWS, 0.25, FLOWS) for p in PEERS), \
            {p: before.count(p) for p in PEERS}
        with inst.peers_down("bob"):
            during = placement(inst, f)
        moved = [d for b, d in zip(before, during) if b != d]
        assert len(moved) / FLOWS <= 1 / 4 + 1 / 64
        assert all(b == "bob" for b, d in zip(before, during) if b != d)
        assert "bob" not in during
        # bob's flows spread over the other three, each taking a fair part of them
        assert all(moved.count(p) >= len(moved) / 6 for p in ("alice", "carol", "dave")), \
            {p: moved.count(p) for p in PEERS}
        assert placement(inst, f) == before  # all back with bob
    finally:
        inst.del_route(net)


def test_a_set_rewritten_in_place_steers_every_route_naming_it(inst):
    """What the daemon does for a replaced nexthop object: one write of the
    set, whatever the number of routes naming it."""
    ids = inst.ids
    sid = abi.OPERATOR_SETS - 1  # a daemon's id, as a nexthop object's set
    nets = [ipaddress.ip_network(f"10.40.{i}.0/24") for i in range(50)]
    inst.maps.sets.write(sid, setmaps.pack((ids["alice"],), None, abi.SetKind.NEXTHOP, 77))
    try:
        for net in nets:
            inst.maps.tries.set_route(net, [ids["alice"]], abi.Origin.KERNEL)
            r = inst.maps.tries.get_route(net)
            r.set = sid
            bpfsys.update(inst.maps.tries.fd(4), _key(net), r)
        probe = [P.udp_frame("192.0.2.1", f"10.40.{i}.9", 999) for i in range(50)]
        assert set(placement(inst, probe)) == {"alice"}
        inst.maps.sets.write(sid, setmaps.pack((ids["carol"],), None, abi.SetKind.NEXTHOP, 77))
        assert set(placement(inst, probe)) == {"carol"}
        # an object that names no peer now: a "no peer" entry, not the covering route's
        inst.maps.sets.write(sid, setmaps.pack((), None, abi.SetKind.NEXTHOP, 77))
        retval, d = inst.measure("front_egress", probe[0])
        assert (retval, d) == (P.TC_ACT_OK, {"no_route": 1})
    finally:
        for net in nets:
            inst.del_route(net)
        inst.maps.sets.free(sid)

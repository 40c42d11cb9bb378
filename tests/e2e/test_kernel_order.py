# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: the maps equal the kernel whatever the order of events
(issue 32). The daemon is stopped (SIGSTOP, as a busy daemon is) while a
batch of route and nexthop changes goes in with `ip -batch`, then resumed,
so that it reads them all as one batch:

- a nexthop id deleted and made again inside one batch, with routes
  through it between: a route the kernel removed must not come back;
- route events and nexthop events of one batch applied in the kernel's
  order, not routes first;
- routes of equal metric (`ip route append`): the route the kernel uses,
  IPv4 and IPv6, and none of the kernel's fe80::/64 routes;
- a hypothesis property test of random sequences of all of these.

The reference is the kernel itself: `ip route get` for sampled addresses
(the peer it sends them to, by member device or by tag out of the front),
and a fresh read of its routes (labutil.kernel_view) for the whole maps.
A forged source that the kernel's routes do not give the sender is
dropped and counted as spoofed.
"""
import ipaddress
import json
import os
import signal
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from wgbtest import RUN_ID
from labutil import TIME_SCALE, DaemonProc, forged, kernel_peer, kernel_view, lab_session, maps_peers, run

pytestmark = [pytest.mark.root, pytest.mark.e2e,
              pytest.mark.skipif(TIME_SCALE > 1 and os.environ.get("WGBPF_E2E_SLOW") != "1",
                                 reason="host tier only: netlink order, nothing of WireGuard's "
                                        "(WGBPF_E2E_SLOW=1 runs it here)")]
NAMES = ("alice", "bob", "carol")


@pytest.fixture(scope="module")
def lab():
    with lab_session(f"q{RUN_ID}", "ping") as lab:
        lab.drop_front_routes()
        lab.route_by_tag()  # the spokes' own prefixes: the forged pings' way there and back
        # a LAN of the hub's own, to set down without cutting a spoke's underlay
        lab.ip("link", "add", "qlan0", "type", "veth", "peer", "name", "qlan1")
        for dev in ("qlan0", "qlan1"):
            lab.ip("link", "set", dev, "up")
        lab.ip("addr", "add", "192.0.2.254/24", "dev", "qlan0")
        yield lab


@pytest.fixture(scope="module")
def daemon(lab):
    d = DaemonProc(lab.hub, "daemon", lab.front, *lab.peer_args())
    yield d
    d.stop()


@pytest.fixture
def clean(lab, daemon):
    """Each test starts and ends with none of its routes or objects."""
    wipe(lab)
    yield daemon
    wipe(lab)


POOL4 = ["10.57.1.0/24", "10.57.2.0/24", "10.58.7.0/24", "10.58.0.0/16", "10.71.0.0/16"]
POOL6 = ["fd71::/48", "fd71:0:1::/64", "fd72::/48"]


def wipe(lab):
    lines = [f"route flush {p}" for p in POOL4] + [f"route flush {p}" for p in POOL6]
    batch(lab, lines + ["nexthop flush"])


def batch(lab, lines):
    r = subprocess.run(["ip", "-n", lab.hub, "-force", "-batch", "-"], input="\n".join(lines) + "\n",
                       capture_output=True, text=True)
    return r.stderr


def in_one_batch(lab, daemon, lines):
    """`lines` applied while the daemon is stopped: it reads them as one batch."""
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        err = batch(lab, lines)
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    return err


def v6_equal_metric_peers(lab, prefix):
    """IPv6: the peers of the routes of the best metric for `prefix`, when
    there are several (the kernel picks among them per lookup)."""
    r = run("ip", "-n", lab.hub, "-6", "-j", "route", "show", "exact", prefix)
    routes = json.loads(r.stdout or "[]")
    if len(routes) < 2:
        return None
    best = min(x.get("metric", 0) for x in routes)
    return [x for x in routes if x.get("metric", 0) == best]


SAMPLES = {p: str(ipaddress.ip_network(p)[9]) for p in POOL4 + POOL6} | {"10.58.200.0/24": "10.58.200.9"}


def disagreements(lab):
    """Sampled addresses where the maps and `ip route get` differ; an IPv6
    prefix whose equal-metric routes name different peers must name none."""
    wrong = []
    for prefix, addr in SAMPLES.items():
        want, got = kernel_peer(lab, addr), maps_peers(lab, addr)
        if (want is None and got == []) or (want is not None and want in got):
            continue  # an ECMP set: the kernel's pick is one of it
        if ":" in addr and got == [] and (v6_equal_metric_peers(lab, prefix) or ()):
            continue  # no single peer: the kernel may pick either
        wrong.append((addr, want, got))
    want, have = kernel_view(lab)
    if want != have:
        wrong.append(("maps != a fresh read of the kernel", len(want), len(have)))
    return wrong


def converged(lab, daemon, context, timeout=3.0):
    deadline = time.monotonic() + timeout * TIME_SCALE
    while wrong := disagreements(lab):
        assert daemon.proc.poll() is None, daemon.text()
        assert time.monotonic() < deadline, (f"maps differ from the kernel: {wrong}\n{context}\n"
                                             f"{run('ip', '-n', lab.hub, 'route').stdout}"
                                             f"{run('ip', '-n', lab.hub, 'nexthop').stdout}")
        time.sleep(0.05)


def via(lab, name):
    return f"via {lab.peers[name]['tag4']} dev {lab.front} onlink"


def test_a_route_the_kernel_removed_does_not_come_back_with_its_id(lab, clean):
    """Issue 32, 1: in one batch object 9 goes, routes change, 10.58.7/24 is
    routed through object 5, and 5 goes (taking the route). Object 5 made
    again through alice must not bring the route back."""
    batch(lab, [f"nexthop add id 5 {via(lab, 'bob')}", f"nexthop add id 9 {via(lab, 'carol')}",
                "route replace 10.58.0.0/16 nhid 9"])
    converged(lab, clean, "setup")
    # more changes than the daemon applies in one go (daemon.BATCH_EVENTS):
    # the deletion of 9 and that of 5 land in different batches
    lines = ["nexthop del id 9"] + [f"route replace 10.59.{i // 250}.{i % 250}/32 {via(lab, 'carol')}"
                                    for i in range(3000)]
    lines += ["route replace 10.58.7.0/24 nhid 5", "nexthop del id 5"]
    try:
        in_one_batch(lab, clean, lines)
        time.sleep(1.0 * TIME_SCALE)
        batch(lab, [f"nexthop add id 5 {via(lab, 'alice')}"])
        time.sleep(0.5 * TIME_SCALE)
        assert kernel_peer(lab, "10.58.7.9") is None  # the kernel removed the route with object 5
        converged(lab, clean, lines[-2:])
        assert maps_peers(lab, "10.58.7.9") == []
        dropped, delivered = forged(lab, "alice", "10.58.7.9", "carol")
        assert dropped >= 3 and delivered == 0, (dropped, delivered)
    finally:
        batch(lab, [f"route del 10.59.{i // 250}.{i % 250}/32" for i in range(3000)])


def test_route_and_nexthop_events_of_one_batch_in_the_kernels_order(lab, clean):
    """Issue 32, 2: object 402 deleted and made again through alice, and two
    routes moved onto it, in one batch: both go to alice, as the kernel's."""
    batch(lab, [f"nexthop add id 402 {via(lab, 'carol')}",
                f"route add 10.57.1.0/24 {via(lab, 'bob')} metric 100"])
    converged(lab, clean, "setup")
    in_one_batch(lab, clean, ["nexthop del id 402", f"nexthop add id 402 {via(lab, 'alice')}",
                              "route add 10.57.1.0/24 nhid 402", "route replace 10.57.2.0/24 nhid 402"])
    converged(lab, clean, "the batch")
    assert maps_peers(lab, "10.57.1.9") == ["alice"] == [kernel_peer(lab, "10.57.1.9")]
    assert maps_peers(lab, "10.57.2.9") == ["alice"]
    dropped, delivered = forged(lab, "bob", "10.57.1.9", "carol")  # bob's metric-100 route lost
    assert dropped >= 3 and delivered == 0, (dropped, delivered)
    dropped, delivered = forged(lab, "alice", "10.57.1.9", "carol")
    assert dropped == 0 and delivered >= 3, (dropped, delivered)


def test_equal_metric_routes_name_what_the_kernel_uses(lab, clean):
    """Issue 32, 3: `append` keeps the first route in IPv4; IPv6 routes of
    one metric naming different peers name none; fe80::/64 is no route."""
    alice, bob = lab.peers["alice"], lab.peers["bob"]
    batch(lab, ["route append 10.71.0.0/16 via 192.0.2.1 dev qlan0",
                f"route append 10.71.0.0/16 dev {alice['member']}",
                f"route append fd71::/48 dev {alice['member']}",
                f"route append fd71::/48 dev {bob['member']}",
                f"route append fd72::/48 via {alice['tag6']} dev {lab.front}",
                f"route append fd72::/48 via {bob['tag6']} dev {lab.front}"])
    converged(lab, clean, "appends")
    assert kernel_peer(lab, "10.71.0.9") is None and maps_peers(lab, "10.71.0.9") == []
    dropped, delivered = forged(lab, "alice", "10.71.0.9", "carol")
    assert dropped >= 3 and delivered == 0, (dropped, delivered)
    assert maps_peers(lab, "fd71::9") == []  # the kernel picks per lookup: no single peer
    assert maps_peers(lab, "fd72::9") == ["alice", "bob"]  # merged: one multipath route
    dump = json.loads(lab.wgbpf("dump", "--json").stdout)
    assert not [r for r in dump["routes"] if r["prefix"].startswith("fe80::/64")], dump
    assert json.loads(lab.wgbpf("status", "--json").stdout)["daemon"]["ambiguous"] == 1
    # the underlay's route goes: alice's is the one the kernel uses now
    batch(lab, ["route del 10.71.0.0/16 via 192.0.2.1 dev qlan0"])
    converged(lab, clean, "the first route deleted")
    assert maps_peers(lab, "10.71.0.9") == ["alice"] == [kernel_peer(lab, "10.71.0.9")]


def test_a_bare_delete_of_equal_routes_takes_the_first(lab, clean):
    """The hostile tester's case after the first fix: the first route and a
    later one name bob (the first with an mtu), alice's between them; a bare
    `del` removes the first, and the kernel uses alice's."""
    batch(lab, [f"route add 10.71.0.0/16 {via(lab, 'bob')} mtu 1300",
                f"route append 10.71.0.0/16 {via(lab, 'alice')}",
                f"route append 10.71.0.0/16 {via(lab, 'bob')}",
                "route del 10.71.0.0/16"])
    converged(lab, clean, "append, append, del")
    assert kernel_peer(lab, "10.71.0.9") == "alice" and maps_peers(lab, "10.71.0.9") == ["alice"]
    dropped, delivered = forged(lab, "bob", "10.71.0.9", "carol")
    assert dropped >= 3 and delivered == 0, (dropped, delivered)


def test_objects_of_a_device_gone_down_do_not_come_back_with_their_id(lab, clean):
    """The hostile tester's case after the first fix: object 360 out a LAN
    device routes 10.58/16; in one batch the device goes down (the kernel
    flushes 360 and the route, without a word) and 360 is made again
    through alice: no route for 10.58/16, and alice may not source it."""
    batch(lab, ["nexthop add id 360 via 192.0.2.1 dev qlan0", "route add 10.58.0.0/16 nhid 360"])
    converged(lab, clean, "setup")
    try:
        in_one_batch(lab, clean, ["link set qlan0 down", f"nexthop add id 360 {via(lab, 'alice')}"])
        time.sleep(0.5 * TIME_SCALE)
        # the LAN's own routes went without a word too: read again within
        # backends.maps.UNSURE_SECONDS
        converged(lab, clean, "LAN down, 360 made again", timeout=8.0)
        assert kernel_peer(lab, "10.58.0.9") is None and maps_peers(lab, "10.58.0.9") == []
        dropped, delivered = forged(lab, "alice", "10.58.0.9", "carol")
        assert dropped >= 3 and delivered == 0, (dropped, delivered)
    finally:
        batch(lab, ["link set qlan0 up"])


# -- the property test --------------------------------------------------------

def op_lines(lab, ops):
    """`ip -batch` lines for drawn ops; refused ones (a group of a missing
    id, a route through one) are refused by the kernel too (-force)."""
    out = []
    for kind, a, b, c in ops:
        if kind == "nh":
            out.append(f"nexthop replace id {a} {via(lab, NAMES[b])}")
        elif kind == "group":
            out.append(f"nexthop replace id {a} group {'/'.join(str(i) for i in sorted(set(b)))}")
        elif kind == "nhdel":
            out.append(f"nexthop del id {a}")
        elif kind == "route":
            how = ["replace", "append", "prepend"][c]
            target = f"nhid {b}" if isinstance(b, int) else {
                "alice": via(lab, "alice"), "bob-dev": f"dev {lab.peers['bob']['member']}",
                "lan": "via 192.0.2.1 dev qlan0", "blackhole": "BLACKHOLE"}[b]
            metric = 10 * (a % 2)
            prefix = POOL4[a % len(POOL4)]
            if target == "BLACKHOLE":
                out.append(f"route {how} blackhole {prefix} metric {metric}")
            else:
                out.append(f"route {how} {prefix} {target} metric {metric}")
        elif kind == "route6":
            dev = lab.peers[NAMES[b]]["member"]
            how = ["replace", "append"][c]
            out.append(f"route {how} {POOL6[a % len(POOL6)]} dev {dev} metric 1024")
        elif kind == "del":
            out.append(f"route del {POOL4[a % len(POOL4)]} metric {10 * (b % 2)}")
        elif kind == "del6":
            out.append(f"route del {POOL6[a % len(POOL6)]} metric 1024")
    return out


OPS = st.one_of(
    st.tuples(st.just("nh"), st.integers(1, 4), st.integers(0, 2), st.none()),
    st.tuples(st.just("group"), st.integers(7, 8), st.lists(st.integers(1, 4), min_size=1, max_size=3), st.none()),
    st.tuples(st.just("nhdel"), st.sampled_from([1, 2, 3, 4, 7, 8]), st.none(), st.none()),
    st.tuples(st.just("route"), st.integers(0, 9),
              st.one_of(st.sampled_from([1, 2, 3, 7]), st.sampled_from(["alice", "bob-dev", "lan", "blackhole"])),
              st.integers(0, 2)),
    st.tuples(st.just("route6"), st.integers(0, 5), st.integers(0, 2), st.integers(0, 1)),
    st.tuples(st.just("del"), st.integers(0, 9), st.integers(0, 1), st.none()),
    st.tuples(st.just("del6"), st.integers(0, 5), st.none(), st.none()),
)
EXAMPLES = int(os.environ.get("WGBPF_ORDER_EXAMPLES", "60"))


def test_random_batches_leave_the_maps_as_the_kernel(lab, clean):
    """Random sequences of nexthop add/replace/delete with reused ids,
    groups, routes through ids and gateways added, replaced, appended,
    prepended and deleted, metric ties in both families, each sequence
    one batch for a stopped daemon; then the maps equal a fresh read of
    the kernel and answer as `ip route get`."""
    ran = []
    t0 = time.monotonic()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(OPS, min_size=5, max_size=40))
    def check(ops):
        wipe(lab)
        converged(lab, clean, "wiped")
        lines = op_lines(lab, ops)
        in_one_batch(lab, clean, lines)
        converged(lab, clean, "\n".join(lines))
        ran.append(len(lines))
    check()
    print(f"\nkernel order: {len(ran)} random batches ({sum(ran)} changes) in {time.monotonic() - t0:.1f}s")
    assert len(ran) >= min(EXAMPLES, 10)

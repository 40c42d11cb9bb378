# SPDX-License-Identifier: GPL-2.0-or-later
"""The probes' sockets (wgbpf/prober.py) on real devices, no WireGuard: a
veth pair between two namespaces stands for a member and its peer, whose
tag the far kernel answers. An IPv4 tag with no route to it (the socket
bound to the member), a link-local IPv6 tag, RTT measured, loss counted
when the far side goes silent. Root (namespaces, raw sockets)."""
import time

import pytest

from wgbpf import nsenter
from wgbpf.prober import Prober
from wgbtest import sh, unique

pytestmark = pytest.mark.root


@pytest.fixture
def pair(netns):
    """(hub namespace, its device, far namespace, far device): the far
    side holds the tags 10.255.0.9 and fe80::9, and a route back."""
    hub = netns
    far = unique("wgbf")
    sh("ip", "netns", "add", far)
    try:
        a, b = unique("pa"), unique("pb")
        sh("ip", "-n", hub, "link", "add", a, "type", "veth", "peer", "name", b, "netns", far)
        sh("ip", "-n", hub, "addr", "add", "192.0.2.1/32", "dev", a)  # the hub's own address: no route to the tag
        sh("ip", "-n", hub, "addr", "add", "fe80::1/64", "dev", a, "nodad")  # usable at once (no DAD wait)
        sh("ip", "-n", hub, "link", "set", a, "up")
        sh("ip", "-n", far, "addr", "add", "10.255.0.9/32", "dev", b)
        sh("ip", "-n", far, "addr", "add", "fe80::9/64", "dev", b, "nodad")
        sh("ip", "-n", far, "link", "set", b, "up")
        sh("ip", "-n", far, "route", "add", "192.0.2.1/32", "dev", b)
        time.sleep(0.2)
        yield hub, a, far, b
    finally:
        sh("ip", "netns", "del", far, check=False)


def run(prober, hub, seconds):
    import select
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        prober.due(time.monotonic())
        ready, _, _ = select.select(prober.fds(), [], [], 0.01)
        for fd in ready:
            prober.read(fd, time.monotonic())


def test_probes_measure_a_tag_out_of_the_member_and_count_silence_lost(pair):
    hub, a, far, b = pair
    with nsenter.entered(hub):
        p = Prober({"v4": (a, "10.255.0.9", 0.05), "v6": (a, "fe80::9", 0.05)}, time.monotonic())
    try:
        run(p, hub, 1.0)
        st = p.status()
        for name in ("v4", "v6"):
            assert st[name]["answered"] >= 10 and st[name]["loss"] == 0.0, st
            assert 0 < st[name]["rtt"] < 0.05, st
        sh("ip", "-n", far, "link", "set", b, "down")  # the peer goes silent
        run(p, hub, 2.5)
        st = p.status()
        assert all(st[n]["lost"] >= 10 and st[n]["loss"] >= 0.5 for n in ("v4", "v6")), st
    finally:
        p.close()

# SPDX-License-Identifier: GPL-2.0-or-later
"""The daemon's event read: Netlink.queued() takes every datagram queued in
one recvmmsg(2), and gives the same messages one read per datagram gives
(in a network namespace of its own: `unshare -n`, gone with the process;
root)."""
import os
import subprocess
import sys

import pytest

from wgbtest import require_root, require_tools

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _root():
    require_root()  # a network namespace of its own
    require_tools("unshare")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = r"""
import subprocess, sys
sys.path.insert(0, sys.argv[1])
from wgbpf import netlink, routes
many, one = netlink.Netlink(groups=0x40), netlink.Netlink(groups=0x40)  # RTMGRP_IPV4_ROUTE
subprocess.run("ip tuntap add dev evt0 mode tun && ip link set evt0 up", shell=True, check=True)
lines = "".join(f"route add 10.{i >> 8}.{i & 255}.0/24 dev evt0 metric {i % 7}\n" for i in range(1000))
lines += "".join(f"route del 10.{i >> 8}.{i & 255}.0/24\n" for i in range(0, 1000, 3))
subprocess.run(["ip", "-batch", "-"], input=lines, text=True, check=True)
reads, got = [], []
while True:
    m = many.queued(most=64)
    if not m:
        break
    reads.append(len(m))
    got += [(t, routes.parse_route(b, o, e)) for t, b, o, e in m]
want = []
while True:
    m = list(one.messages(block=False))
    if not m:
        break
    want += [(t, routes.parse_route(b, o, e)) for t, b, o, e in m]
print(len(got), len(want), max(reads), got == want, sum(t == routes.RTM_DELROUTE for t, _ in got))
"""


def test_queued_reads_many_events_a_call_and_the_same_messages():
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", CHILD, REPO], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    n, want, most, same, deleted = r.stdout.split()
    assert (int(n), int(want), same, int(deleted)) == (1334, 1334, "True", 334)
    assert int(most) == 64  # a backlog comes 64 datagrams a call

# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: the allowedips backend removes one allowed IP without
touching the rest of its peer's list, on every kernel. Without
WGALLOWEDIP_F_REMOVE_ME (Linux < 6.16, the wireguard-go of Debian 12) the
prefix goes to a throwaway peer, removed with the daemon's next status
write: nothing of it may be left on the device, even after a crash between
the two steps.

WGBPF_EXPECT_REMOVE_SINGLE=0|1, when set (the vm tier sets it per kernel),
says which path the device must take: 0 the throwaway peer, 1 the flag.
"""
import base64
import os

import pytest

from wgbtest import RUN_ID
from labutil import DaemonProc, lab_session, wg_pubkey
from test_allowedips import allowed, hub, peer_args, route, wait_allowed, wait_status

pytestmark = [pytest.mark.root, pytest.mark.e2e]
# kernel_wg (the vm tier, on both guest kernels): the whole file. Removing
# one allowed IP is REMOVE_ME on 6.16+ and a throwaway peer before it: what
# the device keeps is WireGuard's implementation.
pytestmark.append(pytest.mark.kernel_wg)
PREFIXES = ["10.61.0.0/16", "10.62.0.0/16", "10.63.0.0/24"]


@pytest.fixture(scope="module")
def lab():
    """The lab's front as one WireGuard device holding every spoke as a peer
    (no traffic needed here: only what the device reports)."""
    with lab_session(f"r{RUN_ID}", bpf=False) as lab:
        for p in lab.peers.values():
            p["pub"] = wg_pubkey(p["ns"], p["spoke_dev"])
            hub(lab, "wg", "set", lab.front, "peer", p["pub"])
        lab.drop_front_routes()
        yield lab


def start(lab):
    return DaemonProc(lab.hub, "daemon", "--backend", "allowedips", lab.front, *peer_args(lab))


def device_peers(lab):
    return set(hub(lab, "wg", "show", lab.front, "peers").stdout.split())


def test_one_delete_leaves_the_rest_of_the_list_and_no_peer_behind(lab):
    lab_keys = {p["pub"] for p in lab.peers.values()}
    d = start(lab)
    try:
        for p in PREFIXES:
            route(lab, "add", p, "alice")
        wait_allowed(lab, lambda g: set(PREFIXES) <= g["alice"], "added")
        hub(lab, "ip", "route", "del", PREFIXES[1])
        got = wait_allowed(lab, lambda g: PREFIXES[1] not in g["alice"], "deleted")
        assert got["alice"] == {PREFIXES[0], PREFIXES[2], "10.255.0.1/32", "fe80::1/128"}
        # the throwaway peer goes with the next status write, about a second
        got = wait_allowed(lab, lambda g: set(g) == set(lab.peers), "a throwaway peer was left behind", timeout=3)
        assert device_peers(lab) == lab_keys
        assert not any(PREFIXES[1] in ips for ips in got.values()), got
        st = wait_status(lab, lambda st: st["allowedips_changes"] >= 8)  # 4 tags, 3 adds, 1 delete
        expect = os.environ.get("WGBPF_EXPECT_REMOVE_SINGLE")
        if expect is not None:
            assert st["removal"] == ("flag" if expect == "1" else "throwaway"), st
        assert st["removal"] in ("flag", "throwaway") and st["peer_rewrites"] == 0, st
        if st["removal"] == "throwaway":
            assert "through a throwaway peer" in d.text(), d.text()
    finally:
        d.stop()
        for p in PREFIXES:
            hub(lab, "ip", "route", "del", p, check=False)


def test_a_throwaway_peer_left_by_a_crash_is_removed_at_start(lab):
    # what a daemon killed between creating its throwaway peer and removing
    # it leaves: a peer with the marked key, holding the prefix it removed
    left = base64.b64encode(b"wgbpf throwaway\0" + bytes(range(16))).decode()
    hub(lab, "wg", "set", lab.front, "peer", left, "allowed-ips", "10.64.0.0/16")
    assert left in device_peers(lab)
    d = start(lab)
    try:
        assert left not in device_peers(lab)
        assert "removed 1 throwaway peer(s)" in d.text(), d.text()
        assert not any("10.64.0.0/16" in ips for ips in allowed(lab).values())
    finally:
        d.stop()

# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: the daemon keys routes as the kernel does, and leaves the
operator's `wgbpf route` entries alone.

- Two kernel routes for one prefix (another metric, a TOS route): deleting
  one leaves the prefix steered by the route the kernel still has.
- A `wgbpf route add` entry survives a kernel route for the same prefix
  being added and deleted, in the maps and for traffic; `wgbpf route del`
  hands the prefix back to the kernel route.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from wgbtest import RUN_ID
from labutil import LOOKUPS, ROOT, TIME_SCALE, DaemonProc, lab_session

pytestmark = [pytest.mark.root, pytest.mark.e2e]


@pytest.fixture(scope="module", params=[m for m in LOOKUPS if m != "fib"])
def lab(request):
    """LPM, and DIR-24-8, whose arrays the daemon patches (the pings check them)."""
    with lab_session(f"k{RUN_ID}", "ping", lookup=request.param) as lab:
        # alice and bob by tag; carol's prefix keeps the lab's `dev front`
        # route (names no peer: the hub forwards to the front, the maps decide)
        lab.route_by_tag(("alice", "bob"))
        yield lab


@pytest.fixture(scope="module")
def daemon(lab):
    d = DaemonProc(lab.hub, "daemon", lab.front, *lab.peer_args(), "--lookup", lab.lookup)
    yield d
    d.stop()



def via(lab, peer):
    return ["via", lab.peers[peer]["tag4"], "dev", lab.front, "onlink"]


def lookup(lab, addr):
    """`wgbpf lookup`: (peers, rule) for an address."""
    r = json.loads(lab.wgbpf("lookup", addr, "--json").stdout)
    return r["peers"], r["rule"]


_marks = iter(range(1, 250))


def settled(lab, daemon):
    """Wait until the daemon has applied every route event so far: events
    apply in order, so once a marker route added now is in the maps, so is
    everything before it (a delete that must change nothing included)."""
    prefix = f"10.251.{next(_marks)}.0/24"
    lab.ip("route", "add", prefix, *via(lab, "alice"))
    deadline = time.monotonic() + 2 * TIME_SCALE
    while lookup(lab, prefix.split("/")[0])[0] != ["alice"]:
        assert time.monotonic() < deadline, f"daemon did not apply {prefix}:\n{daemon.text()}"
        time.sleep(0.02)
    lab.ip("route", "del", prefix)


def route_del_hands_back(lab, daemon, prefix, host, peer):
    """`wgbpf route del`: the kernel route naming `peer` takes its place."""
    lab.wgbpf("route", "del", prefix)
    deadline = time.monotonic() + 2 * TIME_SCALE
    while lookup(lab, host) != ([peer], "kernel route"):
        assert time.monotonic() < deadline, f"no kernel route after route del:\n{daemon.text()}"
        time.sleep(0.02)


def test_deleting_one_of_two_routes_keeps_the_prefix(lab, daemon):
    bob = lab.peers["bob"]
    prefix, host = bob["prefix4"], bob["host4"]
    # a second route naming bob, at another metric (IPv4 via his IPv6 tag),
    # and a TOS route naming alice: three routes the kernel keeps apart
    lab.ip("route", "add", prefix, "via", "inet6", bob["tag6"], "dev", lab.front, "metric", "10")
    lab.ip("route", "add", prefix, "tos", "0x10", *via(lab, "alice"))
    settled(lab, daemon)
    assert lookup(lab, host) == (["bob"], "kernel route")  # the TOS route steers nothing
    lab.ip("route", "del", prefix, "tos", "0x10")
    settled(lab, daemon)
    assert lookup(lab, host)[0] == ["bob"]
    lab.ip("route", "del", prefix, *via(lab, "bob"))  # the preferred one goes
    settled(lab, daemon)
    assert lookup(lab, host)[0] == ["bob"]
    assert lab.ping("alice", host, count=2)
    lab.ip("route", "replace", prefix, *via(lab, "bob"))
    lab.ip("route", "del", prefix, "metric", "10")
    settled(lab, daemon)
    assert lookup(lab, host)[0] == ["bob"]
    assert "TOS/source-specific" in daemon.text()


def test_source_specific_routes_are_kept_apart_and_steer_nothing(lab, daemon):
    alice, bob = lab.peers["alice"], lab.peers["bob"]
    v6 = ["dev", lab.front]
    # as babeld installs them: the same prefix, plain and from a source prefix
    lab.ip("-6", "route", "add", alice["prefix6"], "from", bob["prefix6"], "via", bob["tag6"], *v6)
    lab.ip("-6", "route", "add", "2001:db8:77::/48", "from", bob["prefix6"], "via", bob["tag6"], *v6)
    settled(lab, daemon)
    assert lookup(lab, alice["host6"])[0] == ["alice"]
    assert lookup(lab, "2001:db8:77::1") == ([], "no route")  # traffic from elsewhere is not bob's
    lab.ip("-6", "route", "del", alice["prefix6"], "from", bob["prefix6"])
    lab.ip("-6", "route", "del", "2001:db8:77::/48", "from", bob["prefix6"])
    settled(lab, daemon)
    assert lookup(lab, alice["host6"])[0] == ["alice"]
    assert lab.ping("bob", alice["host6"], count=2)


def test_route_add_entry_wins_over_kernel_routes(lab, daemon):
    carol = lab.peers["carol"]
    prefix, host = carol["prefix4"], carol["host4"]
    lab.wgbpf("route", "add", prefix, "carol")
    try:
        # a kernel route for the same prefix naming alice, added and deleted
        lab.ip("route", "add", prefix, *via(lab, "alice"), "metric", "5")
        settled(lab, daemon)
        assert lookup(lab, host) == (["carol"], "static route")
        assert lab.ping("alice", host, count=2)
        lab.ip("route", "del", prefix, "metric", "5")
        settled(lab, daemon)
        assert lookup(lab, host) == (["carol"], "static route")
        assert lab.ping("bob", host, count=2)
        # the operator's entry removed: the kernel route takes its place
        lab.ip("route", "add", prefix, *via(lab, "bob"), "metric", "5")
        settled(lab, daemon)
        assert lookup(lab, host) == (["carol"], "static route")
        route_del_hands_back(lab, daemon, prefix, host, "bob")
    finally:
        lab.wgbpf("route", "del", prefix, check=False)
        lab.ip("route", "del", prefix, "metric", "5", check=False)


def test_route_add_during_a_storm_on_its_prefix_stays(lab, daemon):
    """`wgbpf route add` lands while the daemon follows a storm of replaces
    of the same prefix: the route command and the daemon's event writes
    take turns on the writer lock, so no event batch computed before the
    add overwrites it, and `route del` hands the prefix back."""
    prefixes = [f"10.240.{i}.0/24" for i in range(100)]
    target, host = prefixes[7], "10.240.7.1"
    rounds = [[f"route replace {p} {' '.join(via(lab, peer))}\n" for p in prefixes]
              for peer in ("alice", "bob")]
    stop = threading.Event()

    def storm():
        with tempfile.TemporaryDirectory() as d:
            paths = []
            for i, lines in enumerate(rounds):
                paths.append(os.path.join(d, f"{i}.batch"))
                with open(paths[-1], "w") as f:
                    f.writelines(lines * 5)
            while not stop.is_set():
                for path in paths:
                    lab.ip("-batch", path)

    t = threading.Thread(target=storm)
    t.start()
    try:
        time.sleep(0.3)
        lab.wgbpf("route", "add", target, "carol")
        time.sleep(0.5)
    finally:
        stop.set()
        t.join()
    try:
        settled(lab, daemon)
        assert lookup(lab, host) == (["carol"], "static route"), daemon.text()
        assert lookup(lab, "10.240.8.1") == (["bob"], "kernel route")  # the storm's last word
        route_del_hands_back(lab, daemon, target, host, "bob")
    finally:
        lab.wgbpf("route", "del", target, check=False)
        for p in prefixes:
            lab.ip("route", "del", p, check=False)


def hub_python(lab, code):
    """argv and environment running Python `code`, this checkout's wgbpf
    importable, in the hub's namespace (nsenter: the pins stay visible)."""
    return (["nsenter", f"--net=/run/netns/{lab.hub}", sys.executable, "-c", code],
            dict(os.environ, PYTHONPATH=ROOT))


def test_a_writer_killed_before_telling_the_daemon_still_wins(lab, daemon):
    """A `wgbpf route add` killed after its map write, before it could
    signal the daemon: the writer lock's generation moved as it was taken,
    so the daemon re-reads the maps within a second, and the entry wins
    over a kernel route for its prefix as any other does."""
    prefix, host = "10.241.0.0/16", "10.241.0.1"
    code = f"""if True:
        import ipaddress, os
        from wgbpf import abi, instance
        from wgbpf.maps import Maps, pin_dir
        with instance.writer_lock({lab.front!r}):
            with Maps.open(pin_dir({lab.front!r})) as m:
                carol = [i for i, p in m.peers().items() if p.name == b"carol"]
                m.tries.set_route(ipaddress.ip_network({prefix!r}), carol, abi.Origin.STATIC)
                os.kill(os.getpid(), 9)
    """
    reread = "maps re-read (written by another writer)"
    before = daemon.text().count(reread)
    argv, env = hub_python(lab, code)
    r = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    try:
        deadline = time.monotonic() + 3 * TIME_SCALE
        while daemon.text().count(reread) == before:  # no event needed: its every-second look
            assert time.monotonic() < deadline, f"the daemon did not re-read the maps:\n{daemon.text()}"
            time.sleep(0.05)
        lab.ip("route", "add", prefix, *via(lab, "alice"))
        settled(lab, daemon)
        assert lookup(lab, host) == (["carol"], "static route"), daemon.text()
        route_del_hands_back(lab, daemon, prefix, host, "alice")
    finally:
        lab.wgbpf("route", "del", prefix, check=False)
        lab.ip("route", "del", prefix, check=False)


def test_route_changes_wait_for_a_writer_and_say_so(lab, daemon):
    """Another writer holding the writer lock (a stopped `wgbpf route`,
    say): the daemon keeps the route changes, says so in its log and
    status, and writes them once the lock is free."""
    prefix, host = "10.242.0.0/16", "10.242.0.1"
    argv, env = hub_python(lab, f"import time\nfrom wgbpf import instance\nwith instance.writer_lock({lab.front!r}):\n"
                                f"    print('held', flush=True)\n    time.sleep(2.5 * {TIME_SCALE})")
    hold = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert hold.stdout.readline().strip() == "held"
        lab.ip("route", "add", prefix, *via(lab, "alice"))
        time.sleep(1.5 * TIME_SCALE)
        assert lookup(lab, host) == ([], "no route")  # not written beside another writer
        status = json.loads(lab.wgbpf("status", "--json").stdout)  # of the lab's front
        assert (status["daemon"] or {}).get("pending") == 1, status
        daemon.wait_for("to release the writer lock", timeout=2)
        assert hold.wait(10 * TIME_SCALE) == 0
        daemon.wait_for("route changes written after", timeout=2)
        assert lookup(lab, host) == (["alice"], "kernel route")
    finally:
        hold.kill()
        lab.ip("route", "del", prefix, check=False)

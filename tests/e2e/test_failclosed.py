# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: the source filter fails closed through a router's life.

- A member re-created like `wg-quick down/up` (new ifindex, no filter) under
  a running daemon: hooked again within a second or two, and while alice
  sends forged sources the whole time, none reaches carol, not even in the
  window before the new device is hooked.
- The front re-created: hooked again, traffic flows once routes are back.
- A peer that owns the hub's default route (the upstream) sending martian
  sources, IPv4 and IPv6: none delivered, each counted under its reason.

Delivery is judged where it would land: a packet socket on carol's tunnel
counts every packet with a forged source that reaches her.
"""
import json
import subprocess
import sys
import textwrap
import time

import pytest

from wgbtest import RUN_ID
from labutil import LAB, TIME_SCALE, DaemonProc, lab_session, run

pytestmark = [pytest.mark.root, pytest.mark.e2e]
# kernel_wg (one test, marked): a member re-created as wg-quick down/up
# does under a running daemon: what a new kernel device forwards before its
# filter is there (a forged stream the whole time), and its handshake
# coming back, are WireGuard's. The same without a daemon
# (test_unhooked_...) adds nothing of WireGuard's: host tier only.

# Counts IP packets whose source is one of argv[2:] on device argv[1] until
# SIGTERM, then prints the count. TUN devices carry bare IP packets.
SNIFFER = textwrap.dedent("""
    import ipaddress, signal, socket, sys
    dev, want = sys.argv[1], {ipaddress.ip_address(a).packed for a in sys.argv[2:]}
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))
    s.bind((dev, 0))
    s.settimeout(0.1)
    n, stop = 0, []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("ready", flush=True)
    while not stop:
        try:
            p = s.recv(65535)
        except socket.timeout:
            continue
        src = p[12:16] if p[:1] and p[0] >> 4 == 4 else p[8:24]
        n += src in want
    print(n, flush=True)
""")

# Sends argv[3] copies of a UDP packet from each source of argv[4:] to
# argv[1] (v4) / argv[2] (v6) through raw sockets: the kernel routes by the
# destination and leaves the forged source alone.
SENDER = textwrap.dedent("""
    import ipaddress, socket, struct, sys
    dst4, dst6, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    def csum(b):
        b += b"\\0" * (len(b) % 2)
        s = sum(struct.unpack(f"!{len(b) // 2}H", b))
        s = (s >> 16) + (s & 0xffff); s += s >> 16
        return ~s & 0xffff
    for src in sys.argv[4:]:
        a = ipaddress.ip_address(src)
        udp = struct.pack("!HHHH", 40000, 9, 8 + 5, 0) + b"forge"
        if a.version == 4:
            d = ipaddress.ip_address(dst4)
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, a.packed, d.packed)
            ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            pkt, to = ip + udp, (dst4, 0)
        else:
            d = ipaddress.ip_address(dst6)
            ip = struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, a.packed, d.packed)
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
            pkt, to = ip + udp, (dst6, 0)
        for _ in range(n):
            s.sendto(pkt, to)
        s.close()
""")


class Sniffer:
    def __init__(self, lab, peer, sources):
        self.proc = subprocess.Popen(["ip", "netns", "exec", lab.peers[peer]["ns"], sys.executable, "-c",
                                      SNIFFER, lab.peers[peer]["spoke_dev"], *sources],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def count(self):
        self.proc.terminate()
        out = self.proc.communicate(timeout=10 * TIME_SCALE)[0]
        return int(out.split()[-1])


def send_forged(lab, peer, sources, n=5):
    dst = lab.peers["carol"]
    r = lab.spoke(peer, sys.executable, "-c", SENDER, dst["host4"], dst["host6"], str(n), *sources)
    assert r.returncode == 0, r.stderr



def recreate(lab, dev):
    r = subprocess.run(["bash", LAB, "recreate", dev], env=lab.env, capture_output=True, text=True)
    assert r.returncode == 0, f"recreate {dev}: {r.stderr}"


def rx_packets(lab, dev):
    """Packets a hub device received, by the kernel's count (not wgbpf's)."""
    r = run("ip", "-n", lab.hub, "-s", "-j", "link", "show", "dev", dev)
    return json.loads(r.stdout)[0]["stats64"]["rx"]["packets"] if r.returncode == 0 else 0


def wait_ping(lab, src, dst, timeout):
    deadline = time.monotonic() + timeout * TIME_SCALE
    while not lab.ping(src, dst, count=1, interval="0.2"):
        assert time.monotonic() < deadline, f"{src} -> {dst}: no reply after {timeout}s"
    return True


@pytest.fixture(scope="module")
def lab():
    with lab_session(f"f{RUN_ID}", "ping") as lab:
        lab.drop_front_routes()
        lab.route_by_tag()
        yield lab


FORGED4, FORGED6 = "10.2.0.99", "fd00:2::99"   # inside bob's prefixes


def forge_stream(lab):
    """alice forges bob's sources to carol without pause."""
    carol = lab.peers["carol"]
    return subprocess.Popen(["ip", "netns", "exec", lab.peers["alice"]["ns"], sys.executable, "-c",
                             "import subprocess, sys\n"
                             "while True:\n"
                             f"    subprocess.run([sys.executable, '-c', {SENDER!r}, {carol['host4']!r},"
                             f" {carol['host6']!r}, '20', {FORGED4!r}, {FORGED6!r}])\n"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_unhooked_member_forwards_nothing_until_hooked(lab):
    """No daemon: a re-created member stays unhooked, and everything it
    receives is dropped on the way out to a peer (unvetted), however long
    the window; the daemon's start then hooks it."""
    alice, carol = lab.peers["alice"], lab.peers["carol"]
    lab.attach()
    prefixes = [(p, lab.peers[p][k]) for p in ("alice", "carol") for k in ("prefix4", "prefix6")]
    for peer, prefix in prefixes:
        lab.wgbpf("route", "add", prefix, peer)
    assert wait_ping(lab, "alice", carol["host4"], 5)
    sniff = Sniffer(lab, "carol", [FORGED4, FORGED6])
    stream = forge_stream(lab)
    try:
        recreate(lab, alice["member"])
        # a packet out of the new device itself brings alice's session up,
        # so her forged stream really arrives on the unhooked device
        before = lab.status()["counters"]["unvetted"]
        deadline = time.monotonic() + 10 * TIME_SCALE
        while rx_packets(lab, alice["member"]) < 50:
            run("ip", "netns", "exec", lab.hub, "ping", "-c1", "-W1", "-I", alice["member"], alice["host4"])
            assert time.monotonic() < deadline, "nothing arrived on the re-created member"
        assert lab.status()["counters"]["unvetted"] - before >= 20
        assert not lab.ping("alice", carol["host4"], count=1), "an unhooked member forwarded"
        d = DaemonProc(lab.hub, "daemon", lab.front, *lab.peer_args())
        try:
            assert wait_ping(lab, "alice", carol["host4"], 5)
        finally:
            d.stop()
    finally:
        stream.kill()
        stream.wait()
        for _, prefix in prefixes:
            lab.wgbpf("route", "del", prefix, check=False)
    assert sniff.count() == 0, "a forged source reached carol"


def test_member_moved_away_and_back_forwards_nothing_unchecked(lab):
    """`ip link set netns` and back keeps the ifindex but drops the tc
    filters: the ifindex alone must not make the device trusted."""
    alice, carol = lab.peers["alice"], lab.peers["carol"]
    lab.attach()
    prefixes = [(p, lab.peers[p][k]) for p in ("alice", "carol") for k in ("prefix4", "prefix6")]
    for peer, prefix in prefixes:
        lab.wgbpf("route", "add", prefix, peer)
    away = f"{lab.id}-away"
    run("ip", "netns", "add", away)
    try:
        lab.ip("link", "set", alice["member"], "netns", away)
        assert run("ip", "-n", away, "link", "set", alice["member"], "netns", lab.hub).returncode == 0
        lab.ip("link", "set", alice["member"], "up")
        assert "wgbpf" not in run("tc", "-n", lab.hub, "filter", "show", "dev", alice["member"],
                                  "ingress").stdout
        sniff = Sniffer(lab, "carol", [FORGED4, FORGED6])
        before = lab.status()["counters"]["unvetted"]
        rx = rx_packets(lab, alice["member"])
        deadline = time.monotonic() + 10 * TIME_SCALE
        while rx_packets(lab, alice["member"]) - rx < 20:
            send_forged(lab, "alice", [FORGED4, FORGED6], n=10)
            run("ip", "netns", "exec", lab.hub, "ping", "-c1", "-W1", "-I", alice["member"], alice["host4"])
            assert time.monotonic() < deadline, "nothing arrived on the moved member"
        assert lab.status()["counters"]["unvetted"] - before >= 10
        assert sniff.count() == 0, "a forged source reached carol"
        lab.attach()  # hooks it again
        assert wait_ping(lab, "alice", carol["host4"], 5)
    finally:
        run("ip", "netns", "del", away)
        for _, prefix in prefixes:
            lab.wgbpf("route", "del", prefix, check=False)


@pytest.fixture(scope="module")
def daemon(lab):
    d = DaemonProc(lab.hub, "daemon", lab.front, *lab.peer_args())
    yield d
    d.stop()


@pytest.mark.kernel_wg
def test_recreated_member_is_hooked_again_and_never_forwards_a_forged_source(lab, daemon):
    alice, carol = lab.peers["alice"], lab.peers["carol"]
    assert wait_ping(lab, "alice", carol["host4"], 5)
    sniff = Sniffer(lab, "carol", [FORGED4, FORGED6])
    # alice forges without pause while her member dies and comes back
    stream = forge_stream(lab)
    try:
        time.sleep(0.5 * TIME_SCALE)
        recreate(lab, alice["member"])
        t0 = time.monotonic()
        daemon.wait_for(f"member {alice['member']} re-created", timeout=5)
        # carol's reply goes out the new device, whose handshake then
        # brings alice's session back
        assert wait_ping(lab, "carol", alice["host4"], 5)
        healed = time.monotonic() - t0
        assert wait_ping(lab, "alice", carol["host4"], 5)
        before = lab.status()["counters"]["spoofed"]
        time.sleep(1.0 * TIME_SCALE)
        assert lab.status()["counters"]["spoofed"] > before, "the new member does not check sources"
    finally:
        stream.kill()
        stream.wait()
    assert sniff.count() == 0, "a forged source reached carol"
    assert healed < 5 * TIME_SCALE
    deadline = time.monotonic() + 3 * TIME_SCALE
    while (lab.status().get("daemon") or {}).get("rehooks", 0) < 1:  # counted, for monitoring
        assert time.monotonic() < deadline, "the re-hook is not counted in the daemon's status"
        time.sleep(0.1)
    assert " re-hooks" in lab.wgbpf("status", "--front", lab.front).stdout


def test_recreated_front_is_hooked_again(lab, daemon):
    carol, alice = lab.peers["carol"], lab.peers["alice"]
    recreate(lab, lab.front)
    daemon.wait_for(f"front {lab.front} re-created", timeout=5)
    lab.route_by_tag()  # the kernel removed them with the old device; BIRD would re-add them
    assert wait_ping(lab, "carol", alice["host4"], 5)
    assert wait_ping(lab, "alice", carol["host6"], 5)


def test_filters_deleted_under_the_daemon_are_put_back(lab, daemon):
    """`tc qdisc del ... clsact` on a member (or the front) takes wgbpf's
    filters with it: the member's traffic is dropped meanwhile (fail closed)
    and the daemon hooks it again at once."""
    alice, carol = lab.peers["alice"], lab.peers["carol"]
    for dev in (alice["member"], lab.front):
        assert run("tc", "-n", lab.hub, "qdisc", "del", "dev", dev, "clsact").returncode == 0
        daemon.wait_for(f"{dev} lost wgbpf's filter", timeout=5)
        assert wait_ping(lab, "alice", carol["host4"], 5)
    r = lab.wgbpf("status", "--check", "--front", lab.front, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


MARTIANS = {
    "martian_local": ["10.255.0.254", "fd00:ff::1"],     # the hub's own (front) addresses
    "martian_loopback": ["127.0.0.1", "::1"],
    "martian_unspec": ["0.1.2.3", "::"],      # (a zero source the kernel fills in)
    "martian_multicast": ["224.0.0.9", "ff05::2"],
    "martian_reserved": ["240.0.0.1", "255.255.255.255"],
    "martian_mapped": ["::ffff:10.2.0.1", "::10.2.0.1"],
}


def test_upstream_peer_cannot_source_martians(lab, daemon):
    """alice owns the default routes (she is the upstream), so any ordinary
    source from her passes the strict check; martians still do not."""
    lab.ip("route", "replace", "default", "via", lab.peers["alice"]["tag4"], "dev", lab.front, "onlink")
    lab.ip("-6", "route", "replace", "default", "via", lab.peers["alice"]["tag6"], "dev", lab.front)
    try:
        deadline = time.monotonic() + 5 * TIME_SCALE
        while "0.0.0.0/0" not in {r["prefix"] for r in lab.dump()["routes"]}:
            assert time.monotonic() < deadline, "the default route never reached the maps"
            time.sleep(0.05)
        sources = [a for addrs in MARTIANS.values() for a in addrs]
        before = lab.status()["counters"]
        sniff = Sniffer(lab, "carol", sources)
        send_forged(lab, "alice", sources, n=5)
        time.sleep(1.0 * TIME_SCALE)
        assert sniff.count() == 0, "a martian source reached carol"
        after = lab.status()["counters"]
        for reason, addrs in MARTIANS.items():
            assert after[reason] - before[reason] >= 5 * len(addrs), (reason, before[reason], after[reason])
        # and an ordinary source under the default route still passes
        assert lab.ping("alice", lab.peers["carol"]["host4"], count=2)
    finally:
        run("ip", "-n", lab.hub, "route", "del", "default")
        run("ip", "-n", lab.hub, "-6", "route", "del", "default")


def test_a_peer_removed_stays_hooked_and_dropping_until_it_comes_back(lab, daemon):
    """Issue 32: carol removed from the instance (an attach or a reload with
    fewer peers). Her member stays hooked: what she sends reaches nobody
    and is counted as from an unknown member, until she is added back.
    Detach then removes that filter too."""
    carol, alice = lab.peers["carol"], lab.peers["alice"]
    assert wait_ping(lab, "carol", alice["host4"], 5)
    out = lab.attach(["alice", "bob"])
    assert "peer carol removed" in out.stdout
    try:
        tc = run("tc", "-n", lab.hub, "filter", "show", "dev", carol["member"], "ingress").stdout
        assert f"wgbpf-{lab.front}" in tc, "the departed peer's member was unhooked"
        before, tx = lab.status()["counters"]["unknown_member"], lab.peer("alice")["tx_packets"]
        sniff = Sniffer(lab, "alice", [carol["host4"]])
        assert not lab.ping("carol", alice["host4"], count=3, interval="0.2")
        assert lab.status()["counters"]["unknown_member"] - before >= 3
        assert sniff.count() == 0 and lab.peer("alice")["tx_packets"] == tx
    finally:
        lab.attach()
    assert wait_ping(lab, "carol", alice["host4"], 5)  # back: hooked as a member again
    lab.attach(["alice", "bob"])
    lab.wgbpf("detach", lab.front)
    try:
        for p in lab.peers.values():
            for hook in ("ingress", "egress"):
                tc = run("tc", "-n", lab.hub, "filter", "show", "dev", p["member"], hook).stdout
                assert "wgbpf" not in tc, f"detach left a filter on {p['member']} {hook}"
    finally:
        lab.attach()

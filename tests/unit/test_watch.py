# SPDX-License-Identifier: GPL-2.0-or-later
"""`wgbpf top` and `wgbpf monitor` output, from samples and events made up
here (the BPF tier and tests/e2e/test_monitor.py check them on real ones)."""
import ipaddress
import socket

from wgbpf import abi, monitor, top


def sample(**peer):
    row = {"name": "alice", "member": "wg-alice", "state": "up", "liveness": None,
           "handshake_age": 12.0, "prefixes": 3, "tx_pps": 1500.0, "tx_bps": 12_345_678.0,
           "rx_pps": 0.0, "rx_bps": 0.0, "spoofed_ps": 2.0}
    row.update(peer)
    drops = {r.name.lower(): {"per_second": 0.0, "total": 0} for r in top.DROPS}
    drops["spoofed"] = {"per_second": 2.0, "total": 40}
    return {"front": "wg0", "interval": 1.0, "time": 0.0, "daemon": None, "peers": [row], "drops": drops}


def test_top_lines_show_the_table_and_drops():
    out = top.lines(sample())
    assert out[0].startswith("wgbpf top: wg0  1 peers  daemon not running")
    assert out[2].split() == top.HEADERS
    assert out[3].split() == ["alice", "wg-alice", "up", "-", "12s", "3", "1.5k", "12.3M", "0", "0", "2"]
    assert "drops/s: spoofed 2/s" in out and "drops total: spoofed 40" in out


def test_top_lines_without_prefixes_handshake_or_liveness():
    row = top.lines(sample(prefixes=None, handshake_age=None, liveness="dead", state="down"))[3].split()
    assert row[2:6] == ["down", "dead", "-", "-"]


def test_drops_are_the_reasons_that_drop():
    names = {r.name.lower() for r in top.DROPS}
    assert {"spoofed", "no_route", "peer_down", "malformed", "unvetted", "martian_local"} <= names
    assert not names & {"steered", "flooded", "passed", "passed_loose"}


def test_liveness_from_the_daemon_status():
    assert top.liveness(None) == {}
    assert top.liveness({"liveness": {"alice": {"state": "dead", "reason": "silent"},
                                      "bob": {"state": "alive"}}}) == {"alice": "dead", "bob": "alive"}


def test_age_and_si():
    assert [top.age(x) for x in (None, 5, 600, 36000)] == ["-", "5s", "10m", "10h"]
    assert [top.si(x) for x in (0, 999, 1000, 2.5e6, 3e9)] == ["0", "999", "1.0k", "2.5M", "3.0G"]


class FakeNames:
    def device(self, ifindex):
        return "wg-alice"

    def peer(self, pid):
        return "alice" if pid else None


def event(src, dst, proto=17, reason=abi.Reason.SPOOFED, dropped=1):
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    e = abi.Event(time=2_000_000_000, ifindex=7, peer=1, reason=reason, len=84,
                  family=abi.AF_INET if a.version == 4 else abi.AF_INET6,
                  hook=abi.Hook.MEMBER_INGRESS, dropped=dropped, proto=proto,
                  sport=socket.htons(40000) if proto else 0, dport=socket.htons(53) if proto else 0)
    e.src[:len(a.packed)] = list(a.packed)
    e.dst[:len(b.packed)] = list(b.packed)
    return e


def test_monitor_event_as_json_and_line():
    d = monitor.describe(event("10.2.0.9", "10.1.0.1"), FakeNames(), 100.0)
    assert d == {"time": 102.0, "device": "wg-alice", "hook": "member_ingress", "src": "10.2.0.9",
                 "dst": "10.1.0.1", "proto": "udp", "sport": 40000, "dport": 53, "len": 84,
                 "peer": "alice", "reason": "spoofed", "dropped": True}
    assert monitor.line(d).split()[1:] == ["wg-alice", "10.2.0.9:40000", ">", "10.1.0.1:53", "udp",
                                           "len", "84", "peer", "alice", "spoofed", "dropped"]


def test_monitor_line_ipv6_without_ports():
    d = monitor.describe(event("2001:db8::9", "2001:db8::1", proto=0, reason=abi.Reason.STEERED, dropped=0),
                         FakeNames(), 0.0)
    assert (d["proto"], d["sport"], d["reason"]) == (None, None, "steered")
    assert monitor.line(d).split()[1:5] == ["wg-alice", "2001:db8::9", ">", "2001:db8::1"]
    assert monitor.line(d).endswith("steered passed")

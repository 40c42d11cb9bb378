# SPDX-License-Identifier: GPL-2.0-or-later
"""wgbpf/maps.py and wgbpf/routemaps.py without a kernel: prefixes, route
values, keys, and the Maps and Tries methods whose logic sits around bpf(2)
(bpfsys is faked)."""
import ctypes
import ipaddress

import pytest
from hypothesis import given, strategies as st

from wgbpf import abi, maps, routemaps, setmaps
from wgbpf.maps import Maps
from wgbpf.routemaps import make_route, network

N = ipaddress.ip_network


@pytest.mark.parametrize("text, want", [
    ("10.0.0.0/8", "10.0.0.0/8"),
    ("10.1.2.3/8", "10.0.0.0/8"),          # host bits cleared
    ("10.1.2.3/31", "10.1.2.2/31"),
    ("10.0.0.1", "10.0.0.1/32"),           # an address is a host route
    ("10.0.0.1/32", "10.0.0.1/32"),
    ("0.0.0.0/0", "0.0.0.0/0"),
    ("192.168.77.200/0", "0.0.0.0/0"),
    ("2001:db8::1/32", "2001:db8::/32"),
    ("2001:db8::1", "2001:db8::1/128"),
    ("FE80::1/10", "fe80::/10"),
    ("::/0", "::/0"),
    ("::ffff:10.0.0.1/128", "::ffff:a00:1/128"),
])
def test_network_normalises(text, want):
    got = network(text)
    assert got == N(want)
    # as this Python writes it: 3.13 (Debian 13) writes IPv4-mapped addresses dotted
    assert str(got) == str(N(want))


@pytest.mark.parametrize("text", ["", "10.0.0.0/33", "10.0.0.256/8", "10.0.0/8x", "2001:db8::/129",
                                  "fe80::1/-1", "alice", "10.0.0.0/8/8", " 10.0.0.0/8", "10.0.0.0 /8"])
def test_network_bad(text):
    with pytest.raises(ValueError) as e:
        network(text)
    assert repr(text) in str(e.value) and "prefix" in str(e.value)


@given(st.one_of(st.ip_addresses(v=4).map(lambda a: (a, 32)), st.ip_addresses(v=6).map(lambda a: (a, 128)))
       .flatmap(lambda ap: st.tuples(st.just(ap[0]), st.integers(0, ap[1]))))
def test_network_property(addr_plen):
    addr, plen = addr_plen
    net = network(f"{addr}/{plen}")
    assert net.prefixlen == plen and addr in net
    assert network(str(net)) == net  # idempotent


@pytest.mark.parametrize("prefix, sid, origin", [
    ("10.0.0.0/8", 1, abi.Origin.STATIC),
    ("10.255.0.1/32", abi.OPERATOR_SETS, abi.Origin.TAG),
    ("2001:db8::/32", 0, abi.Origin.KERNEL),
    ("::/0", abi.MAX_SETS - 1, abi.Origin.STATIC),
])
def test_make_route(prefix, sid, origin):
    net = N(prefix)
    r = make_route(net, sid, origin)
    assert isinstance(r, abi.Route)
    assert (r.set, r.origin, r.prefixlen, r.pad) == (sid, origin, net.prefixlen, 0)


@pytest.mark.parametrize("prefix", ["10.1.0.0/16", "0.0.0.0/0", "255.255.255.255/32", "2001:db8:1::/48", "::/0",
                                    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"])
def test_key_round_trip(prefix):
    net = N(prefix)
    k = routemaps._key(net)
    assert isinstance(k, abi.Key4 if net.version == 4 else abi.Key6)
    assert k.prefixlen == net.prefixlen
    assert bytes(k.addr) == net.network_address.packed
    assert routemaps._net(k, net.version) == net


def test_tag_key():
    t = maps._tag_key(ipaddress.ip_address("10.255.0.1"))
    assert t.family == abi.AF_INET and bytes(t.addr) == bytes([10, 255, 0, 1]) + bytes(12)
    t = maps._tag_key(ipaddress.ip_address("fe80::1"))
    assert t.family == abi.AF_INET6 and bytes(t.addr) == ipaddress.ip_address("fe80::1").packed


# -- Maps with bpfsys faked ----------------------------------------------------------

class FakeBpf:
    """Stands in for bpfsys: one dict per fd, keys/values as bytes."""

    def __init__(self):
        self.maps = {}
        self.lpm = set()
        self.arrays = set()

    def update(self, fd, key, value, flags=0):
        self.maps.setdefault(fd, {})[bytes(key)] = bytes(value)

    def delete(self, fd, key):
        return self.maps.get(fd, {}).pop(bytes(key), None) is not None

    def lookup(self, fd, key, value):
        table = self.maps.get(fd, {})
        if fd in self.lpm:  # longest prefix match, like BPF_MAP_TYPE_LPM_TRIE
            plen = int.from_bytes(bytes(key)[:4], "little")
            addr = bytes(key)[4:]
            best = None
            for k, v in table.items():
                kp = int.from_bytes(k[:4], "little")
                if kp <= plen and (best is None or kp > best[0]):
                    bits = "".join(f"{b:08b}" for b in addr)
                    kbits = "".join(f"{b:08b}" for b in k[4:])
                    if bits[:kp] == kbits[:kp]:
                        best = (kp, v)
            if best is None:
                return False
            ctypes.memmove(ctypes.addressof(value), best[1], len(best[1]))
            return True
        if bytes(key) not in table:
            if fd not in self.arrays:
                return False
            table = {bytes(key): bytes(ctypes.sizeof(value))}  # an array holds every index: zeros
        data = table[bytes(key)]
        ctypes.memmove(ctypes.addressof(value), data, len(data))
        return True

    def lookup_batch(self, fd, key_type, value_type, chunk=4096):
        for k, v in sorted(self.maps.get(fd, {}).items()):
            yield key_type.from_buffer_copy(k), value_type.from_buffer_copy(v)

    def read_array(self, fd, first, count, size):
        table = self.maps.get(fd, {})
        return b"".join(table.get(i.to_bytes(4, "little"), bytes(size)) for i in range(first, first + count))

    def lookup_batch_raw(self, fd, key_size, value_size, chunk=8192, after=None):
        items = sorted(self.maps.get(fd, {}).items())
        if items:
            yield (b"".join(k for k, _ in items), b"".join(v for _, v in items), len(items))

    def next_key(self, fd, key, out):
        keys = sorted(self.maps.get(fd, {}))
        after = [k for k in keys if key is None or k > bytes(key)]
        if not after:
            return False
        ctypes.memmove(ctypes.addressof(out), after[0], len(after[0]))
        return True


@pytest.fixture
def fake(monkeypatch):
    f = FakeBpf()
    for name in ("update", "delete", "lookup", "lookup_batch", "next_key", "read_array", "lookup_batch_raw"):
        monkeypatch.setattr(maps.bpfsys, name, getattr(f, name))
    monkeypatch.setattr(maps.bpfsys, "possible_cpus", lambda: 2)
    fds = {name: 100 + i for i, name in enumerate(abi.MAPS)}
    f.lpm = {fds["routes4"], fds["routes6"]}
    f.arrays = {fds["sets"]}
    return f, Maps("/nowhere", fds)


@pytest.mark.parametrize("n", [0, abi.MAX_ECMP + 1, 20])
def test_set_route_bounds(fake, n):
    f, m = fake
    with pytest.raises(ValueError) as e:
        m.tries.set_route(N("10.0.0.0/8"), list(range(1, n + 1)), abi.Origin.STATIC)
    assert "10.0.0.0/8" in str(e.value) and str(n) in str(e.value)
    assert f.maps == {}


@pytest.mark.parametrize("n", [1, 2, abi.MAX_ECMP])
def test_set_route_writes_the_family_map(fake, n):
    f, m = fake
    for prefix in ("10.1.0.0/16", "2001:db8::/32"):
        net = N(prefix)
        m.tries.set_route(net, list(range(1, n + 1)), abi.Origin.STATIC)
        fd = m.fds[f"routes{net.version}"]
        (k, v), = f.maps[fd].items()
        assert k == bytes(routemaps._key(net))
        r = abi.Route.from_buffer_copy(v)
        assert m.route_peers(r) == list(range(1, n + 1)) and r.prefixlen == net.prefixlen
        assert r.set >= abi.OPERATOR_SETS  # the operator's ids: the daemon never takes them


def test_lookup_and_get_route(fake):
    f, m = fake
    m.tries.set_route(N("10.0.0.0/8"), [1], abi.Origin.STATIC)
    m.tries.set_route(N("10.1.0.0/16"), [2, 3], abi.Origin.KERNEL)
    net, r = m.tries.lookup(ipaddress.ip_address("10.1.2.3"))
    assert net == N("10.1.0.0/16") and m.route_peers(r) == [2, 3]
    net, r = m.tries.lookup(ipaddress.ip_address("10.9.9.9"))
    assert net == N("10.0.0.0/8") and m.route_peers(r) == [1]
    assert m.tries.lookup(ipaddress.ip_address("192.0.2.1")) is None
    assert m.tries.lookup(ipaddress.ip_address("2001:db8::1")) is None
    # exact prefix only: 10.2.0.0/16 falls in 10.0.0.0/8 but has no entry of its own
    assert m.tries.get_route(N("10.2.0.0/16")) is None
    assert m.route_peers(m.tries.get_route(N("10.1.0.0/16"))) == [2, 3]
    assert m.tries.del_route(N("10.1.0.0/16")) is True
    assert m.tries.del_route(N("10.1.0.0/16")) is False


def test_counters_sum_over_cpus(fake):
    f, m = fake
    fd = m.fds["counters"]
    for r in abi.Reason:
        # two CPUs, each value padded to 8 bytes
        f.maps.setdefault(fd, {})[bytes(ctypes.c_uint32(r))] = \
            bytes(ctypes.c_uint64(r + 1)) + bytes(ctypes.c_uint64(10 * (r + 1)))
    assert m.counters() == {r: 11 * (r + 1) for r in abi.Reason}


def test_peer_stats_sum_over_cpus(fake):
    f, m = fake
    a = abi.PeerStats(tx_packets=1, tx_bytes=100, rx_packets=2, rx_bytes=200, spoofed=3)
    b = abi.PeerStats(tx_packets=10, tx_bytes=1000, rx_packets=20, rx_bytes=2000, spoofed=30)
    f.maps[m.fds["peer_stats"]] = {bytes(ctypes.c_uint32(5)): bytes(a) + bytes(b)}
    s = m.peer_stats(5)
    assert (s.tx_packets, s.tx_bytes, s.rx_packets, s.rx_bytes, s.spoofed) == (11, 1100, 22, 2200, 33)


def test_peers_lists_used_slots(fake):
    f, m = fake
    m.set_config(abi.Config(front_ifindex=7))
    m.set_peer(1, abi.Peer(ifindex=11, flags=abi.PEER_UP, name=b"alice"))
    m.set_peer(3, abi.Peer(ifindex=13, name=b"carol"))
    m.set_peer(5, abi.Peer(ifindex=15, flags=abi.PEER_UP, name=b"eve"))
    peers = m.peers()
    assert sorted(peers) == [1, 3, 5]
    assert peers[1].name == b"alice" and peers[1].flags & abi.PEER_UP
    m.clear_peer(3)
    assert sorted(m.peers()) == [1, 5]
    # the flood list holds the members that are up, densely
    m.rebuild_flood()
    assert m.config().flood_count == 2
    flood = abi.Flood()
    assert maps.bpfsys.lookup(m.fds["flood"], ctypes.c_uint32(1), flood) and (flood.ifindex, flood.peer) == (15, 5)


def test_tags_members_and_the_guard_by_key_walk(fake):
    """The hash maps, read by next_key: tags on Maps, locals and
    forwarders on its guard (m.guard), each in its own map."""
    f, m = fake
    a4, a6 = ipaddress.ip_address("10.255.0.1"), ipaddress.ip_address("fe80::1")
    m.set_tag(a4, 1)
    m.set_tag(a6, 2)
    m.set_member(11, 1)
    m.guard.set_local(ipaddress.ip_address("192.0.2.1"), 5)
    m.guard.set_forwarder(7)
    m.guard.set_forwarder(8)
    assert m.tags() == {a4: 1, a6: 2} and m.members() == {11: 1}
    assert m.guard.locals() == {ipaddress.ip_address("192.0.2.1"): 5}
    assert m.guard.forwarders() == {7, 8}
    assert m.del_tag(a6) is True and m.del_tag(a6) is False and m.tags() == {a4: 1}
    assert m.guard.del_forwarder(7) is True and m.guard.forwarders() == {8}
    assert m.guard.del_local(ipaddress.ip_address("192.0.2.1")) is True and m.guard.locals() == {}


def test_check_layout(monkeypatch):
    class Info:
        type, key_size, value_size = abi.LPM_TRIE, ctypes.sizeof(abi.Key4), ctypes.sizeof(abi.Route)
    monkeypatch.setattr(maps.bpfsys, "map_info", lambda fd: Info)
    maps._check_layout("/p/routes4", 3, abi.MAPS["routes4"])
    with pytest.raises(maps.MapError) as e:
        maps._check_layout("/p/routes6", 3, abi.MAPS["routes6"])
    assert "/p/routes6" in str(e.value) and "wgbpf detach" in str(e.value)


def test_instances(tmp_path, monkeypatch):
    monkeypatch.setattr(maps, "PIN_ROOT", str(tmp_path / "wgbpf"))
    assert maps.instances() == [] and maps.all_instances() == []
    here = tmp_path / "wgbpf" / str(maps.netns_id())
    (here / "wg1").mkdir(parents=True)
    (here / "wg0").mkdir()
    (here / "stray-file").write_text("")
    (tmp_path / "wgbpf" / "7" / "wg0").mkdir(parents=True)  # another namespace's wg0
    assert maps.instances() == ["wg0", "wg1"]
    assert maps.instances(7) == ["wg0"]
    assert maps.all_instances() == sorted([(maps.netns_id(), "wg0"), (maps.netns_id(), "wg1"), (7, "wg0")])
    assert maps.pin_dir("wg0") == str(here / "wg0")
    assert maps.pin_dir("wg0", 7) == str(tmp_path / "wgbpf" / "7" / "wg0")


def test_route_value_is_the_route_struct():
    v = routemaps.route_value(0x7abc, 24)
    r = abi.Route.from_buffer_copy(v)
    assert (r.set, r.origin, r.prefixlen) == (0x7abc, abi.Origin.KERNEL, 24)
    assert routemaps.value_set(v) == 0x7abc
    assert v[routemaps.ORIGIN_AT] == abi.Origin.KERNEL and v[routemaps.PLEN_AT] == 24


def test_same_set_same_id_and_the_ids_are_reused_once_no_route_names_them(fake):
    """The operator's sets are interned by content; when all are taken,
    those no route names are freed, and a set too many is a clear error."""
    f, m = fake
    a = m.sets.operator_id((1, 2))
    assert m.sets.operator_id((1, 2)) == a and m.sets.operator_id((1, 2), (3, 1)) != a
    assert m.sets.operator_id(()) == 0
    m.tries.set_route(N("10.0.0.0/8"), [1, 2], abi.Origin.STATIC)
    assert m.tries.get_route(N("10.0.0.0/8")).set == a
    for i in range(abi.OPERATOR_SETS, abi.MAX_SETS):  # the rest of the range, each named by no route
        if i not in (a, a + 1):
            m.sets.write(i, setmaps.pack((3, 4 + i), None, abi.SetKind.INTERNED))
    b = m.sets.operator_id((9,))  # full: the unnamed ones freed first
    assert m.sets.members(b) == (9,) and m.sets.members(a) == (1, 2)


def test_read_ahead_yields_in_order_passes_errors_and_stops_with_its_caller():
    import itertools
    import threading

    from wgbpf.routemaps import read_ahead
    assert list(read_ahead(iter(range(100)), depth=3)) == list(range(100))

    def failing():
        yield 1
        raise OSError(5, "the read failed")
    with pytest.raises(OSError, match="the read failed"):
        list(read_ahead(failing()))
    g = read_ahead(itertools.count(), depth=2)
    assert [next(g), next(g)] == [0, 1]
    g.close()  # a caller that leaves early: the thread ends with it
    assert not [t for t in threading.enumerate() if t.name == "wgbpf-read-ahead"]

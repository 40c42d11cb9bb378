# SPDX-License-Identifier: GPL-2.0-or-later
"""Property tests: the kernel's longest-prefix match, as the data plane uses
it, against a pure-Python reference.

Hypothesis draws a set of prefixes (IPv4 or IPv6, random lengths, nested
and sibling prefixes encouraged, a handful to ~50 of them over four peers,
mostly single-peer sets and some ECMP sets), writes them into the routes
map of one instance (loaded once for the module), then probes addresses
biased to fall inside, on the edges of, and just outside the prefixes:

  front_egress   the peer whose tx counter moved is the reference's answer
                 (for an ECMP set: one of its peers); no match is no_route;
                 ff02::/16 and 224.0.0.0/24 are flooded whatever the routes.
  member_ingress a random member accepts a random source iff the reference
                 says its peer owns it (longest match's set holds the peer;
                 a link-local source only by the peer's own tag).
  Maps.lookup    the prefix and set the map lookup returns are the
                 reference's.
  source modes   strict/feasible/loose/off with an accept table drawn too:
                 the reason member_ingress counts is the reference's.
  DIR-24-8       IPv4 again on an instance in DIR-24-8 mode, the arrays
                 compiled per prefix (as the daemon) or rebuilt (as the CLI).

The routes written by an example are deleted after it; the tag host routes
attach made stay, and are part of the reference.
"""
import ipaddress

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from wgbpf import abi

import packets as P
from bpflab import PeerSpec

pytestmark = pytest.mark.root

PEERS = ("alice", "bob", "carol", "dave")
TAGS = {"alice": ("169.254.1.1", "fe80::a"), "bob": ("fe80::b", "169.254.1.2")}
SETTINGS = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# DIR-24-8 examples compile 32 MiB arrays (a rebuild is ~0.2 s): fewer of
# them, and no shrinking (it would replay examples for minutes; the
# assertion names the address and the reference's answer anyway)
SETTINGS_DIR24 = settings(SETTINGS, max_examples=25,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
PROBES = 30


_N = ipaddress.ip_network
# Martian sources by class, written as networks (the C side tests bits).
MARTIANS = [("martian_unspec", _N("0.0.0.0/8")), ("martian_unspec", _N("::/128")),
            ("martian_loopback", _N("127.0.0.0/8")), ("martian_loopback", _N("::1/128")),
            ("martian_multicast", _N("224.0.0.0/4")), ("martian_multicast", _N("ff00::/8")),
            ("martian_reserved", _N("240.0.0.0/4")),
            ("martian_mapped", _N("::ffff:0:0/96")), ("martian_mapped", _N("::/96"))]


def martian(addr, local=()):
    """The martian reason of a source address, or None."""
    for reason, net in MARTIANS:
        if addr.version == net.version and addr in net:
            return reason
    return "martian_local" if addr in local else None


class ReferenceLPM:
    """dict of ip_network -> tuple of peers; longest match by trying every
    prefix length from the longest down."""

    def __init__(self, routes, tags, local=()):
        self.routes = dict(routes)
        self.tags = dict(tags)       # ip_address -> peer
        self.local = set(local)      # the host's addresses: martian sources

    def lookup(self, addr):
        for plen in range(addr.max_prefixlen, -1, -1):
            net = ipaddress.ip_network((addr, plen), strict=False)
            if net in self.routes:
                return net, self.routes[net]
        return None

    @staticmethod
    def link_local_multicast(addr):
        if addr.version == 4:
            return addr in ipaddress.ip_network("224.0.0.0/24")
        return addr in ipaddress.ip_network("ff02::/16")

    @staticmethod
    def link_local(addr):
        return addr in ipaddress.ip_network("169.254.0.0/16" if addr.version == 4 else "fe80::/10")

    def owns(self, peer, src):
        if martian(src, self.local):
            return False
        if self.link_local(src):
            return self.tags.get(src) == peer
        hit = self.lookup(src)
        return hit is not None and peer in hit[1]

    def source_check(self, peer, src, mode, accept):
        """The reason member_ingress counts, by mode (wgbpf.h's
        wgbpf_source); `accept` is the ReferenceLPM of the accept table."""
        if mode != abi.Source.OFF and martian(src, self.local):
            return martian(src, self.local)
        if self.link_local(src):
            return "passed" if self.tags.get(src) == peer else "spoofed"
        if mode == abi.Source.OFF:
            return "passed_unchecked"
        hit = self.lookup(src)
        if hit is not None and peer in hit[1]:
            return "passed"
        if mode == abi.Source.FEASIBLE:
            a = accept.lookup(src)
            if a is not None and peer in a[1]:
                return "passed_feasible"
        if mode == abi.Source.LOOSE and hit is not None:
            return "passed_loose"
        return "spoofed"


def test_reference_lpm_itself():
    """The reference, on a hand-made table."""
    n = ipaddress.ip_network
    ref = ReferenceLPM({n("10.0.0.0/8"): ("a",), n("10.1.0.0/16"): ("b",),
                        n("0.0.0.0/0"): ("c",), n("10.1.2.3/32"): ("a", "b")},
                       {ipaddress.ip_address("169.254.0.1"): "a"})
    a = ipaddress.ip_address
    assert ref.lookup(a("10.1.2.3")) == (n("10.1.2.3/32"), ("a", "b"))
    assert ref.lookup(a("10.1.2.4")) == (n("10.1.0.0/16"), ("b",))
    assert ref.lookup(a("10.2.0.0")) == (n("10.0.0.0/8"), ("a",))
    assert ref.lookup(a("11.0.0.0")) == (n("0.0.0.0/0"), ("c",))
    assert ReferenceLPM({}, {}).lookup(a("::1")) is None
    assert ref.owns("a", a("169.254.0.1")) and not ref.owns("c", a("169.254.0.1"))
    assert not ref.owns("c", a("169.254.0.2"))   # link-local: the route does not count
    assert ref.owns("b", a("10.1.2.3")) and not ref.owns("c", a("10.1.2.3"))


# -- the instance -------------------------------------------------------------------
@pytest.fixture(scope="module")
def inst(bpf_lab):
    """One instance for the whole module; no member has a carrier, so a
    flood counts no tx (clone_redirect fails on a carrier-less TUN)."""
    return bpf_lab.attach([PeerSpec(p, TAGS.get(p, ()), carrier=False) for p in PEERS])


def base_routes(inst, version, trie="routes"):
    return {net: tuple(inst.names[i] for i in inst.maps.route_peers(r))
            for net, r in inst.maps.tries.routes(version, trie)}


def tag_map(version):
    return {ipaddress.ip_address(t): p for p, ts in TAGS.items() for t in ts
            if ipaddress.ip_address(t).version == version}


# -- strategies ---------------------------------------------------------------------
def peer_sets():
    single = st.sampled_from(PEERS).map(lambda p: (p,))
    multi = st.lists(st.sampled_from(PEERS), min_size=2, max_size=3, unique=True).map(tuple)
    return st.integers(0, 9).flatmap(lambda k: single if k < 7 else multi)


@st.composite
def route_tables(draw, version):
    """{ip_network: peers}: 1 to ~50 prefixes grown from up to 4 base
    addresses (so they nest), some with one bit flipped (siblings)."""
    bits = 32 if version == 4 else 128
    bases = draw(st.lists(st.integers(0, 2 ** bits - 1), min_size=1, max_size=4))
    n = draw(st.integers(1, 50))
    table = {}
    for _ in range(n):
        addr = draw(st.sampled_from(bases))
        plen = draw(st.integers(0, bits))
        if plen and draw(st.booleans()):
            addr ^= 1 << (bits - draw(st.integers(1, plen)))
        net = ipaddress.ip_network((addr, plen), strict=False)
        table[net] = draw(peer_sets())
    return table


def probe(draw, version, table, extra=()):
    """An address: inside a drawn prefix (anywhere, or its first/last),
    just outside one, a tag, or anywhere at all."""
    bits = 32 if version == 4 else 128
    nets = list(table)
    where = draw(st.sampled_from(["inside", "inside", "inside", "edge", "outside", "any", "extra"]))
    if where == "any" or not nets or (where == "extra" and not extra):
        value = draw(st.integers(0, 2 ** bits - 1))
    elif where == "extra":
        return draw(st.sampled_from(list(extra)))
    else:
        net = draw(st.sampled_from(nets))
        first, last = int(net.network_address), int(net.broadcast_address)
        if where == "inside":
            value = draw(st.integers(first, last))
        elif where == "edge":
            value = draw(st.sampled_from([first, last]))
        else:
            value = draw(st.sampled_from([first - 1, last + 1])) % 2 ** bits
    return ipaddress.ip_address(value) if version == 4 else ipaddress.IPv6Address(value)


class Written:
    """Writes a table into the routes (or accept) map; deletes exactly it
    afterwards."""

    def __init__(self, inst, version, table, trie="routes"):
        self.inst, self.version, self.trie = inst, version, trie
        self.base = base_routes(inst, version, trie)
        self.table = {k: v for k, v in table.items() if k not in self.base}
        self.ref = ReferenceLPM({**self.base, **self.table}, tag_map(version), inst.maps.guard.locals())

    def __enter__(self):
        for net, peers in self.table.items():
            self.inst.set_route(net, peers, trie=self.trie)
        return self

    def __exit__(self, *exc):
        for net in self.table:
            self.inst.maps.tries.del_route(net, trie=self.trie)
        assert base_routes(self.inst, self.version, self.trie) == self.base


SPECIALS = {
    4: ["224.0.0.5", "224.0.0.251", "224.0.1.1", "169.254.1.1", "169.254.1.2", "169.254.7.7"],
    6: ["ff02::1:6", "ff02::1", "ff05::1:3", "fe80::a", "fe80::b", "fe80::99"],
}
# sources of every martian class (the host's own addresses: the lab's)
SPECIALS[4] += ["0.0.0.0", "0.1.2.3", "127.0.0.1", "240.0.0.1", "255.255.255.255"]
SPECIALS[6] += ["::", "::1", "::ffff:10.0.0.1", "::10.0.0.1", "ff0e::1"]


@pytest.mark.parametrize("version", [4, 6])
@SETTINGS
@given(data=st.data())
def test_front_egress_matches_reference(inst, version, data):
    table = data.draw(route_tables(version), label="routes")
    src = "192.0.2.1" if version == 4 else "2001:db8::1"
    extra = [ipaddress.ip_address(a) for a in SPECIALS[version]]
    with Written(inst, version, table) as w:
        for i in range(PROBES):
            dst = probe(data.draw, version, w.table, extra)
            retval, d = inst.measure("front_egress", P.udp_frame(src, str(dst), 40000 + i))
            hit = w.ref.lookup(dst)
            where = f"dst {dst}: reference {hit}"
            if w.ref.link_local_multicast(dst):
                assert retval == P.TC_ACT_SHOT, where
                assert {k: v for k, v in d.items() if not k.startswith("tx:")} == {"flooded": 1}, where
            elif hit is None:
                assert (retval, d) == (P.TC_ACT_OK, {"no_route": 1}), where
            else:
                tx = [k[3:] for k in d if k.startswith("tx:")]
                assert retval == P.TC_ACT_REDIRECT, (where, d)
                assert len(tx) == 1 and d == {"steered": 1, f"tx:{tx[0]}": 1}, (where, d)
                assert tx[0] in hit[1], (where, d)
                if len(hit[1]) == 1:
                    assert tx[0] == hit[1][0], (where, d)


@pytest.mark.parametrize("version", [4, 6])
@SETTINGS
@given(data=st.data())
def test_member_ingress_matches_reference(inst, version, data):
    table = data.draw(route_tables(version), label="routes")
    dst = "192.0.2.1" if version == 4 else "2001:db8::1"
    extra = [ipaddress.ip_address(a) for a in SPECIALS[version]]
    with Written(inst, version, table) as w:
        for i in range(PROBES):
            src = probe(data.draw, version, w.table, extra)
            peer = data.draw(st.sampled_from(PEERS))
            retval, d = inst.measure("member_ingress", P.udp_frame(str(src), dst, 40000 + i), via=peer)
            where = f"src {src} from {peer}: reference {w.ref.lookup(src)}"
            if w.ref.owns(peer, src):
                assert (retval, d) == (P.TC_ACT_REDIRECT, {"passed": 1, f"rx:{peer}": 1}), where
            elif martian(src, w.ref.local):
                assert (retval, d) == (P.TC_ACT_SHOT, {martian(src, w.ref.local): 1,
                                                       f"spoofed:{peer}": 1}), where
            else:
                assert (retval, d) == (P.TC_ACT_SHOT, {"spoofed": 1, f"spoofed:{peer}": 1}), where


@pytest.mark.parametrize("version", [4, 6])
@SETTINGS
@given(data=st.data())
def test_map_lookup_matches_reference(inst, version, data):
    table = data.draw(route_tables(version), label="routes")
    with Written(inst, version, table) as w:
        for _ in range(PROBES):
            addr = probe(data.draw, version, w.table)
            got = inst.maps.tries.lookup(addr)
            want = w.ref.lookup(addr)
            if want is None:
                assert got is None, addr
            else:
                net, route = got
                assert (net, tuple(inst.names[i] for i in inst.maps.route_peers(route))) == want, addr
                assert route.prefixlen == want[0].prefixlen
                assert route.origin in (abi.Origin.STATIC, abi.Origin.TAG)


@pytest.mark.parametrize("version", [4, 6])
@SETTINGS
@given(data=st.data())
def test_member_ingress_source_modes_match_reference(inst, version, data):
    """Every source check mode (set in the config, so it applies to every
    peer) against the reference, with an accept table drawn as well: the
    reason counted must be the reference's."""
    table = data.draw(route_tables(version), label="routes")
    accept = data.draw(route_tables(version), label="accept")
    mode = data.draw(st.sampled_from([abi.Source.STRICT, abi.Source.FEASIBLE,
                                      abi.Source.LOOSE, abi.Source.OFF]), label="mode")
    dst = "192.0.2.1" if version == 4 else "2001:db8::1"
    extra = [ipaddress.ip_address(a) for a in SPECIALS[version]]
    with Written(inst, version, table) as w, Written(inst, version, accept, "accept") as a, \
            inst.settings(source=mode):
        for i in range(PROBES):
            src = probe(data.draw, version, {**w.table, **a.table}, extra)
            peer = data.draw(st.sampled_from(PEERS))
            retval, d = inst.measure("member_ingress", P.udp_frame(str(src), dst, 40000 + i), via=peer)
            want = w.ref.source_check(peer, src, mode, a.ref)
            where = (f"{mode.name} src {src} from {peer}: route {w.ref.lookup(src)}, "
                     f"accept {a.ref.lookup(src)}")
            if want == "spoofed" or want.startswith("martian"):
                assert (retval, d) == (P.TC_ACT_SHOT, {want: 1, f"spoofed:{peer}": 1}), where
            else:
                assert (retval, d) == (P.TC_ACT_REDIRECT, {want: 1, f"rx:{peer}": 1}), where


# -- DIR-24-8 (IPv4) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def inst_dir24(bpf_lab):
    """An instance in DIR-24-8 mode, with a Dir24 compiler over its arrays
    kept in sync the way the daemon keeps it: one rebuild, then changes."""
    inst = bpf_lab.attach([PeerSpec(p, TAGS.get(p, ()), carrier=False) for p in PEERS],
                          lookup=abi.Lookup.DIR24)
    inst.dir24 = inst.maps.dir24.view()
    inst.dir24.rebuild(inst.maps.dir24.ipv4_prefixes())
    return inst


class WrittenDir24(Written):
    """Routes written to routes4 and compiled into the DIR-24-8 arrays,
    either prefix by prefix (Dir24.change, as the daemon) or by a full
    rebuild (as `wgbpf route add`); undone the same way."""

    def __init__(self, inst, table, incremental):
        super().__init__(inst, 4, table)
        self.incremental = incremental

    def __enter__(self):
        super().__enter__()
        if self.incremental:
            for net in self.table:  # the set routes4 names, as the daemon patches it
                self.inst.dir24.change(int(net.network_address), net.prefixlen,
                                       self.inst.maps.tries.get_route(net).set)
        else:
            self.inst.dir24.rebuild(self.inst.maps.dir24.ipv4_prefixes())
        return self

    def __exit__(self, *exc):
        super().__exit__(*exc)
        if self.incremental:
            for net in self.table:
                self.inst.dir24.change(int(net.network_address), net.prefixlen, None)
        else:
            self.inst.dir24.rebuild(self.inst.maps.dir24.ipv4_prefixes())


def dir24_steer_check(inst, ref, dst, i):
    retval, d = inst.measure("front_egress", P.udp_frame("192.0.2.1", str(dst), 40000 + i))
    hit = ref.lookup(dst)
    where = f"dir24: dst {dst}: reference {hit}"
    if ref.link_local_multicast(dst):
        assert retval == P.TC_ACT_SHOT, where
    elif hit is None:
        assert (retval, d) == (P.TC_ACT_OK, {"no_route": 1}), where
    else:
        tx = [k[3:] for k in d if k.startswith("tx:")]
        assert retval == P.TC_ACT_REDIRECT and len(tx) == 1, (where, d)
        assert d == {"steered": 1, f"tx:{tx[0]}": 1} and tx[0] in hit[1], (where, d)


@SETTINGS_DIR24
@given(data=st.data())
def test_dir24_front_egress_matches_reference(inst_dir24, data):
    """DIR-24-8 mode: front_egress steers IPv4 as the reference LPM says,
    with the arrays patched per prefix or rebuilt; once the example's
    prefixes are removed again, addresses under them get the base answer
    (nothing stale is left in the arrays)."""
    inst = inst_dir24
    table = data.draw(route_tables(4), label="routes")
    incremental = data.draw(st.booleans(), label="incremental")
    extra = [ipaddress.ip_address(a) for a in SPECIALS[4]]
    w = WrittenDir24(inst, table, incremental)
    with w:
        for i in range(PROBES):
            dir24_steer_check(inst, w.ref, probe(data.draw, 4, w.table, extra), i)
    base = ReferenceLPM(w.base, tag_map(4))
    for i, net in enumerate(list(w.table)[:10]):
        dir24_steer_check(inst, base, net.network_address + (net.num_addresses - 1) // 2, i)


@SETTINGS_DIR24
@given(data=st.data())
def test_dir24_member_ingress_matches_reference(inst_dir24, data):
    """DIR-24-8 mode: the strict source check of member_ingress reads the
    same arrays, and matches the reference."""
    inst = inst_dir24
    table = data.draw(route_tables(4), label="routes")
    incremental = data.draw(st.booleans(), label="incremental")
    extra = [ipaddress.ip_address(a) for a in SPECIALS[4]]
    with WrittenDir24(inst, table, incremental) as w:
        for i in range(PROBES):
            src = probe(data.draw, 4, w.table, extra)
            peer = data.draw(st.sampled_from(PEERS))
            retval, d = inst.measure("member_ingress", P.udp_frame(str(src), "192.0.2.1", 40000 + i),
                                     via=peer)
            where = f"dir24: src {src} from {peer}: reference {w.ref.lookup(src)}"
            if w.ref.owns(peer, src):
                assert (retval, d) == (P.TC_ACT_REDIRECT, {"passed": 1, f"rx:{peer}": 1}), where
            elif martian(src, w.ref.local):
                assert (retval, d) == (P.TC_ACT_SHOT, {martian(src, w.ref.local): 1,
                                                       f"spoofed:{peer}": 1}), where
            else:
                assert (retval, d) == (P.TC_ACT_SHOT, {"spoofed": 1, f"spoofed:{peer}": 1}), where


def test_dir24_reads_the_arrays_not_routes4(inst_dir24):
    """In DIR-24-8 mode IPv4 is answered from the compiled arrays alone: a
    prefix written to routes4 but not compiled is not seen, and a compiled
    one is; IPv6 is still the LPM trie, seen at once."""
    inst = inst_dir24
    net4, net6 = ipaddress.ip_network("10.77.0.0/16"), ipaddress.ip_network("2001:db8:77::/48")
    v4 = P.udp_frame("192.0.2.1", "10.77.1.1")
    inst.set_route(net4, ["carol"])
    carol = inst.maps.tries.get_route(net4).set
    try:
        assert inst.measure("front_egress", v4) == (P.TC_ACT_OK, {"no_route": 1})
        inst.dir24.change(int(net4.network_address), net4.prefixlen, carol)
        assert inst.measure("front_egress", v4) == (P.TC_ACT_REDIRECT, {"steered": 1, "tx:carol": 1})
        assert inst.measure("member_ingress", P.udp_frame("10.77.1.1", "192.0.2.1"), via="carol") == (
            P.TC_ACT_REDIRECT, {"passed": 1, "rx:carol": 1})
    finally:
        inst.del_route(net4)
        inst.dir24.change(int(net4.network_address), net4.prefixlen, None)
    assert inst.measure("front_egress", v4) == (P.TC_ACT_OK, {"no_route": 1})
    inst.set_route(net6, ["dave"])
    try:
        assert inst.measure("front_egress", P.udp_frame("2001:db8::1", "2001:db8:77::1")) == (
            P.TC_ACT_REDIRECT, {"steered": 1, "tx:dave": 1})
    finally:
        inst.del_route(net6)

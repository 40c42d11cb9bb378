# SPDX-License-Identifier: GPL-2.0-or-later
"""The allowedips backend without a device: the netlink encoding against
its own parser, the change planner against a model of WireGuard's table,
the ECMP pick, the text protocol, and the backend's configuration."""
import base64
import ipaddress
import os
import socket
import struct

import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from wgbpf import allowedips as aip, config, routes as rt, sync, wireguard as wg
from wgbpf.cli import main
from wgbpf.config import ConfigError
from wgbpf.sync import network_pkey

KEYS = [bytes([i]) * 32 for i in range(1, 5)]
AF4 = socket.AF_INET


def pk(text):
    return network_pkey(ipaddress.ip_network(text))


def many(n):
    out = [pk(f"10.{i >> 8}.{i & 255}.0/24") for i in range(n // 2)]
    out += [pk(f"2001:db8:{i:x}::/48") for i in range(n - n // 2)]
    return out


def reparse(nests):
    """Peer nests as a device dump carries them, one message each: a peer
    continues from message to message."""
    out = {}
    for n in nests:
        buf = struct.pack("=HH", 4 + len(n), wg.WGDEVICE_A_PEERS | wg.NLA_F_NESTED) + n
        wg.parse_device(buf, 0, len(buf), out)
    return out


def peer_flags(nest):
    for kind, a, _b in wg.attrs(nest, 4, len(nest)):
        if kind == wg.WGPEER_A_FLAGS:
            return struct.unpack_from("=I", nest, a)[0]


def test_long_list_splits_under_the_attribute_limit_and_only_the_first_replaces():
    prefixes = many(5000)
    nests = wg.encode_peer_chunks(wg.PeerChange(KEYS[0], add=prefixes, replace=True))
    assert len(nests) > 2
    assert all(len(n) <= 0xFFFF for n in nests)
    flags = [peer_flags(n) for n in nests]
    assert flags[0] == wg.WGPEER_F_UPDATE_ONLY | wg.WGPEER_F_REPLACE_ALLOWEDIPS
    assert set(flags[1:]) == {wg.WGPEER_F_UPDATE_ONLY}
    assert reparse(nests) == {KEYS[0]: set(prefixes)}


def test_replace_with_nothing_still_clears():
    nests = wg.encode_peer_chunks(wg.PeerChange(KEYS[0], replace=True))
    assert len(nests) == 1 and peer_flags(nests[0]) & wg.WGPEER_F_REPLACE_ALLOWEDIPS


def test_removal_carries_the_remove_flag_per_allowed_ip():
    nest = wg.encode_peer_chunks(wg.PeerChange(KEYS[0], add=[pk("10.0.0.0/8")], remove=[pk("10.1.0.0/16")]))[0]
    seen = {}
    for kind, a, b in wg.attrs(nest, 4, len(nest)):
        if kind == wg.WGPEER_A_ALLOWEDIPS:
            for _i, x, y in wg.attrs(nest, a, b):
                attrs = {k: bytes(nest[u:v]) for k, u, v in wg.attrs(nest, x, y)}
                seen[attrs[wg.WGALLOWEDIP_A_CIDR_MASK][0]] = attrs.get(wg.WGALLOWEDIP_A_FLAGS)
    assert seen == {8: None, 16: struct.pack("=I", wg.WGALLOWEDIP_F_REMOVE_ME)}


def test_uapi_request_text():
    req = wg.UapiDevice._request([wg.PeerChange(KEYS[0], add=[pk("10.1.0.0/16")], remove=[pk("2001:db8::/32")]),
                                  wg.PeerChange(KEYS[1], add=[pk("10.2.0.0/16")], replace=True)])
    assert req == ("set=1\n"
                   f"public_key={KEYS[0].hex()}\nupdate_only=true\n"
                   "allowed_ip=10.1.0.0/16\nallowed_ip=-2001:db8::/32\n"
                   f"public_key={KEYS[1].hex()}\nupdate_only=true\nreplace_allowed_ips=true\n"
                   "allowed_ip=10.2.0.0/16\n\n")


# -- the planner against a model of the device -------------------------------

PREFIXES = [pk(f"10.0.{i}.0/24") for i in range(12)]
owner_maps = st.dictionaries(st.sampled_from(PREFIXES), st.sampled_from(KEYS))


def device_of(owners):
    peers = {k: set() for k in KEYS}
    for p, key in owners.items():
        peers[key].add(p)
    return aip.Device(peers)


def check_result(dev, want, before, managed):
    for key in KEYS:
        if key in managed:
            assert dev.peers[key] == {p for p, k in want.items() if k == key}
        else:  # an unmanaged peer only loses what a route gives to another
            assert dev.peers[key] == {p for p, k in before.items() if k == key and p not in want}
    assert all(dev.owner[p] == k for p, k in want.items())


@settings(max_examples=300, deadline=None)
@given(before=owner_maps, want=owner_maps, can_remove=st.booleans(), n_managed=st.integers(1, 4))
def test_full_plan_reaches_the_wanted_lists(before, want, can_remove, n_managed):
    managed = set(KEYS[:n_managed])
    want = {p: k for p, k in want.items() if k in managed}
    dev = device_of(before)
    todo = aip.changes(want, dev, managed, can_remove)
    # the device itself: apply the changes to a second model built from scratch
    real = device_of(before)
    for c in todo:
        real.apply(c)
        assert not (c.replace and can_remove), "a removal rewrote a list although single removal works"
        assert not (c.remove and not can_remove), "single removal used where the device lacks it"
    check_result(real, want, before, managed)
    # nothing left to do
    assert aip.changes(want, real, managed, can_remove) == []


@settings(max_examples=200, deadline=None)
@given(start=owner_maps, steps=st.lists(st.tuples(st.sampled_from(PREFIXES), st.sampled_from(KEYS + [None])),
                                        min_size=1, max_size=15), can_remove=st.booleans())
def test_incremental_steps_touch_only_what_changed(start, steps, can_remove):
    managed = set(KEYS[:3])
    want = {p: k for p, k in start.items() if k in managed}
    dev = device_of({})
    for c in aip.changes(want, dev, managed, can_remove):
        dev.apply(c)
    for prefix, key in steps:
        if key is None or key not in managed:
            want.pop(prefix, None)
        else:
            want[prefix] = key
        todo = aip.changes({prefix: want[prefix]} if prefix in want else {}, dev, managed, can_remove,
                           keys={prefix})
        touched = {c.key for c in todo}
        assert len(touched) <= 2  # the old holder and the new, no one else
        for c in todo:
            if not c.replace:
                assert set(c.add) | set(c.remove) <= {prefix}
            dev.apply(c)
        check_result(dev, want, {}, managed)


def test_ecmp_pick_is_the_heaviest_then_the_lowest_tag():
    """Issue 31: AllowedIPs cannot weigh, a prefix goes to one peer: the
    heaviest of the route's, then the one with the lowest tag (IPv4 tags
    before IPv6), whatever the order the set lists them in."""
    lowest = {1: sync.network_pkey(ipaddress.ip_network("10.255.0.3/32")),
              2: sync.network_pkey(ipaddress.ip_network("10.255.0.1/32")),
              3: sync.network_pkey(ipaddress.ip_network("fe80::2/128"))}
    assert aip.pick((1, 2, 3), {}, lowest) == 2                    # equal: the lowest tag
    assert aip.pick((3, 1, 2), {1: 1, 2: 1, 3: 1}, lowest) == 2
    assert aip.pick((1, 2, 3), {1: 3, 2: 1, 3: 1}, lowest) == 1    # the heaviest first
    assert aip.pick((1, 3), {}, lowest) == 1                       # IPv4 before IPv6
    assert aip.pick((3,), {1: 9}, lowest) == 3


def test_a_weighted_route_goes_to_its_heaviest_live_peer():
    """The plan's owner of a 1:3 route is its weight-3 peer; that peer
    dead, the other; equal weights, the lowest tag."""
    peers = [config.PeerConfig("alice", public_key=KEYS[0], tags=["10.255.0.1"]),
             config.PeerConfig("bob", public_key=KEYS[1], tags=["10.255.0.2"])]
    plan = aip.Plan(peers, present={KEYS[0], KEYS[1]})
    t = sync.Table(sync.Tags({socket.inet_aton(f"10.255.0.{i + 1}"): i for i in (0, 1)}, {}, front=5),
                   sync.Filter())
    hops = lambda wa, wb: ((socket.inet_aton("10.255.0.1"), 5) + ((wa,) if wa > 1 else ()),
                           (socket.inet_aton("10.255.0.2"), 5) + ((wb,) if wb > 1 else ()))
    k = t.update(rt.KernelRoute(AF4, bytes((10, 9, 0, 0)), 16, 254, 0, 4, 0, hops(1, 3)))
    assert plan.owner(t, k) == KEYS[1] and k in plan.ecmp
    plan.dead = {KEYS[1]}
    assert plan.owner(t, k) == KEYS[0]
    plan.dead = set()
    t.update(rt.KernelRoute(AF4, bytes((10, 9, 0, 0)), 16, 254, 0, 4, 0, hops(2, 2)))
    assert plan.owner(t, k) == KEYS[0]


def test_absent_prefix_avoids_every_owned_one():
    owned = {KEYS[0]: {bytes((2, 32, 255, 255, 255, i)) for i in range(5)}}
    k = aip.absent_prefix(owned)
    assert k not in owned[KEYS[0]] and k[1] == 32


# -- configuration -------------------------------------------------------------

KEY_TEXT = base64.b64encode(bytes(range(32))).decode()


def test_peer_by_public_key():
    p = config.parse_peer_arg(f"alice={KEY_TEXT},10.255.0.2")
    assert p.public_key == bytes(range(32)) and p.member is None
    assert p.tags == [ipaddress.ip_address("10.255.0.2")]
    cfg = config.build("wg0", [f"alice={KEY_TEXT},10.255.0.2"], backend="allowedips")
    assert cfg.backend == "allowedips"


@pytest.mark.parametrize("args, kw, fragments", [
    ([f"alice={KEY_TEXT[:-2]}!="], {"backend": "allowedips"}, ["not a WireGuard public key"]),
    ([f"alice={KEY_TEXT}"], {}, ["alice", "only for", "--backend allowedips"]),
    (["alice=wg-alice"], {"backend": "allowedips"}, ["alice", "public key", "'wg-alice'"]),
    ([f"alice={KEY_TEXT}", f"bob={KEY_TEXT}"], {"backend": "allowedips"}, ["given for both", "'alice'", "'bob'"]),
])
def test_bad_backend_peers(args, kw, fragments):
    with pytest.raises(ConfigError) as e:
        config.build("wg0", args, **kw)
    for f in fragments:
        assert f in str(e.value)


def test_toml_backend_and_public_key(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text(f'backend = "allowedips"\nfront = "wg0"\n[[peer]]\nname = "a"\npublic_key = "{KEY_TEXT}"\n')
    cfg = config.build(path=str(path))
    assert cfg.backend == "allowedips" and cfg.peers[0].public_key == bytes(range(32))
    path.write_text('backend = "bgp"\nfront = "wg0"\n')
    with pytest.raises(ConfigError, match="'bgp' is not a backend"):
        config.build(path=str(path))


def test_daemon_refuses_data_plane_settings_for_allowedips():
    r = CliRunner().invoke(main, ["daemon", "wg0", "--backend", "allowedips", "--lookup", "dir24",
                                  "--peer", f"alice={KEY_TEXT},10.255.0.2"])
    assert r.exit_code == 1
    assert "--lookup" in r.output and "allowedips" in r.output


def test_daemon_on_a_missing_device_names_it(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # the device check runs after the root check
    r = CliRunner().invoke(main, ["daemon", "wgbpf-nodev0", "--backend", "allowedips",
                                  "--peer", f"alice={KEY_TEXT},10.255.0.2"])
    assert r.exit_code == 1
    assert "wgbpf-nodev0" in r.output


def test_attach_refuses_an_allowedips_config(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text(f'backend = "allowedips"\nfront = "wg0"\n[[peer]]\nname = "a"\npublic_key = "{KEY_TEXT}"\n')
    r = CliRunner().invoke(main, ["attach", "--config", str(path)])
    assert r.exit_code == 1
    assert "no BPF data plane" in r.output and "wgbpf daemon" in r.output


def test_no_peer_prefixes_inside_a_peers_prefix_are_counted_as_unhonoured():
    """A blackhole (or a LAN route) inside a peer's prefix: AllowedIPs
    cannot hide the covering entry, so it is counted; one outside every
    peer's prefix is no loss (nothing covers it)."""
    from wgbpf import sync
    from wgbpf.routes import KernelRoute
    tags = sync.Tags({ipaddress.ip_address("10.255.0.1").packed: 0}, {}, front=9)

    def route(prefix, gw=None, oif=9):
        net = ipaddress.ip_network(prefix)
        fam = 2 if net.version == 4 else 10
        hops = ((ipaddress.ip_address(gw).packed, oif),) if gw else ()
        return KernelRoute(fam, net.network_address.packed, net.prefixlen, 254, 0, 4, 0, hops, 0, None)

    t = sync.Table(tags, sync.Filter())
    t.update(route("10.0.0.0/8", "10.255.0.1"))
    t.update(route("10.50.0.0/16"))                  # blackhole inside alice's /8
    t.update(route("10.63.0.0/16", "192.0.2.1", 77))  # a LAN device inside it
    t.update(route("192.168.0.0/16"))                # a blackhole nobody's prefix covers
    t.update(route("2001:db8::/32"))
    got = aip.unhonoured(t)
    assert got == {network_pkey(ipaddress.ip_network(p)) for p in ("10.50.0.0/16", "10.63.0.0/16")}
    # incremental: the blackhole goes, a new one comes
    k = t.update(route("10.50.0.0/16"), deleted=True)
    k2 = t.update(route("10.7.7.0/24"))
    got = aip.unhonoured(t, {k, k2}, got)
    assert got == {network_pkey(ipaddress.ip_network(p)) for p in ("10.63.0.0/16", "10.7.7.0/24")}
    t.update(route("2000::/3", "10.255.0.1"))  # a covering route comes: seen at the next full sync
    assert network_pkey(ipaddress.ip_network("2001:db8::/32")) in aip.unhonoured(t)


def test_status_check_lists_configured_peers_missing_from_the_device():
    """A configured key the device lacks (removed behind the daemon, the
    device re-created): its prefixes reach nobody, so `status --check`
    lists it, as `status` does."""
    from wgbpf import inspect, report
    dmn = {"state": "running", "pid": 1, "tables": [254], "prefixes": 4, "allowedips_changes": 0,
           "peer_rewrites": 0, "ecmp_prefixes": 0, "resyncs": 2, "missing_peers": ["bob"],
           "device_kind": "wireguard-go", "removal": "flag"}
    entry = {"front": "wg0", "backend": "allowedips", "daemon": dmn}
    assert inspect.problems(entry) == ["wg0: peers not on the device: bob (their prefixes reach nobody)"]
    assert "peers not on the device: bob" in report.allowedips_lines(entry)
    dmn["missing_peers"] = []
    assert inspect.problems(entry) == []

# SPDX-License-Identifier: GPL-2.0-or-later
"""wgbpf/config.py: --peer and TOML parsing, build() and validate().

Every error must name the bad field and quote the bad value, so each bad
case lists the fragments its ConfigError message must contain.
"""
import ipaddress
import os
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from wgbpf import abi, config
from wgbpf.config import ConfigError, PeerConfig

ip = ipaddress.ip_address


def write(tmp_path, text, name="wgbpf.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def raises(fn, *args, **kw):
    with pytest.raises(ConfigError) as e:
        fn(*args, **kw)
    return str(e.value)


def assert_names(msg, *fragments):
    for f in fragments:
        assert f in msg, f"{f!r} missing from the error: {msg}"


# -- parse_tag -------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("10.255.0.1", "10.255.0.1"),
    ("10.255.0.1/32", "10.255.0.1"),
    (" 10.255.0.1 ", "10.255.0.1"),
    ("192.0.2.7", "192.0.2.7"),
    ("fe80::1", "fe80::1"),
    ("fe80::1/128", "fe80::1"),
    ("FE80:0:0::1", "fe80::1"),
    ("2001:db8::42", "2001:db8::42"),
    ("2001:db8::42/128", "2001:db8::42"),
    ("fd00::ff", "fd00::ff"),
])
def test_parse_tag_good(text, want):
    got = config.parse_tag(text, "where")
    assert got == ip(want)
    assert isinstance(got, (ipaddress.IPv4Address, ipaddress.IPv6Address))


@pytest.mark.parametrize("text, fragments", [
    ("10.0.0.0/24", ["'10.0.0.0/24'", "not a prefix", "/32"]),
    ("10.0.0.1/31", ["'10.0.0.1/31'", "not a prefix"]),
    ("10.0.0.1/", ["'10.0.0.1/'"]),
    ("10.0.0.1/128", ["'10.0.0.1/128'", "/32"]),
    ("fe80::/64", ["'fe80::/64'", "not a prefix", "/128"]),
    ("fe80::1/32", ["'fe80::1/32'", "/128"]),
    ("224.0.0.5", ["'224.0.0.5'", "unicast"]),
    ("ff02::1", ["'ff02::1'", "unicast"]),
    ("0.0.0.0", ["'0.0.0.0'", "unicast"]),
    ("::", ["'::'", "unicast"]),
    ("::/128", ["'::/128'", "unicast"]),
    ("fe80::1%wg0", ["'fe80::1%wg0'", "%zone"]),
    ("fe80::1%3", ["'fe80::1%3'", "%zone"]),
    ("alice", ["'alice'", "not an IP address"]),
    ("10.0.0.256", ["'10.0.0.256'", "not an IP address"]),
    ("", ["''", "not an IP address"]),
    ("10.0.0.1/abc", ["'10.0.0.1/abc'"]),
])
def test_parse_tag_bad(text, fragments):
    msg = raises(config.parse_tag, text, "peer[0].tags[1]")
    assert_names(msg, "peer[0].tags[1]", *fragments)


# -- parse_peer_arg -------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("alice=wg-alice", PeerConfig("alice", "wg-alice", [])),
    ("alice=wg-alice,fe80::1", PeerConfig("alice", "wg-alice", [ip("fe80::1")])),
    ("alice=wg-alice,fe80::1,10.255.0.1", PeerConfig("alice", "wg-alice", [ip("fe80::1"), ip("10.255.0.1")])),
    ("alice=wg-alice,10.255.0.1/32,fe80::1/128", PeerConfig("alice", "wg-alice", [ip("10.255.0.1"), ip("fe80::1")])),
    (" alice = wg-alice , fe80::1 ", PeerConfig("alice", "wg-alice", [ip("fe80::1")])),
    ("a=b", PeerConfig("a", "b", [])),
    ("peer_1.x-y=wg0.100", PeerConfig("peer_1.x-y", "wg0.100", [])),
    ("a" * 31 + "=wg1", PeerConfig("a" * 31, "wg1", [])),
    ("bob=" + "x" * 15, PeerConfig("bob", "x" * 15, [])),
    ("bob=w=g", PeerConfig("bob", "w=g", [])),  # only the first '=' splits
])
def test_parse_peer_arg_good(text, want):
    assert config.parse_peer_arg(text) == want


@pytest.mark.parametrize("text, fragments", [
    # no '=' / nothing after it
    ("alice", ["--peer 'alice'", "NAME=MEMBER_DEV"]),
    ("alice=", ["--peer 'alice='", "NAME=MEMBER_DEV"]),
    ("", ["--peer ''", "NAME=MEMBER_DEV"]),
    # empty member
    ("alice=,fe80::1", ["--peer 'alice=,fe80::1'", "''", "not an interface name"]),
    ("alice= ,fe80::1", ["--peer 'alice= ,fe80::1'", "''", "not an interface name"]),
    # bad interface names
    ("alice=" + "x" * 16, ["'" + "x" * 16 + "'", "not an interface name", "1-15"]),
    ("alice=wg/alice", ["'wg/alice'", "not an interface name"]),
    ("alice=wg:0", ["'wg:0'", "not an interface name"]),
    ("alice=wg alice", ["'wg alice'", "not an interface name"]),
    # bad peer names
    ("=wg-alice", ["--peer '=wg-alice'", "''", "not a peer name"]),
    ("-alice=wg-alice", ["'-alice'", "not a peer name"]),
    ("al ice=wg-alice", ["'al ice'", "not a peer name"]),
    ("alice!=wg-alice", ["'alice!'", "not a peer name"]),
    ("al/ice=wg-alice", ["'al/ice'", "not a peer name"]),
    ("a" * 32 + "=wg1", ["'" + "a" * 32 + "'", "not a peer name", "at most 31"]),
    ("ålice=wg1", ["'ålice'", "not a peer name"]),
    # bad tags
    ("alice=wg-alice,10.0.0.0/24", ["--peer 'alice=wg-alice,10.0.0.0/24'", "'10.0.0.0/24'", "not a prefix"]),
    ("alice=wg-alice,ff02::1", ["'ff02::1'", "unicast"]),
    ("alice=wg-alice,0.0.0.0", ["'0.0.0.0'", "unicast"]),
    ("alice=wg-alice,fe80::1%wg-alice", ["'fe80::1%wg-alice'", "%zone"]),
    ("alice=wg-alice,bob", ["'bob'", "not an IP address"]),
    # an empty field: a comma too many, or a tag left out by mistake
    ("alice=wg-alice,", ["--peer 'alice=wg-alice,'", "an empty field"]),
    ("alice=wg-alice,,fe80::1", ["--peer 'alice=wg-alice,,fe80::1'", "an empty field"]),
])
def test_parse_peer_arg_bad(text, fragments):
    msg = raises(config.parse_peer_arg, text)
    assert_names(msg, "--peer", *fragments)


# -- check_ifname / check_name edges ------------------------------------------------

@pytest.mark.parametrize("name", ["wg0", "x" * 15, "wg-alice", "wg.100", "eth0@x", "w=g", "tun+"])
def test_ifname_good(name):
    assert config.check_ifname(name, "member") == name


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b", "a:b", "a b", "a\tb", "\na", None, 5, ["wg0"]])
def test_ifname_bad(name):
    msg = raises(config.check_ifname, name, "peer[0].member")
    assert_names(msg, "peer[0].member", repr(name), "not an interface name")


@pytest.mark.parametrize("name", ["é" * 10, "ü" * 15, ".", ".."])
def test_ifname_linux_limits(name):
    # Linux dev_valid_name(): strlen < IFNAMSIZ (16, bytes), not "." / ".."
    raises(config.check_ifname, name, "member")


@pytest.mark.parametrize("check, toml", [
    (config.check_ifname, '[[peer]]\nname = "alice"\nmember = "wg-alice\\n"\n'),
    (config.check_name, '[[peer]]\nname = "alice\\n"\nmember = "wg-alice"\n'),
])
def test_trailing_newline_is_refused(tmp_path, check, toml):
    raises(check, "wg0\n", "x")
    msg = raises(config.load_toml, write(tmp_path, toml))
    assert_names(msg, "\\n")


@pytest.mark.parametrize("name", ["a", "A9", "0", "a" * 31, "peer.one", "p_1-2"])
def test_name_good(name):
    assert config.check_name(name, "name") == name


@pytest.mark.parametrize("name", ["", "a" * 32, "_a", ".a", "-a", "a b", "a=b", "a,b", "a/b", "\na", None, 3])
def test_name_bad(name):
    msg = raises(config.check_name, name, "peer[2].name")
    assert_names(msg, "peer[2].name", repr(name), "not a peer name")


def test_name_fits_c_buffer():
    # the longest legal name plus its NUL fits wgbpf_peer.name
    longest = "a" * (abi.NAME_LEN - 1)
    config.check_name(longest, "x")
    assert len(longest.encode()) + 1 <= abi.NAME_LEN


# -- parse_policy --------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [("pass", abi.Policy.PASS), ("drop", abi.Policy.DROP),
                                        ("DROP", abi.Policy.DROP), ("Pass", abi.Policy.PASS)])
def test_parse_policy_good(text, want):
    assert config.parse_policy(text, "--no-route") is want


@pytest.mark.parametrize("value", ["reject", "", "1", 1, True, None])
def test_parse_policy_bad(value):
    msg = raises(config.parse_policy, value, "cfg: no_route")
    assert_names(msg, "cfg: no_route", repr(value), "pass or drop")


# -- load_toml --------------------------------------------------------------------

def test_load_toml_full(tmp_path):
    path = write(tmp_path, """\
        front = "wg0"
        members_only = false
        no_route = "drop"

        [[peer]]
        name = "alice"
        member = "wg-alice"
        tags = ["fe80::1", "10.255.0.1/32"]

        [[peer]]
        name = "bob"
        member = "wg-bob"
        tags = ["fe80::2/128", "10.255.0.2"]

        [[peer]]
        name = "carol"
        member = "wg-carol"
        """)
    front, members_only, no_route, peers, _settings = config.load_toml(path)
    assert (front, members_only, no_route) == ("wg0", False, abi.Policy.DROP)
    assert peers == [
        PeerConfig("alice", "wg-alice", [ip("fe80::1"), ip("10.255.0.1")]),
        PeerConfig("bob", "wg-bob", [ip("fe80::2"), ip("10.255.0.2")]),
        PeerConfig("carol", "wg-carol", []),
    ]


def test_load_toml_unset_is_none(tmp_path):
    path = write(tmp_path, "")
    assert config.load_toml(path) == (None, None, None, [], {})


def test_load_toml_inline_peers(tmp_path):
    path = write(tmp_path, 'peer = [{name = "a", member = "wg-a", tags = []}]\n')
    assert config.load_toml(path)[3] == [PeerConfig("a", "wg-a", [])]


@pytest.mark.parametrize("text, fragments", [
    # unknown keys
    ('frnt = "wg0"\n', ["unknown setting", "'frnt'"]),
    ('[peers]\nname = "a"\n', ["unknown setting", "'peers'"]),
    ('[[peer]]\nname = "a"\nmember = "wg-a"\ntag = ["fe80::1"]\n', ["peer[0]", "unknown field", "'tag'"]),
    ('[[peer]]\nname = "a"\nmember = "wg-a"\n[[peer]]\nname = "b"\nmember = "wg-b"\ndev = "x"\n',
     ["peer[1]", "unknown field", "'dev'"]),
    # missing fields
    ('[[peer]]\nmember = "wg-a"\n', ["peer[0]", "missing field", "'name'"]),
    ('[[peer]]\nname = "a"\n', ["peer[0]", "missing field", "'member'"]),
    # wrong types
    ('[[peer]]\nname = "a"\nmember = "wg-a"\ntags = "fe80::1"\n', ["peer[0].tags", "'fe80::1'", "not a list"]),
    ('members_only = "yes"\n', ["members_only", "'yes'", "true or false"]),
    ("members_only = 1\n", ["members_only", "1", "true or false"]),
    ('no_route = "reject"\n', ["no_route", "'reject'", "pass or drop"]),
    ("no_route = 0\n", ["no_route", "0", "pass or drop"]),
    ("front = 5\n", ["front", "5", "not an interface name"]),
    ('front = "wg/0"\n', ["front", "'wg/0'", "not an interface name"]),
    ('peer = "alice"\n', ["peer", "[[peer]]"]),
    ('peer = ["alice"]\n', ["peer[0]", "[[peer]]"]),
    # bad values inside [[peer]]
    ('[[peer]]\nname = "-a"\nmember = "wg-a"\n', ["peer[0].name", "'-a'", "not a peer name"]),
    ("[[peer]]\nname = 7\nmember = \"wg-a\"\n", ["peer[0].name", "7", "not a peer name"]),
    ('[[peer]]\nname = "a"\nmember = "wg-alice-too-long"\n',
     ["peer[0].member", "'wg-alice-too-long'", "not an interface name"]),
    ('[[peer]]\nname = "a"\nmember = "wg-a"\ntags = ["fe80::1", "10.0.0.0/24"]\n',
     ["peer[0].tags[1]", "'10.0.0.0/24'", "not a prefix"]),
    ('[[peer]]\nname = "a"\nmember = "wg-a"\ntags = ["ff02::2"]\n', ["peer[0].tags[0]", "'ff02::2'", "unicast"]),
    ('[[peer]]\nname = "a"\nmember = "wg-a"\ntags = ["fe80::1%wg-a"]\n', ["peer[0].tags[0]", "'fe80::1%wg-a'", "%zone"]),
    ('[[peer]]\nname = "a"\nmember = "wg-a"\ntags = [1]\n', ["peer[0].tags[0]", "1", "not an IP address"]),
    # syntax
    ('front = \n', ["not valid TOML"]),
    ('front = "wg0"\nfront = "wg1"\n', ["not valid TOML"]),
    ('[[peer]\nname = "a"\n', ["not valid TOML"]),
])
def test_load_toml_bad(tmp_path, text, fragments):
    path = write(tmp_path, text)
    msg = raises(config.load_toml, path)
    assert_names(msg, path, *fragments)


def test_load_toml_missing_file(tmp_path):
    path = str(tmp_path / "nope.toml")
    msg = raises(config.load_toml, path)
    assert_names(msg, path, "No such file")


def test_load_toml_directory(tmp_path):
    msg = raises(config.load_toml, str(tmp_path))
    assert_names(msg, str(tmp_path), "directory")


def test_load_toml_unreadable(tmp_path):
    # a path under a regular file is unreadable even for root
    f = tmp_path / "file"
    f.write_text("")
    path = str(f / "wgbpf.toml")
    msg = raises(config.load_toml, path)
    assert_names(msg, path, "Not a directory")
    if os.geteuid() != 0:  # root reads a mode-0 file anyway
        path = write(tmp_path, 'front = "wg0"\n')
        os.chmod(path, 0)
        msg = raises(config.load_toml, path)
        assert_names(msg, path, "Permission denied")


def test_load_toml_not_utf8(tmp_path):
    p = tmp_path / "latin1.toml"
    p.write_bytes(b'front = "wg\xe90"\n')
    msg = raises(config.load_toml, str(p))
    assert_names(msg, str(p))


# -- build -------------------------------------------------------------------------

PEERS_TOML = """\
    front = "wg0"
    members_only = true
    no_route = "drop"

    [[peer]]
    name = "alice"
    member = "wg-alice"
    tags = ["fe80::1", "10.255.0.1"]
    """


def test_build_cli_only():
    cfg = config.build("wg0", ["alice=wg-alice,fe80::1", "bob=wg-bob,fe80::2,10.255.0.2/32"])
    assert cfg == config.Config(front="wg0", peers=[
        PeerConfig("alice", "wg-alice", [ip("fe80::1")]),
        PeerConfig("bob", "wg-bob", [ip("fe80::2"), ip("10.255.0.2")])],
        members_only=False, no_route=abi.Policy.PASS)


def test_build_file_only(tmp_path):
    cfg = config.build(path=write(tmp_path, PEERS_TOML))
    assert cfg.front == "wg0" and cfg.members_only is True and cfg.no_route is abi.Policy.DROP
    assert [p.name for p in cfg.peers] == ["alice"]


def test_build_joins_file_and_cli_peers(tmp_path):
    cfg = config.build(peer_args=["bob=wg-bob,fe80::2"], path=write(tmp_path, PEERS_TOML))
    assert [(p.name, p.member) for p in cfg.peers] == [("alice", "wg-alice"), ("bob", "wg-bob")]


@pytest.mark.parametrize("kw, want", [
    ({"front": "wg9"}, ("wg9", True, abi.Policy.DROP)),
    ({"members_only": False}, ("wg0", False, abi.Policy.DROP)),
    ({"no_route": abi.Policy.PASS}, ("wg0", True, abi.Policy.PASS)),
    ({"front": "wg9", "members_only": False, "no_route": abi.Policy.PASS}, ("wg9", False, abi.Policy.PASS)),
])
def test_build_cli_overrides_file(tmp_path, kw, want):
    cfg = config.build(path=write(tmp_path, PEERS_TOML), **kw)
    assert (cfg.front, cfg.members_only, cfg.no_route) == want


def test_build_cli_members_only_and_drop_over_defaults(tmp_path):
    path = write(tmp_path, '[[peer]]\nname = "a"\nmember = "wg-a"\n')
    cfg = config.build("wg0", path=path, members_only=True, no_route=abi.Policy.DROP)
    assert cfg.members_only is True and cfg.no_route is abi.Policy.DROP
    cfg = config.build("wg0", path=path)
    assert cfg.members_only is False and cfg.no_route is abi.Policy.PASS


def test_build_member_may_be_front_with_members_only():
    cfg = config.build("wg0", ["alice=wg0"], members_only=True)
    assert cfg.peers[0].member == "wg0"


@pytest.mark.parametrize("peer", ["alice=wg-a,10.255.0.1,10.255.0.1", "alice=wg-a,fe80::1,FE80:0::1/128"])
def test_build_same_tag_twice_in_one_peer_is_refused(peer):
    # as the same tag in two peers is, and `route add P alice,alice`
    msg = raises(config.build, "wg0", [peer])
    assert_names(msg, "peer 'alice'", "given twice")


def test_build_same_tag_twice_in_a_toml_peer_is_refused(tmp_path):
    path = write(tmp_path, '[[peer]]\nname = "alice"\nmember = "wg-a"\ntags = ["10.9.9.9", "10.9.9.9/32"]\n')
    msg = raises(config.build, "wg0", path=path)
    assert_names(msg, "peer 'alice'", "tag 10.9.9.9", "given twice")


def test_build_max_peers():
    n = abi.MAX_PEERS - 1
    cfg = config.build("wg0", [f"p{i}=m{i}" for i in range(n)])
    assert len(cfg.peers) == n
    msg = raises(config.build, "wg0", [f"p{i}=m{i}" for i in range(n + 1)])
    assert_names(msg, str(n + 1), str(n))


@pytest.mark.parametrize("kw, fragments", [
    ({"front": "wg0", "peer_args": ["alice=wg-a", "alice=wg-b"]}, ["peer 'alice'", "twice"]),
    ({"front": "wg0", "peer_args": ["alice=wg-a", "bob=wg-a"]}, ["member", "'wg-a'", "'alice'", "'bob'"]),
    ({"front": "wg0", "peer_args": ["alice=wg-a,fe80::1", "bob=wg-b,fe80::1"]}, ["tag fe80::1", "'alice'", "'bob'"]),
    # the same address written two ways is the same tag
    ({"front": "wg0", "peer_args": ["alice=wg-a,10.0.0.1/32", "bob=wg-b,10.0.0.1"]}, ["10.0.0.1", "'alice'", "'bob'"]),
    ({"front": "wg0", "peer_args": ["alice=wg-a,fe80::1", "bob=wg-b,FE80:0::1/128"]}, ["fe80::1", "'alice'", "'bob'"]),
    ({"front": "wg0", "peer_args": ["alice=wg0"]}, ["peer 'alice'", "member 'wg0'", "front"]),
    ({"front": "wg0", "peer_args": []}, ["no peers", "--peer"]),
    ({"peer_args": ["alice=wg-a"]}, ["no front"]),
    ({"front": "", "peer_args": ["alice=wg-a"]}, ["no front"]),
    ({"front": "wg/0", "peer_args": ["alice=wg-a"]}, ["front", "'wg/0'", "not an interface name"]),
    ({"front": "x" * 16, "peer_args": ["alice=wg-a"]}, ["front", "'" + "x" * 16 + "'"]),
    ({"front": "wg0", "peer_args": ["alice"]}, ["--peer 'alice'"]),
])
def test_build_bad(kw, fragments):
    msg = raises(config.build, **kw)
    assert_names(msg, *fragments)


@pytest.mark.parametrize("toml, kw, fragments", [
    # a peer named in the file and on the command line
    ('[[peer]]\nname = "alice"\nmember = "wg-a"\n', {"front": "wg0", "peer_args": ["alice=wg-b"]},
     ["peer 'alice'", "twice"]),
    # the file's member reused on the command line
    ('[[peer]]\nname = "alice"\nmember = "wg-a"\n', {"front": "wg0", "peer_args": ["bob=wg-a"]},
     ["'wg-a'", "'alice'", "'bob'"]),
    # the file's tag reused on the command line
    ('[[peer]]\nname = "alice"\nmember = "wg-a"\ntags = ["10.9.9.9"]\n',
     {"front": "wg0", "peer_args": ["bob=wg-b,10.9.9.9"]}, ["10.9.9.9", "'alice'", "'bob'"]),
    # the file names no front and the command line neither
    ('[[peer]]\nname = "alice"\nmember = "wg-a"\n', {}, ["no front"]),
    # the file's member is the command line's front
    ('[[peer]]\nname = "alice"\nmember = "wg-a"\n', {"front": "wg-a"}, ["member 'wg-a'", "front"]),
    # the file has no peers
    ('front = "wg0"\n', {}, ["no peers"]),
])
def test_build_bad_with_file(tmp_path, toml, kw, fragments):
    msg = raises(config.build, path=write(tmp_path, toml), **kw)
    assert_names(msg, *fragments)


def test_build_file_error_wins(tmp_path):
    path = write(tmp_path, 'frnt = "wg0"\n')
    msg = raises(config.build, "wg0", ["alice=wg-a"], path)
    assert_names(msg, path, "'frnt'")


def test_validate_returns_cfg():
    cfg = config.Config("wg0", [PeerConfig("a", "wg-a", [ip("fe80::1")])])
    assert config.validate(cfg) is cfg


# -- property: --peer round-trips ----------------------------------------------------

names = st.from_regex(config.NAME_RE, fullmatch=True).filter(lambda s: "\n" not in s)  # see the '$' bug
# interface names that --peer can carry: no ',' (the tag separator); no
# surrounding whitespace is possible anyway (IFNAME_RE has none)
members = st.from_regex(r"[^\s/:,]{1,15}", fullmatch=True).filter(
    lambda s: config.IFNAME_RE.fullmatch(s) and len(s.encode()) < config.IFNAMSIZ and s not in (".", ".."))
tags = st.ip_addresses().filter(lambda a: not (
    a.is_multicast or a.is_unspecified or a.is_loopback or a == ip("255.255.255.255")
    or (a.version == 6 and (a in config.MAPPED or a in config.COMPAT))))


@st.composite
def peers(draw):
    name = draw(names)
    member = draw(members)
    addrs = draw(st.lists(tags, max_size=6))
    forms = []
    for a in addrs:
        form = draw(st.sampled_from(["plain", "host", "exploded"]))
        text = {"plain": str(a), "host": f"{a}/{a.max_prefixlen}", "exploded": a.exploded}[form]
        forms.append(text)
    return PeerConfig(name, member, addrs), forms


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(peers())
def test_parse_peer_arg_round_trips(peer_forms):
    peer, forms = peer_forms
    text = f"{peer.name}={peer.member}" + "".join("," + f for f in forms)
    assert config.parse_peer_arg(text) == peer


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.lists(peers(), min_size=1, max_size=5,
                unique_by=(lambda pf: pf[0].name, lambda pf: pf[0].member)))
def test_build_accepts_distinct_peers(peer_list):
    # distinct names, members and tags always validate
    seen, plist = set(), []
    for p, _ in peer_list:
        kept = []
        for t in p.tags:  # a tag once, in one peer: a repeat is refused
            if t not in seen:
                seen.add(t)
                kept.append(t)
        plist.append(PeerConfig(p.name, p.member, kept))
    args = [f"{p.name}={p.member}" + "".join("," + str(t) for t in p.tags) for p in plist]
    cfg = config.build("front-dev-x", args, members_only=True)
    assert cfg.peers == plist


# -- the shipped examples parse -----------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_toml_builds():
    cfg = config.build(path=os.path.join(REPO, "lab", "demo.toml"))
    assert cfg.front == "wg0" and cfg.no_route is abi.Policy.PASS and not cfg.members_only
    assert [(p.name, p.member) for p in cfg.peers] == [("alice", "wg-alice"), ("bob", "wg-bob"), ("carol", "wg-carol")]
    assert cfg.peers[0].tags == [ip("10.255.0.1"), ip("fe80::1")]


def test_readme_example_builds():
    # README: wgbpf attach wg0 --peer alice=wg-alice,fe80::1,10.255.0.1 --peer bob=wg-bob,fe80::2
    cfg = config.build("wg0", ["alice=wg-alice,fe80::1,10.255.0.1", "bob=wg-bob,fe80::2"])
    assert [p.tags for p in cfg.peers] == [[ip("fe80::1"), ip("10.255.0.1")], [ip("fe80::2")]]

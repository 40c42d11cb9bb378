# SPDX-License-Identifier: GPL-2.0-or-later
"""Issue 23, item 5: one table of bad input, fed to every command-line slot
that takes a value, from one generator of bad values per kind (empty,
wrong type, out of range, the documented edges and one past them, 16+
character device names, host bits, IPv4-mapped IPv6, multicast, loopback
and unspecified tags, duplicates).

Every case ends in one `wgbpf: error:` line and exit 1 (a refused value)
or 2 (click's usage errors, one line too), never a traceback. attach and
daemon must refuse before the data plane (reaching it fails the test);
route, lookup, dump, top and monitor run on a fake instance whose maps,
and whose `dump --json`, are compared before and after each case.
The documented edges themselves are accepted (test_edges_are_accepted).
"""
import json

import pytest

from wgbpf import abi, daemon
from tests.unit.test_cli import ERR, as_root, instance, isolated, run  # noqa: F401 (fixtures)

LONG = "x" * 16  # IFNAMSIZ is 16 with the NUL: 15 characters at most


def bad(kind):
    """The bad values of one kind: (value, why), every kind with the empty
    value and a value of the wrong type."""
    common = [("", "empty"), ("\n", "a newline")]
    return common + {
        "device": [(LONG, "16 characters"), ("x" * 40, "40 characters"), ("a/b", "a slash"), ("a b", "a space"),
                   (".", "dot"), ("..", "dot dot"), ("a:b", "a colon")],
        "name": [("-alice", "an option's look"), ("a" * 40, "too long"), ("al ice", "a space")],
        "prefix": [("10.0.0.0/33", "past /32"), ("2001:db8::/129", "past /128"), ("10.0.0.1/24", "host bits"),
                   ("10.0.0.256/32", "an octet past 255"), ("10.0.0.0/-1", "a negative length"),
                   ("fe80::/64%eth0", "a zone"), ("10.0.0.0/8/8", "two lengths"), ("1", "wrong type"),
                   ("{}", "wrong type")],
        "address": [("10.0.0.256", "an octet past 255"), ("1.2.3", "three octets"), ("10.0.0.0/8", "a prefix"),
                    ("fe80::1::2", "two ::"), ("alice", "a name"), ("{}", "wrong type")],
        "tag": [("10.0.0.0/24", "a prefix"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast v6"),
                ("127.0.0.1", "loopback"), ("::1", "loopback v6"), ("0.0.0.0", "unspecified"), ("::", "unspecified v6"),
                ("::ffff:10.0.0.1", "IPv4-mapped"), ("255.255.255.255", "broadcast"), ("10.255.0.1/33", "past /32"),
                ("fe80::1%eth0", "a zone"), ("10.255.0.1,10.255.0.1", "a duplicate")],
        "peers": [(",", "no peer"), ("alice,,bob", "an empty name"), ("alice,alice", "a duplicate"),
                  ("zed", "unknown"), ("alice,zed", "one unknown"),
                  (",".join(["alice", "bob", "carol"] * abi.MAX_ECMP), "past MAX_ECMP")],
        "table": [("-1", "negative"), ("4294967296", "one past 2**32-1"), ("1.5", "a fraction"),
                  ("no-such-table", "unnamed"), ("0x", "half a number")],
        "proto": [("-1", "negative"), ("256", "one past 255"), ("no-such-proto", "unnamed")],
        "int": [("abc", "not a number"), ("1.5", "a fraction")],
        "realm": [("abc", "not a number"), ("-1", "negative"), ("65536", "past 16 bits")],
        "rcvbuf": [("abc", "not a number"), ("-1", "negative"), ("0", "zero")],
        "interval": [("0", "zero"), ("0.09", "below 0.1"), ("-1", "negative"), ("nan", "nan"), ("abc", "not a number")],
        "count": [("0", "zero"), ("-1", "negative"), ("abc", "not a number"), ("1.5", "a fraction")],
        "seconds": [("-1", "negative"), ("nan", "nan"), ("inf", "infinite"), ("abc", "not a number"),
                    ("1e400", "overflows")],
        "gone": [("-1", "negative"), ("nan", "nan"), ("abc", "not a number")],
        "choice": [("LPM ", "a trailing space"), ("nonsense", "not a choice")],
        "file": [("/nonexistent-wgbpf/x.toml", "a missing directory")],
    }[kind]


PEER = "alice=wg-alice,10.255.0.1"
# (command words with one {} slot, the kind of value it takes; data: the
# command runs on the fake instance)
ATTACH = [
    (["attach", "{}", "--peer", PEER], "device"),
    (["attach", "wg0", "--peer", "alice={},10.255.0.1"], "device"),
    (["attach", "wg0", "--peer", "{}=wg-alice"], "name"),
    (["attach", "wg0", "--peer", "alice=wg-alice,{}"], "tag"),
    (["attach", "wg0", "--peer", PEER, "--lookup", "fib", "--fib-table", "{}"], "table"),
    (["attach", "wg0", "--peer", PEER, "--accept-table", "{}"], "table"),
    (["attach", "wg0", "--peer", PEER, "--lookup", "{}"], "choice"),
    (["attach", "wg0", "--peer", PEER, "--no-route", "{}"], "choice"),
    (["attach", "wg0", "--peer", PEER, "--source", "{}"], "choice"),
    (["attach", "wg0", "--config", "{}"], "file"),
]
DAEMON = [([w if w != "attach" else "daemon" for w in words], kind) for words, kind in ATTACH] + [
    (["daemon", "wg0", "--peer", PEER, "--table", "{}"], "table"),
    (["daemon", "wg0", "--peer", PEER, "--proto", "{}"], "proto"),
    (["daemon", "wg0", "--peer", PEER, "--realm", "{}"], "realm"),
    (["daemon", "wg0", "--peer", PEER, "--rcvbuf", "{}"], "rcvbuf"),
    (["daemon", "wg0", "--peer", PEER, "--dead-after", "{}"], "seconds"),
    (["daemon", "wg0", "--peer", "alice=wg-alice,dead_after={}"], "seconds"),
    (["daemon", "wg0", "--peer", PEER, "--gone-after", "{}"], "gone"),
    (["daemon", "wg0", "--peer", PEER, "--backend", "{}"], "choice"),
    (["daemon", "wg0", "--peer", PEER, "--metrics-file", "{}"], "file"),
]
ON_INSTANCE = [
    (["route", "add", "{}", "alice"], "prefix"),
    (["route", "add", "10.9.0.0/16", "{}"], "peers"),
    (["route", "add", "10.9.0.0/16", "alice", "{}"], "device"),
    (["route", "add", "{}", "alice", "--accept"], "prefix"),
    (["route", "del", "{}"], "prefix"),
    (["lookup", "{}"], "address"),
    (["lookup", "10.1.2.3", "--from", "{}"], "peers"),
    (["dump", "{}"], "device"),
    (["top", "wg0", "--once", "--interval", "{}"], "interval"),
    (["monitor", "wg0", "--count", "{}"], "count"),
    (["status", "{}"], "device"),
]


# TOML keys of attach/daemon --config: (the file with one {} slot, a TOML
# string there, the kind of value)
TOML_PEER = '[[peer]]\nname = "alice"\nmember = "wg-alice"\n'
TOML = [
    ('front = {}\n' + TOML_PEER, "device"),
    ('front = "wg0"\nlookup = "fib"\nfib_table = {}\n' + TOML_PEER, "table"),
    ('front = "wg0"\naccept_table = {}\n' + TOML_PEER, "table"),
    ('front = "wg0"\nlookup = {}\n' + TOML_PEER, "choice"),
    ('front = "wg0"\nno_route = {}\n' + TOML_PEER, "choice"),
    ('front = "wg0"\nsource = {}\n' + TOML_PEER, "choice"),
    ('front = "wg0"\nbackend = {}\n' + TOML_PEER, "choice"),
    ('front = "wg0"\ndead_after = {}\n' + TOML_PEER, "seconds"),
    ('front = "wg0"\n[[peer]]\nname = {}\nmember = "wg-alice"\n', "name"),
    ('front = "wg0"\n[[peer]]\nname = "alice"\nmember = {}\n', "device"),
    ('front = "wg0"\n[[peer]]\nname = "alice"\nmember = "wg-alice"\ntags = [{}]\n', "tag"),
    ('front = "wg0"\n[[peer]]\nname = "alice"\nmember = "wg-alice"\nsource = {}\n', "choice"),
    ('front = "wg0"\n[[peer]]\nname = "alice"\nmember = "wg-alice"\ndead_after = {}\n', "seconds"),
]


def toml_cases():
    for text, kind in TOML:
        key = text.split(" = {}")[0].split("\n")[-1]
        for value, why in bad(kind):
            if kind == "tag" and "," in value:  # a duplicate: two entries of the list
                lit = ", ".join(json.dumps(v) for v in value.split(","))
            else:
                lit = json.dumps(value)  # a TOML basic string: JSON's escapes
            yield pytest.param(text.replace("{}", lit), id=f"{key}:{kind}:{why}")


def cases(table):
    for words, kind in table:
        for value, why in bad(kind):
            yield pytest.param([w.replace("{}", value) for w in words],
                               id=f"{' '.join(words[:2])}:{kind}:{why}")


def refused(r):
    """One wgbpf error line, exit 1 or 2, no traceback."""
    assert r.exit_code in (1, 2), f"exit {r.exit_code}:\n{r.output}\n{r.exception!r}"
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output, r.output
    assert r.stderr.startswith(ERR) and r.stderr.count("\n") == 1, r.stderr
    assert r.stdout == "", r.stdout


@pytest.mark.parametrize("args", list(cases(ATTACH + DAEMON)))
def test_refused_before_the_data_plane(args, as_root, monkeypatch):
    def refuse(self):
        raise AssertionError("the daemon started (its lock, its attach) on a bad value")
    monkeypatch.setattr(daemon.Daemon, "run", refuse)
    refused(run(*args))  # the data plane's entry points raise if reached


@pytest.mark.parametrize("command", ["attach", "daemon"])
@pytest.mark.parametrize("text", list(toml_cases()))
def test_config_file_refused_before_the_data_plane(text, command, tmp_path, as_root, monkeypatch):
    def refuse(self):
        raise AssertionError("the daemon started (its lock, its attach) on a bad value")
    monkeypatch.setattr(daemon.Daemon, "run", refuse)
    path = tmp_path / "wg0.toml"
    path.write_text(text)
    refused(run(command, "--config", str(path)))


def state(fake):
    """The fake's maps as bytes (the values are ctypes structures)."""
    def raw(d):
        return {k: bytes(v) if not isinstance(v, int) else v for k, v in d.items()}
    return (raw(fake.peer_map), raw(fake.route_map), dict(fake.tag_map), raw(fake.accept_map), bytes(fake.cfg))


@pytest.mark.parametrize("args", list(cases(ON_INSTANCE)))
def test_refused_on_an_instance_leaves_it_as_it_was(args, instance):
    before, dump = state(instance), run("dump", "--json").stdout
    refused(run(*args))
    assert state(instance) == before
    assert run("dump", "--json").stdout == dump


@pytest.mark.parametrize("args", [
    ["route", "add", "10.9.0.0/16", ",".join(["alice", "bob", "carol"][:min(3, abi.MAX_ECMP)])],
    ["route", "add", "0.0.0.0/0", "alice"], ["route", "add", "::/0", "bob"],
    ["route", "add", "10.9.0.1/32", "alice"], ["route", "add", "2001:db8::1/128", "alice"],
    ["lookup", "255.255.255.255"], ["lookup", "::"],
])
def test_edges_are_accepted(args, instance):
    r = run(*args)
    assert r.exit_code == 0, (r.output, r.exception)


@pytest.mark.parametrize("args", [
    ["attach", "wg0", "--peer", PEER, "--lookup", "fib", "--fib-table", "1"],
    ["attach", "wg0", "--peer", PEER, "--lookup", "fib", "--fib-table", "4294967295"],
    ["attach", "wg0", "--peer", PEER, "--accept-table", "main"],
    ["attach", "x" * 15, "--peer", "a" + "b" * 14 + "=" + "m" * 15 + ",10.255.0.1,fe80::1"],
    ["daemon", "wg0", "--peer", PEER, "--realm", "0", "--realm", "65535"],
    ["daemon", "wg0", "--peer", PEER, "--rcvbuf", "1", "--gone-after", "0"],
    ["daemon", "wg0", "--peer", PEER, "--dead-after", "1"],
    ["daemon", "wg0", "--peer", "alice=wg-alice,dead_after=86400"],
])
def test_edges_pass_validation(args, as_root, monkeypatch):
    """The documented edges get past every check to the data plane (here:
    the fixtures' stand-ins, which raise to say they were reached)."""
    def reached(self):
        raise AssertionError("a unit test reached the real data plane")
    monkeypatch.setattr(daemon.Daemon, "run", reached)
    r = run(*args)
    assert isinstance(r.exception, AssertionError) and "reached the real data plane" in str(r.exception), \
        (r.output, r.exception)

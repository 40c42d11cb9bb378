# SPDX-License-Identifier: GPL-2.0-or-later
"""Refused input must do no damage: every bad input gets a
one-line error naming it, and a refused one changes nothing, on disk, in the
kernel or in the daemon's memory. No root needed, no kernel state touched.
"""
import os
import signal
import textwrap

import pytest
from click.testing import CliRunner

from wgbpf import abi, cli, config, dataplane, files, maps
from wgbpf.config import ConfigError, PeerConfig

ERR = "wgbpf: error:"


def run(*args):
    return CliRunner().invoke(cli.main, list(args), prog_name="wgbpf")


def failed(r, *fragments):
    """Exit 1, one 'wgbpf: error:' line naming every fragment, no traceback."""
    assert r.exit_code == 1, f"exit {r.exit_code}:\n{r.output}\n{r.exception!r}"
    assert r.stderr.startswith(ERR) and r.stderr.count("\n") == 1, r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    for f in fragments:
        assert f in r.stderr, f"{f!r} not in: {r.stderr}"
    return r.stderr


@pytest.fixture(autouse=True)
def no_data_plane(tmp_path, monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("a unit test reached the real data plane")
    monkeypatch.setattr(maps, "PIN_ROOT", str(tmp_path / "pins"))
    monkeypatch.setattr(dataplane, "attach", refuse)
    monkeypatch.setattr(maps.Maps, "open", classmethod(refuse))
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def raises(fn, *args, **kw):
    with pytest.raises(ConfigError) as e:
        fn(*args, **kw)
    return str(e.value)


# -- files.write_atomic: no link followed, nothing half-written ------------------------

def test_write_atomic_replaces(tmp_path):
    target = tmp_path / "m.prom"
    target.write_text("old\n")
    files.write_atomic(str(target), "new\n")
    assert target.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["m.prom"]  # no temp file left
    assert target.stat().st_mode & 0o777 == 0o644 & ~_umask()  # node_exporter reads it


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old


def test_write_atomic_replaces_a_planted_link_not_its_target(tmp_path):
    victim = tmp_path / "shadow"
    victim.write_text("root's secret\n")
    target = tmp_path / "m.prom"
    target.symlink_to(victim)
    files.write_atomic(str(target), "metrics\n")
    assert victim.read_text() == "root's secret\n"
    assert not target.is_symlink() and target.read_text() == "metrics\n"


def test_write_atomic_ignores_the_old_fixed_temp_name(tmp_path):
    # the old code wrote PATH.tmp: a link planted there was followed
    victim = tmp_path / "shadow"
    victim.write_text("root's secret\n")
    (tmp_path / "m.prom.tmp").symlink_to(victim)
    files.write_atomic(str(tmp_path / "m.prom"), "metrics\n")
    assert victim.read_text() == "root's secret\n"
    assert (tmp_path / "m.prom").read_text() == "metrics\n"


def test_write_atomic_never_opens_an_existing_name(tmp_path, monkeypatch):
    """Every temp name is created O_EXCL|O_NOFOLLOW: a name someone holds
    (a file or a link) is skipped, never written."""
    victim = tmp_path / "shadow"
    victim.write_text("x")
    names = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".m.prom.aaaa.tmp").symlink_to(victim)
    files.write_atomic(str(tmp_path / "m.prom"), "metrics\n")
    assert victim.read_text() == "x"
    assert sorted(os.listdir(tmp_path)) == [".m.prom.aaaa.tmp", "m.prom", "shadow"]


def test_write_atomic_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        files.write_atomic(str(tmp_path / "nope" / "m.prom"), "x")


# -- files.read_bounded and config files --------------------------------------------------

def toml(tmp_path, text, name="wg0.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


GOOD = """\
front = "wg0"
[[peer]]
name = "alice"
member = "wg-alice"
tags = ["fe80::1"]
"""


def test_config_through_a_symlink_is_read(tmp_path):
    real = toml(tmp_path, GOOD)
    link = tmp_path / "link.toml"
    link.symlink_to(real)
    assert config.build(path=str(link)).peers[0].name == "alice"


def test_config_fifo_is_refused_without_hanging(tmp_path):
    fifo = str(tmp_path / "wg0.toml")
    os.mkfifo(fifo)
    signal.alarm(10)  # a hang fails the test instead of the suite
    try:
        msg = raises(config.build, path=fifo)
    finally:
        signal.alarm(0)
    assert fifo in msg and "not a regular file" in msg


def test_config_device_is_refused():
    msg = raises(config.build, path="/dev/zero")
    assert "/dev/zero" in msg and "not a regular file" in msg


def test_config_too_large(tmp_path):
    p = tmp_path / "big.toml"
    p.write_text(GOOD + "# " + "x" * files.MAX_READ + "\n")
    msg = raises(config.build, path=str(p))
    assert str(p) in msg and "larger than 1024 KiB" in msg


def test_config_deep_nesting(tmp_path):
    p = toml(tmp_path, "front = " + "[" * 100000 + "\n")
    msg = raises(config.build, path=p)
    assert p in msg and "nested too deeply" in msg


def test_config_huge_number(tmp_path):
    p = toml(tmp_path, GOOD + "fib_table = " + "9" * 5000 + "\n")
    msg = raises(config.build, path=p)
    assert p in msg and "not valid TOML" in msg


@pytest.mark.parametrize("value", ['1', '1.5', 'true', '"x"', '[]', '[1, [2]]', '{a = 1}',
                                   '1979-05-27T07:32:00Z', '"%"', '"../x"', '""'])
@pytest.mark.parametrize("key", ["front", "members_only", "no_route", "lookup", "fib_table",
                                 "source", "accept_table", "backend"])
def test_config_any_value_type_is_a_clean_error(tmp_path, key, value):
    """A value of any TOML type, for any setting, gives a ConfigError or a
    config; never another exception."""
    p = toml(tmp_path, f"{key} = {value}\n" + GOOD.replace('front = "wg0"\n', "" if key == "front" else 'front = "wg0"\n'))
    try:
        config.build(path=p)
    except ConfigError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize("field, value", [
    ("name", "1"), ("name", "[]"), ("member", "1"), ("member", "{a = 1}"), ("tags", '"fe80::1"'),
    ("tags", "[1]"), ("tags", "[[]]"), ("tags", '["::ffff:10.0.0.1"]'), ("source", "[]"),
    ("public_key", "1"), ("public_key", "[]")])
def test_config_peer_field_of_any_type_is_a_clean_error(tmp_path, field, value):
    peer = {"name": '"alice"', "member": '"wg-alice"', field: value}
    p = toml(tmp_path, 'front = "wg0"\n[[peer]]\n' + "".join(f"{k} = {v}\n" for k, v in peer.items()))
    msg = raises(config.build, path=p)
    assert p in msg


def test_attach_fifo_config_is_an_error(tmp_path):
    fifo = str(tmp_path / "wg0.toml")
    os.mkfifo(fifo)
    signal.alarm(10)
    try:
        failed(run("attach", "--config", fifo), fifo, "not a regular file")
    finally:
        signal.alarm(0)


# -- the tags map: refused before anything is written -----------------------------------

def peers_with_tags(*counts):
    out, n = [], 0
    for i, c in enumerate(counts):
        tags = [config.parse_tag(f"10.{(n + j) >> 16 & 255}.{(n + j) >> 8 & 255}.{(n + j) & 255}", "t")
                for j in range(c)]
        n += c
        out.append(PeerConfig(f"p{i}", f"wg-p{i}", tags))
    return out


def test_too_many_tags_on_one_peer():
    msg = raises(config.validate, config.Config("wg0", peers_with_tags(9002)))
    assert "peer 'p0'" in msg and "9002 tags" in msg and str(abi.MAX_TAGS) in msg


def test_too_many_tags_across_peers_names_the_peer_over_the_limit():
    msg = raises(config.validate, config.Config("wg0", peers_with_tags(5000, 3000, 500)))
    assert "peer 'p2'" in msg and "500 tags" in msg and "8500" in msg and str(abi.MAX_TAGS) in msg


def test_tags_up_to_the_limit_are_fine():
    config.validate(config.Config("wg0", peers_with_tags(abi.MAX_TAGS - 2, 2)))


def test_too_many_tags_on_the_command_line(tmp_path):
    tags = ",".join(f"10.0.{i >> 8}.{i & 255}" for i in range(abi.MAX_TAGS + 1))
    failed(run("attach", "wg0", "--peer", f"alice=wg-alice,{tags}"),
           "peer 'alice'", f"{abi.MAX_TAGS + 1} tags", f"at most {abi.MAX_TAGS}")


# -- zones and IPv4 in IPv6 ----------------------------------------------------------------

@pytest.mark.parametrize("args, fragments", [
    (["lookup", "--source", "fe80::1%dev", "--peer", "alice"], ["--source", "'fe80::1%dev'", "scoped"]),
    (["lookup", "fe80::1%wg0"], ["'fe80::1%wg0'", "scoped"]),
    (["route", "add", "fe80::/64%eth0", "alice"], ["'fe80::/64%eth0'", "scoped"]),
    (["route", "add", "fe80::1%eth0/64", "alice"], ["'fe80::1%eth0/64'", "scoped"]),
    (["route", "del", "fe80::%3/64"], ["'fe80::%3/64'", "scoped"]),
    (["route", "add", "::ffff:10.0.0.0/104", "alice"], ["IPv4-mapped", "10.0.0.0/8"]),
    (["route", "add", "::ffff:10.0.0.1/128", "alice"], ["IPv4-mapped", "10.0.0.1"]),
    (["route", "add", "::ffff:0:0/96", "alice"], ["IPv4-mapped", "0.0.0.0/0"]),
    (["route", "add", "::10.0.0.0/104", "alice"], ["IPv4-compatible", "10.0.0.0/8"]),
    (["route", "add", "10.7.0.1/8", "alice"], ["'10.7.0.1/8'", "host bits", "10.0.0.0/8"]),
    (["route", "del", "2001:db8::1/32"], ["host bits", "2001:db8::/32"]),
    (["attach", "wg0", "--peer", "alice=wg-alice,::ffff:10.0.0.1"], ["IPv4-mapped", "10.0.0.1"]),
    (["attach", "wg0", "--peer", "alice=wg-alice,::10.0.0.1"], ["IPv4-compatible", "10.0.0.1"]),
    (["attach", "wg0", "--peer", "alice=wg-alice,fe80::1%wg0"], ["'fe80::1%wg0'", "scoped"]),
    (["attach", "wg0", "--peer", "alice=wg-alice,127.0.0.1"], ["'127.0.0.1'", "loopback"]),
    (["attach", "wg0", "--peer", "alice=wg-alice,::1"], ["'::1'", "loopback"]),
    (["attach", "wg0", "--peer", "alice=wg-alice,255.255.255.255"], ["unicast"]),
])
def test_scoped_and_v4_in_v6_refused(args, fragments):
    failed(run(*args), *fragments)


@pytest.mark.parametrize("text", ["::/0", "::/80", "2001:db8::/32", "::/64", "::1/128", "10.0.0.0/8"])
def test_wider_or_other_v6_prefixes_are_fine(text):
    config.parse_prefix(text, "PREFIX")


def test_v4_in_v6_tag_in_a_config_file(tmp_path):
    p = toml(tmp_path, GOOD.replace('"fe80::1"', '"::ffff:10.255.0.1"'))
    msg = raises(config.build, path=p)
    assert "peer[0].tags[0]" in msg and "IPv4-mapped" in msg and "10.255.0.1" in msg


# -- --metrics-file: checked before attach ---------------------------------------------------

def test_metrics_file_in_a_missing_directory(tmp_path):
    bad = str(tmp_path / "nope" / "wgbpf.prom")
    failed(run("daemon", "wg0", "--peer", "alice=wg-alice", "--metrics-file", bad),
           "--metrics-file", str(tmp_path / "nope"), "does not exist")


def test_the_config_dir_is_checked_and_its_files_not_followed(tmp_path, monkeypatch):
    """Issue 23, item 3: /etc/wgbpf is read implicitly, as root. A file
    there that is a symlink is refused, and so is a directory another user
    could write to; an explicit --config elsewhere may still be a link."""
    d = tmp_path / "etc"
    d.mkdir(mode=0o755)
    monkeypatch.setenv("WGBPF_CONFIG_DIR", str(d))
    real = toml(tmp_path, GOOD)
    (d / "wg0.toml").symlink_to(real)
    msg = raises(config.build, path=str(d / "wg0.toml"))
    assert "symlink" in msg and "wg0.toml" in msg
    (d / "wg0.toml").unlink()
    (d / "wg0.toml").write_text(open(real).read())
    assert config.build(path=str(d / "wg0.toml")).peers[0].name == "alice"
    os.chmod(d, 0o777)
    msg = raises(config.build, path=str(d / "wg0.toml"))
    assert str(d) in msg and "writable by group or others" in msg

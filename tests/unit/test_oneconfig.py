# SPDX-License-Identifier: GPL-2.0-or-later
"""One configuration: <config dir>/<front>.toml as the default, the daemon
adopting the attached instance, the mismatch report; and the lifecycle
pieces that need no kernel (run files, a dead daemon's status, -v, the
front gone for good). No BPF, no device touched: the data plane is faked."""
import fcntl
import ipaddress
import json
import os
import time

import pytest
from click.testing import CliRunner

from wgbpf import abi, cli, config, dataplane, inspect, instance, maps, report
from wgbpf.config import Config, ConfigError, PeerConfig

TOML = """\
[[peer]]
name = "alice"
member = "wg-alice"
tags = ["10.255.0.1", "fe80::1"]

[[peer]]
name = "bob"
member = "wg-bob"
tags = ["fe80::2"]
source = "loose"
"""


def run(*args):
    return CliRunner().invoke(cli.main, list(args), prog_name="wgbpf")


@pytest.fixture
def etc(tmp_path, monkeypatch):
    d = tmp_path / "etc"
    d.mkdir()
    monkeypatch.setenv("WGBPF_CONFIG_DIR", str(d))
    monkeypatch.setattr(maps, "PIN_ROOT", str(tmp_path / "pins"))
    monkeypatch.setattr(instance, "RUN_DIR", str(tmp_path / "run"))
    return d


def attached(peers=None, **settings):
    """A Config as from_attached returns it: alice and bob by default."""
    cfg = Config("wg0", peers or [PeerConfig("alice", "wg-alice", [ipaddress.ip_address("10.255.0.1"),
                                                                   ipaddress.ip_address("fe80::1")]),
                                  PeerConfig("bob", "wg-bob", [ipaddress.ip_address("fe80::2")],
                                             abi.Source.LOOSE)])
    for k, v in settings.items():
        setattr(cfg, k, v)
    return cfg


# -- the default file -------------------------------------------------------------

def test_default_path_follows_the_config_dir(etc):
    assert config.default_path("wg0") == str(etc / "wg0.toml")
    assert config.resolve_path("wg0", (), None) is None  # no file: nothing to read
    (etc / "wg0.toml").write_text(TOML)
    assert config.resolve_path("wg0", (), None) == str(etc / "wg0.toml")
    # --peer or --config given: the default file is not read
    assert config.resolve_path("wg0", ("alice=wg-alice",), None) is None
    assert config.resolve_path("wg0", (), "/other.toml") == "/other.toml"
    assert config.resolve_path(None, (), None) is None  # no front, no file name


def test_attach_reads_the_default_file(etc, monkeypatch):
    (etc / "wg0.toml").write_text(TOML)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    got = {}

    def attach(cfg, log, debug, force=False):
        got["cfg"] = cfg
        return {"front": cfg.front, "created": True, "changes": [], "peers": len(cfg.peers),
                "members_only": False, "pin_dir": "/x", "seconds": 0.1, "warnings": []}
    monkeypatch.setattr(dataplane, "attach", attach)
    monkeypatch.setattr(instance, "notify_attached", lambda front: False)
    r = run("attach", "wg0")
    assert r.exit_code == 0, r.output
    assert [p.name for p in got["cfg"].peers] == ["alice", "bob"]
    assert got["cfg"].peers[1].source == abi.Source.LOOSE


def test_attach_without_peers_names_the_default_file(etc, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    r = run("attach", "wg0")
    assert r.exit_code == 1 and "no peers" in r.output and str(etc / "wg0.toml") in r.output, r.output


def test_an_allowedips_default_file_is_named(etc):
    (etc / "wg0.toml").write_text('backend = "allowedips"\n[[peer]]\nname = "a"\n'
                                  'public_key = "' + "A" * 43 + '="\n')
    r = run("attach", "wg0")
    assert r.exit_code == 1 and f"{etc / 'wg0.toml'}: backend \"allowedips\"" in r.output, r.output


def test_a_broken_default_file_is_an_error_naming_it(etc):
    (etc / "wg0.toml").write_text("[[peer]]\nname = 1\n")
    r = run("attach", "wg0")
    assert r.exit_code == 1 and str(etc / "wg0.toml") in r.output and "Traceback" not in r.output


# -- adoption ------------------------------------------------------------------------

def test_from_attached_reads_peers_tags_and_settings():
    c = abi.Config(front_ifindex=5, no_route=int(abi.Policy.DROP), lookup=int(abi.Lookup.DIR24),
                   source=int(abi.Source.FEASIBLE), accept_table=200, front=b"wg0")
    peers = {1: abi.Peer(ifindex=11, name=b"alice", member=b"wg-alice"),
             2: abi.Peer(ifindex=12, name=b"bob", member=b"wg-bob", source=int(abi.Source.LOOSE))}
    tags = {ipaddress.ip_address("fe80::1"): 1, ipaddress.ip_address("10.255.0.1"): 1,
            ipaddress.ip_address("fe80::2"): 2}
    cfg = config.from_attached("wg0", c, peers, tags)
    assert (cfg.front, cfg.members_only, cfg.no_route, cfg.lookup, cfg.source, cfg.accept_table) == \
        ("wg0", False, abi.Policy.DROP, abi.Lookup.DIR24, abi.Source.FEASIBLE, 200)
    assert [(p.name, p.member, [str(t) for t in p.tags], p.source) for p in cfg.peers] == [
        ("alice", "wg-alice", ["10.255.0.1", "fe80::1"], abi.Source.DEFAULT),
        ("bob", "wg-bob", ["fe80::2"], abi.Source.LOOSE)]
    # members only: no front device recorded
    assert config.from_attached("m0", abi.Config(), peers, tags).members_only


def test_daemon_adopts_the_attached_instance(etc, monkeypatch):
    monkeypatch.setattr(config, "attached_config", lambda front: attached())
    build = config.config_builder("wg0", (), None, None, None, {"lookup": None})
    cfg = build()
    assert build.config == "attached"
    assert [p.name for p in cfg.peers] == ["alice", "bob"]
    # what the command line sets wins over what is attached
    build = config.config_builder("wg0", (), None, None, abi.Policy.DROP, {"lookup": abi.Lookup.FIB})
    cfg = build()
    assert (cfg.lookup, cfg.no_route) == (abi.Lookup.FIB, abi.Policy.DROP)


def test_daemon_with_nothing_attached_and_no_file(etc, monkeypatch):
    monkeypatch.setattr(config, "attached_config", lambda front: None)
    with pytest.raises(ConfigError, match="no peers.*wg0.toml.*attach wg0 first"):
        config.config_builder("wg0", (), None, None, None)()


def test_daemon_prefers_the_file_and_logs_how_the_attached_differs(etc, monkeypatch):
    (etc / "wg0.toml").write_text(TOML)
    carol = PeerConfig("carol", "wg-carol", [ipaddress.ip_address("fe80::3")])
    monkeypatch.setattr(config, "attached_config",
                        lambda front: attached(attached().peers[:1] + [carol], lookup=abi.Lookup.DIR24))
    logged = []
    build = config.config_builder("wg0", (), None, None, None, {}, log=logged.append)
    build(quiet=True)  # the command line's check: not logged
    assert logged == []
    cfg = build()
    assert build.config == str(etc / "wg0.toml")
    assert [p.name for p in cfg.peers] == ["alice", "bob"]  # the file's, not the attached
    assert len(logged) == 1 and "attaching the config" in logged[0]
    for fragment in ("lookup: attached dir24, config lpm", "peer bob: in the config, not attached",
                     "peer carol: attached, not in the config"):
        assert fragment in logged[0]


# -- the mismatch report --------------------------------------------------------------

def test_differences():
    assert config.differences(attached(), attached()) == []
    other = attached([PeerConfig("alice", "wg-a2", [ipaddress.ip_address("10.255.0.9")], abi.Source.OFF)],
                     no_route=abi.Policy.DROP)
    assert config.differences(attached(), other) == [
        "no_route: attached pass, config drop",
        "peer alice: member attached wg-alice, config wg-a2",
        "peer alice: tags attached 10.255.0.1,fe80::1, config 10.255.0.9",
        "peer alice: source attached default, config off",
        "peer bob: attached, not in the config"]
    # tag order is no difference
    swapped = attached()
    swapped.peers[0].tags.reverse()
    assert config.differences(attached(), swapped) == []


def test_status_reports_the_mismatch(etc, monkeypatch):
    (etc / "wg0.toml").write_text(TOML)
    monkeypatch.setattr(config, "attached_config", lambda front: attached(attached().peers[:1]))
    rep = inspect.config_report("wg0", None)
    assert rep == {"path": str(etc / "wg0.toml"), "differences": ["peer bob: in the config, not attached"]}
    lines = inspect.problems({"front": "wg0", "config": rep, "forwarding_off": ["net.ipv4.conf.wg0.forwarding"]})
    assert lines == ["wg0: forwarding off (net.ipv4.conf.wg0.forwarding): traffic between peers is dropped",
                     f"wg0: differs from {etc / 'wg0.toml'}: peer bob: in the config, not attached"]
    # a running daemon's own config is the one compared; an adopting daemon has none
    assert inspect.config_report("wg0", {"state": "running", "config": "attached"}) == {"source": "attached"}
    assert inspect.config_report("wg0", {"state": "stopped", "config": "attached"})["path"] == str(etc / "wg0.toml")
    (etc / "wg0.toml").write_text("front = 1\n")
    assert "error" in inspect.config_report("wg0", None)


def test_a_command_line_daemon_compares_itself_and_check_says_so(monkeypatch):
    """A daemon run from its command line (`--source feasible`, say) under
    which an operator attaches other settings: after its resync the
    daemon says how the attached instance differs, and `status --check`
    fails on it (it said ok before)."""
    from wgbpf import daemon
    d = daemon.Daemon.__new__(daemon.Daemon)
    d.stats, d.cfg = {}, attached()
    d.build_config = lambda: None
    d.build_config.config = "command line"
    monkeypatch.setattr(config, "attached_differences", lambda cfg: ["source: attached strict, config feasible"])
    d.note_differences()
    dmn = {"state": "running", "config": "command line", **d.stats}
    rep = inspect.config_report("wg0", dmn)
    assert rep["differences"] == ["source: attached strict, config feasible"]
    assert inspect.problems({"front": "wg0", "config": rep}) == [
        "wg0: differs from the daemon's command line: source: attached strict, config feasible"]
    assert "DIFFERS" in report.config_lines(rep)[0]
    monkeypatch.setattr(config, "attached_differences", lambda cfg: [])
    d.note_differences()
    rep = inspect.config_report("wg0", {"state": "running", "config": "command line", **d.stats})
    assert inspect.problems({"front": "wg0", "config": rep}) == []
    assert report.config_lines(rep) == ["config: the daemon's command line"]
    d.build_config.config = "attached"  # adopting: nothing of its own to compare
    d.note_differences()
    assert "config_differences" not in d.stats


def test_no_file_nothing_to_compare(etc):
    assert inspect.config_report("wg0", None) is None


# -- forwarding ----------------------------------------------------------------------

def test_forwarding_off_in_every_mode(monkeypatch):
    values = {"ipv4/conf/wg0/forwarding": "0", "ipv6/conf/all/forwarding": "1"}
    monkeypatch.setattr(dataplane.preflight, "_sysctl", lambda k: values.get(k))
    assert dataplane.forwarding_off(["wg0"]) == ["net.ipv4.conf.wg0.forwarding"]
    assert "sysctl -w net.ipv4.conf.wg0.forwarding=1" in dataplane.forwarding_warning(["net.ipv4.conf.wg0.forwarding"])
    values["ipv6/conf/all/forwarding"] = "0"
    assert dataplane.forwarding_off(["wg0", "gone0"]) == ["net.ipv4.conf.wg0.forwarding",
                                                           "net.ipv6.conf.all.forwarding"]
    assert dataplane.forwarding_warning([]) is None


# -- lifecycle: run files, a dead daemon --------------------------------------------------

def status_file(front, **st):
    os.makedirs(instance.run_dir(), exist_ok=True)
    with open(instance.status_path(front), "w") as f:
        json.dump(st, f)


def test_a_dead_daemon_is_known_by_its_free_lock(etc):
    # its pid is alive (ours, as a reused pid would be), but nobody holds the lock
    status_file("wg0", state="running", pid=os.getpid())
    assert instance.read_status("wg0")["state"] == "not running"
    fd = os.open(instance.lock_path("wg0"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert instance.read_status("wg0")["state"] == "running"
        status_file("wg0", state="stopped", pid=os.getpid())
        assert instance.read_status("wg0")["state"] == "stopped"
    finally:
        os.close(fd)


def test_a_gone_allowedips_daemon_is_not_listed(etc):
    status_file("nosuchdev0", state="stopped", pid=1, backend="allowedips")
    status_file("lo", state="stopped", pid=1, backend="allowedips")  # its device is here
    assert list(instance.allowedips_daemons()) == ["lo"]


def test_detach_removes_the_run_files(etc, monkeypatch):
    monkeypatch.setattr(instance, "build_path", lambda front, netns=None: os.path.join(instance.run_dir(), f"{front}.build"))
    status_file("wg0", state="stopped", pid=1)
    paths = [instance.lock_path("wg0"), instance.writer_lock_path("wg0"), instance.build_path("wg0")]
    for p in paths:
        open(p, "w").close()
    # a daemon still holds its lock: its files stay, the build record goes
    fd = os.open(instance.lock_path("wg0"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert instance.remove_run_files("wg0") == [instance.build_path("wg0")]
    finally:
        os.close(fd)
    assert os.path.exists(instance.status_path("wg0"))
    removed = instance.remove_run_files("wg0")
    assert sorted(removed) == sorted([instance.status_path("wg0")] + paths[:2])
    assert not os.path.exists(instance.run_dir())  # the namespace's last instance


def test_writer_lock_follows_a_removed_file(etc):
    with instance.writer_lock("wg0"):
        os.unlink(instance.writer_lock_path("wg0"))
    with instance.writer_lock("wg0"):  # taken anew, on a file that exists
        assert os.path.exists(instance.writer_lock_path("wg0"))


def test_writer_lock_generation_moves_with_every_other_writer(etc):
    """The daemon follows route events without reading the maps back while
    the generation it read is the lock's: any other writer (route, attach,
    detach) moves it, the daemon's own turns do not, and a writer busy
    elsewhere is seen (None) rather than waited for."""
    with instance.writer_lock("wg0", bump=False) as fd:
        seen = instance.generation(fd)
    with instance.writer_lock("wg0", bump=False) as fd:
        assert instance.generation(fd) == seen  # our own turn: unchanged
    with instance.writer_lock("wg0"):  # `wgbpf route add`
        pid = os.fork()
        if pid == 0:  # another process, while it is held: not waited for
            with instance.writer_lock("wg0", wait=False, bump=False) as busy:
                os._exit(0 if busy is None else 1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    with instance.writer_lock("wg0", bump=False) as fd:
        moved = instance.generation(fd)
        assert moved != seen
    pid = os.fork()
    if pid == 0:  # a writer killed halfway, before it could release the lock
        with instance.writer_lock("wg0"):
            os.kill(os.getpid(), 9)
    os.waitpid(pid, 0)
    with instance.writer_lock("wg0", bump=False) as fd:
        assert instance.generation(fd) != moved  # moved as it was taken
        moved = instance.generation(fd)
    with instance.writer_lock("wg0"):  # a detach: the file removed, then an attach
        os.unlink(instance.writer_lock_path("wg0"))
    with instance.writer_lock("wg0"):
        pass
    with instance.writer_lock("wg0", bump=False) as fd:
        assert instance.generation(fd) not in (seen, moved)  # even on the same inode


def test_a_writer_lock_held_too_long_is_an_error_naming_the_holder(etc):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a writer that stopped while holding it
        with instance.writer_lock("wg0"):
            os.write(w, b"x")
            time.sleep(30)
        os._exit(0)
    try:
        os.read(r, 1)
        heard = []
        with pytest.raises(instance.InstanceError, match=rf"pid {pid} .* has held the writer lock of wg0 for 0.3s"):
            with instance.writer_lock("wg0", heard.append, timeout=0.3):
                pass
        assert heard and heard[0].startswith(f"pid {pid}")
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)

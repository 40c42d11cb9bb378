# SPDX-License-Identifier: GPL-2.0-or-later
"""End to end: the recipes in docs/recipes/, run as the pages show them.

        alice ----\\                 /---- bob       BIRD (BGP), babeld or FRR (BGP,
                   wg-alice  wg0  wg-bob           OSPF) on the hub, BIRD or babeld on each spoke
                          \\_ hub _/
                          wg-carol ---- carol

Each page's code blocks marked `file=NAME` are its files: shell run in the
hub's namespace, wgbpf's TOML, BIRD's and babeld's configs, the start
commands. The lab (lab/lab.sh) builds the WireGuard devices the pages
assume; the test replaces only device names and file paths (the lab's
names are unique per run) and then checks what the page says an operator
should see: routes learned, `wgbpf dump`, traffic between spokes, a forged
source dropped and counted. Every BIRD/babeld gets its own control socket,
every FRR its own pathspace (-N), and each is killed at teardown (FRR's
/var/run/frr/<pathspace> removed), even on failure.
"""
import contextlib
import ipaddress
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from wgbtest import RUN_ID, require_tools
from labutil import ROOT, TIME_SCALE, DaemonProc, lab_session, run, wg_pubkey

pytestmark = [pytest.mark.root, pytest.mark.e2e]
RECIPES = os.path.join(ROOT, "docs", "recipes")
# The module takes ~3 minutes on the host. Under emulation (the vm tier sets
# WGBPF_TIME_SCALE above 1) its first three recipes took 16 minutes (each
# lab and attach ~3), so there only the babel recipe runs, the one that
# tells most about kernel WireGuard (Hellos cloned to every member,
# link-local-only peers); the others are skipped unless WGBPF_E2E_SLOW=1.
SLOW = pytest.mark.skipif(TIME_SCALE > 1 and os.environ.get("WGBPF_E2E_SLOW") != "1",
                          reason="slow under emulation (run on the host; WGBPF_E2E_SLOW=1 runs it here)")


def blocks(page):
    """{NAME: text} of the page's code blocks whose info string says file=NAME."""
    with open(os.path.join(RECIPES, page)) as f:
        text = f.read()
    found = re.findall(r"^```\S* file=(\S+)\n(.*?)^```$", text, re.M | re.S)
    return dict(found)


def substitute(text, mapping):
    """Replace whole names (devices, paths) in one pass: a replacement is
    never replaced again."""
    keys = sorted(mapping, key=len, reverse=True)
    pattern = r"(?<![\w./-])(" + "|".join(map(re.escape, keys)) + r")(?![\w-])"
    return re.sub(pattern, lambda m: mapping[m.group(1)], text)


def lab_names(lab):
    """The pages' device names (lab/lab.sh without LAB_ID) -> this lab's."""
    names = {"wg0": lab.front}
    for n, p in lab.peers.items():
        names[f"wg-{n}"] = p["member"]
        names[f"wgs-{n}"] = p["spoke_dev"]
    return names


def wgbpf_bin(workdir):
    """A directory whose `wgbpf` is this checkout's, as the tests run it."""
    path = os.path.join(workdir, "bin")
    os.mkdir(path)
    with open(os.path.join(path, "wgbpf"), "w") as f:
        f.write(f'#!/bin/sh\nPYTHONPATH={shlex.quote(ROOT)} exec {shlex.quote(sys.executable)} -m wgbpf.cli "$@"\n')
    os.chmod(os.path.join(path, "wgbpf"), 0o755)
    return path


def nsrun(ns, *cmd, bindir=None, check=True, timeout=60):
    """A command in netns `ns` by nsenter: unlike `ip netns exec` it keeps
    /sys/fs/bpf (wgbpf's pins) visible."""
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}") if bindir else None
    r = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *cmd], capture_output=True, text=True,
                       env=env, timeout=timeout * TIME_SCALE)
    if check:
        assert r.returncode == 0, f"{ns}: {' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


def script(ns, text, bindir):
    """A page's shell block, line by line as an operator pastes it."""
    return nsrun(ns, "bash", "-euxc", text, bindir=bindir)


class Routing:
    """A routing daemon in netns `ns`, in the foreground, its output in
    workdir/name.log; killed by stop()."""

    def __init__(self, ns, argv, workdir, name):
        self.name = name
        self.log = open(os.path.join(workdir, f"{name}.log"), "w+")
        self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", *argv],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Babeld(Routing):
    """`babeld` with its own pid file, state file and (read-only) control
    socket: the page's command with these added."""

    def __init__(self, ns, args, workdir, name):
        self.sock = os.path.join(workdir, f"{name}.sock")
        files = ["-I", os.path.join(workdir, f"{name}.pid"), "-S", os.path.join(workdir, f"{name}.state"),
                 "-g", self.sock]
        super().__init__(ns, [args[0], *files, *args[1:]], workdir, name)

    def dump(self):
        """babeld's `dump` on its control socket: neighbours and routes."""
        def reply(s):  # up to babeld's ok/no/bad line
            out = b""
            while not re.search(rb"^(ok|no|bad)\n", out, re.M):
                chunk = s.recv(65536)
                assert chunk, f"babeld closed its socket: {out!r}"
                out += chunk
            return out

        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5 * TIME_SCALE)
            s.connect(self.sock)
            reply(s)  # the greeting
            s.sendall(b"dump\n")
            out = reply(s)
        return out.decode()


class Bird(Routing):
    """`bird` in the foreground (-f) with a control socket of its own (-s):
    the page's command with these added."""

    def __init__(self, ns, args, workdir, name):
        self.sock = os.path.join(workdir, f"{name}.ctl")
        super().__init__(ns, [args[0], "-f", "-s", self.sock, *args[1:]], workdir, name)

    def birdc(self, *cmd):
        r = run("birdc", "-s", self.sock, *cmd)
        assert r.returncode == 0, f"birdc {' '.join(cmd)}: {r.stdout}{r.stderr}"
        return r.stdout

    def import_filtered(self, protocol):
        """Updates the protocol's import filter refused (`show protocols all`)."""
        text = self.birdc("show", "protocols", "all", protocol)
        # Route change stats:  received  rejected  filtered  ignored  accepted
        m = re.search(r"Import updates:\s+(\d+)\s+(\d+)\s+(\d+)", text)
        assert m, text
        return int(m.group(3))


FRR_SBIN = "/usr/lib/frr"
FRR_RUN = "/var/run/frr"


class FrrDaemon(Routing):
    """An FRR daemon (zebra, staticd, bgpd) from a page's start line, in the
    foreground (its -d dropped) with its log on stdout; started means its
    vty socket is there (a stale one from a killed predecessor removed
    first)."""

    def __init__(self, ns, args, workdir, pathspace):
        daemon = os.path.basename(args[0])
        self.vty = os.path.join(FRR_RUN, pathspace, f"{daemon}.vty")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.vty)
        super().__init__(ns, [a for a in args if a != "-d"] + ["--log", "stdout"], workdir, f"frr-{daemon}")
        try:
            wait_until(lambda: os.path.exists(self.vty) or self.proc.poll() is not None,
                       f"{daemon}'s vty socket {self.vty}")
            assert self.proc.poll() is None, f"{daemon} exited {self.proc.returncode}: {self.text()}"
        except BaseException:
            self.stop()
            raise

    def text(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()


def wait_until(check, what, timeout=30):
    deadline = time.monotonic() + timeout * TIME_SCALE
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timeout waiting for {what}"
        time.sleep(0.2)


class Recipe:
    """One page on one lab: its files written with the lab's names, the
    processes it starts, all stopped by close()."""

    def __init__(self, lab, page, *more):
        """`more`: pages whose files this one uses too (its own win)."""
        self.lab = lab
        self.files = {}
        for pg in (*reversed(more), page):
            self.files.update(blocks(pg))
        self.dir = tempfile.mkdtemp(prefix="wgbpf-recipe-")
        self.names = lab_names(lab)
        self.procs = []
        self.bin = wgbpf_bin(self.dir)

    def script(self, ns, name, paths=None):
        return script(ns, self.text(name, paths), self.bin)

    def path(self, name):
        return os.path.join(self.dir, name)

    def text(self, name, paths=None, extra=None):
        """File `name` with the lab's device names and `paths` (page path ->
        file name in the work dir) substituted; `extra` first."""
        text = self.files[name]
        for old, new in (extra or {}).items():
            text = re.sub(old, new, text, flags=re.M)
        mapping = dict(self.names)
        mapping.update({p: self.path(f) for p, f in (paths or {}).items()})
        return substitute(text, mapping)

    def write(self, name, text=None):
        with open(self.path(name), "w") as f:
            f.write(self.text(name) if text is None else text)
        return self.path(name)

    def start(self, ns, line, name):
        """One start command from a page: `bird ...` or `wgbpf daemon ...`."""
        args = shlex.split(line.split("#", 1)[0])
        if args[0] == "bird":
            p = Bird(ns, args, self.dir, name)
        elif args[0] == "babeld":
            p = Babeld(ns, args, self.dir, name)
        elif args[:2] == ["wgbpf", "daemon"]:
            p = DaemonProc(ns, *args[1:])
        elif os.path.dirname(args[0]) == FRR_SBIN:  # zebra, staticd, bgpd -N PATHSPACE
            p = FrrDaemon(ns, args, self.dir, args[args.index("-N") + 1])
        else:
            raise AssertionError(f"unknown start command: {line}")
        self.procs.append(p)
        return p

    def start_hub(self, paths):
        """The page's start.sh in the hub, line by line: {command: process}."""
        return {line.split()[0]: self.start(self.lab.hub, line, "hub")
                for line in self.text("start.sh", paths).strip().splitlines()}

    def bird_spoke(self, ns, name, tunnel, **defines):
        """A spoke's BIRD from bird-spoke.conf, its `define`s and tunnel
        (the page's 'wgs-alice') put in."""
        extra = {rf"^define {k} = [^;]+;": f"define {k} = {v};" for k, v in defines.items()}
        extra[r"'wgs-alice'"] = f"'{tunnel}'"
        conf = self.write(f"bird-{name}.conf", self.text("bird-spoke.conf", extra=extra))
        self.start(ns, f"bird -c {conf}", name)

    def bird_spokes(self, names=None):
        """The lab's spokes' BIRDs, with their numbers."""
        for name, p in self.lab.peers.items():
            if names is None or name in names:
                self.bird_spoke(p["ns"], name, f"wgs-{name}", MY_AS=65000 + p["index"], MY_ADDR=p["tag4"])

    def close(self):
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                p.stop(signal.SIGKILL) if isinstance(p, DaemonProc) else p.stop()
        subprocess.run(["rm", "-rf", self.dir])


@contextlib.contextmanager
def recipe_lab(lab_id, page, *more):
    """A lab whose hub gets its routes from the routing daemon a recipe page
    starts (the lab's plain `dev front` routes and the spokes' tag /32s go),
    and that page's Recipe. Afterwards the recipe's processes are stopped,
    then the lab goes (lab_session), also when the setup failed."""
    with lab_session(lab_id, "ping", "nsenter") as lab:
        lab.drop_front_routes()
        for p in lab.peers.values():
            lab.ip("route", "del", f"{p['tag4']}/32")
        recipe = Recipe(lab, page, *more)
        try:
            yield lab, recipe
        finally:
            recipe.close()


def spokes_on_a_24(lab):
    """The BGP pages' /24 on each spoke's tunnel, added before the lab's
    /32 goes (a device's last IPv4 address takes its routes along)."""
    for name, p in lab.peers.items():
        spoke(lab, name, "ip", "addr", "add", f"{p['tag4']}/24", "dev", p["spoke_dev"])
        spoke(lab, name, "ip", "addr", "del", f"{p['tag4']}/32", "dev", p["spoke_dev"])


def spoke(lab, name, *cmd):
    r = lab.spoke(name, *cmd)
    assert r.returncode == 0, f"{name}: {' '.join(cmd)}: {r.stderr}"
    return r


def dump_routes(lab):
    """{prefix: [peer, ...]} from `wgbpf dump --json`."""
    return {r["prefix"]: sorted(r["peers"]) for r in lab.dump()["routes"]}


# ------------------------------------------------------ (1) BIRD, BGP ----

@pytest.fixture(scope="module")
def bgp():
    require_tools("bird", "birdc")
    with recipe_lab(f"b{RUN_ID}", "bgp-bird.md") as (lab, recipe):
        spokes_on_a_24(lab)
        recipe.write("wg0.toml")
        recipe.write("bird-hub.conf")
        paths = {"/etc/wgbpf/wg0.toml": "wg0.toml", "/etc/bird/bird.conf": "bird-hub.conf"}
        recipe.script(lab.hub, "hub.sh", paths)
        lab.bird = recipe.start_hub(paths)["bird"]
        recipe.bird_spokes()
        for name in ("bob", "carol"):  # the anycast prefix, as the page says
            spoke(lab, name, "ip", "addr", "add", "10.99.0.1/24", "dev", "lan0")
        yield lab


@SLOW
def test_bgp_routes_learned_and_in_the_maps(bgp):
    want = {"10.1.0.0/16": ["alice"], "10.2.0.0/16": ["bob"], "10.3.0.0/16": ["carol"],
            "10.99.0.0/24": ["bob", "carol"],
            "fd00:1::/48": ["alice"], "fd00:2::/48": ["bob"], "fd00:3::/48": ["carol"]}

    def in_dump():
        got = dump_routes(bgp)
        return all(got.get(p) == peers for p, peers in want.items())

    wait_until(in_dump, f"wgbpf dump to hold {want}")
    protocols = bgp.bird.birdc("show", "protocols")
    assert protocols.count("Established") == 6, protocols
    ecmp = bgp.bird.birdc("show", "route", "10.99.0.0/24")
    assert "via 10.255.0.2" in ecmp and "via 10.255.0.3" in ecmp, ecmp
    kernel = bgp.ip("route", "show", "10.99.0.0/24").stdout
    assert kernel.count("nexthop via") == 2, kernel
    # the status file follows the maps within a second
    wait_until(lambda: "routes per peer: alice 2, bob 3, carol 3" in bgp.wgbpf("status").stdout,
               "wgbpf status to count the routes per peer")
    assert "daemon: running" in bgp.wgbpf("status").stdout


@SLOW
def test_bgp_traffic_between_spokes_and_anycast(bgp):
    assert bgp.ping("alice", "10.2.0.1", count=2)
    assert bgp.ping("alice", "fd00:3::1", count=2)
    assert bgp.ping("alice", "10.99.0.1", count=2)


@SLOW
def test_bgp_forged_source_dropped_and_counted(bgp):
    """Alice claims an address of bob's: her BIRD announces it, the hub's
    import filter refuses it, and the source check drops her packets."""
    forged = "10.2.0.99"
    spoke(bgp, "alice", "ip", "addr", "add", f"{forged}/32", "dev", "lan0")
    wait_until(lambda: bgp.bird.import_filtered("alice4") >= 1, "the hub's BIRD to filter alice's 10.2.0.99/32")
    assert f"{forged}/32" not in dump_routes(bgp)
    before = bgp.status()["counters"]["spoofed"], bgp.peer("alice")["spoofed"]
    assert not bgp.ping("alice", "10.3.0.1", count=2, extra=("-I", forged))
    after = bgp.status()["counters"]["spoofed"], bgp.peer("alice")["spoofed"]
    assert after[0] - before[0] >= 2 and after[1] - before[1] >= 2, (before, after)


# ------------------------------------------------------ (2) babeld ----

@pytest.fixture(scope="module")
def babel():
    require_tools("babeld")
    with recipe_lab(f"v{RUN_ID}", "babel.md") as (lab, recipe):
        no_ipv4_on_tunnels(lab)
        start_babel(lab, recipe)
        yield lab


def no_ipv4_on_tunnels(lab):
    """No IPv4 address on any tunnel: babeld announces IPv4 via IPv6."""
    lab.ip("addr", "del", f"{lab.info['front_addr4']}/32", "dev", lab.front)
    for name, p in lab.peers.items():
        spoke(lab, name, "ip", "addr", "del", f"{p['tag4']}/32", "dev", p["spoke_dev"])


def start_babel(lab, recipe):
    """A babel page's hub (its hub.sh, babeld, the daemon) and spokes."""
    recipe.write("wg0.toml")
    recipe.write("babeld-hub.conf")
    paths = {"/etc/wgbpf/wg0.toml": "wg0.toml", "/etc/babeld.conf": "babeld-hub.conf"}
    recipe.script(lab.hub, "hub.sh", paths)
    lab.babeld = recipe.start_hub(paths)["babeld"]
    for name, p in lab.peers.items():
        conf = recipe.write(f"babeld-{name}.conf",
                            recipe.text("babeld-spoke.conf", extra={
            r"wgs-alice": f"wgs-{name}", r"pref-src 10\.1\.0\.1": f"pref-src {p['host4']}"}))
        recipe.start(p["ns"], f"babeld -c {conf}", name)


def test_babel_routes_v4_via_v6_in_the_maps(babel):
    want = {"10.1.0.0/16": ["alice"], "10.2.0.0/16": ["bob"], "10.3.0.0/16": ["carol"],
            "fd00:1::/48": ["alice"], "fd00:2::/48": ["bob"], "fd00:3::/48": ["carol"]}
    wait_until(lambda: all(dump_routes(babel).get(p) == v for p, v in want.items()),
               f"wgbpf dump to hold {want}")
    kernel = babel.ip("route", "show", "proto", "babel").stdout
    assert f"10.2.0.0/16 via inet6 fe80::2 dev {babel.front}" in kernel, kernel
    dump = babel.babeld.dump()
    assert dump.count("add neighbour") == 3, dump
    wait_until(lambda: "routes per peer: alice 2, bob 2, carol 2" in babel.wgbpf("status").stdout,
               "wgbpf status to count the routes per peer")
    # the spokes learn each other's prefixes through the hub, IPv4 via IPv6 too
    for name, p in babel.peers.items():
        others = [q["prefix4"] for q in babel.peers.values() if q is not p]
        wait_until(lambda: all("via inet6 fe80::fe" in babel.spoke(name, "ip", "route", "show", o).stdout
                               for o in others), f"{name} to learn {others} from the hub")
    assert babel.ping("alice", "10.2.0.1", count=2)
    assert babel.ping("alice", "fd00:3::1", count=2)


def test_babel_forged_source_dropped_and_counted(babel):
    """Alice announces a prefix of bob's: the hub's `in` filter drops it,
    and the source check drops what she sends from it."""
    spoke(babel, "alice", "ip", "addr", "add", "10.2.99.1/24", "dev", "lan0")
    time.sleep(2 * TIME_SCALE)  # a few Babel updates
    assert "10.2.99.0/24" not in dump_routes(babel)
    assert babel.ip("route", "show", "10.2.99.0/24").stdout == ""
    before = babel.status()["counters"]["spoofed"], babel.peer("alice")["spoofed"]
    assert not babel.ping("alice", "10.3.0.1", count=2, extra=("-I", "10.2.99.1"))
    after = babel.status()["counters"]["spoofed"], babel.peer("alice")["spoofed"]
    assert after[0] - before[0] >= 2 and after[1] - before[1] >= 2, (before, after)


# ------------------------------------------ (2b) babeld, RTT cost ----

class Relay:
    """lab/relay.py between a spoke's WireGuard and its hub member, both
    ends pointed at it (WireGuard roams to the last source, so each must
    see the relay alone): delay and loss set at will, bounded in rate and
    time by the relay itself."""

    def __init__(self, lab, name, workdir):
        p = lab.peers[name]
        i = p["index"]
        hub_side, spoke_side = f"198.18.{i}.1", f"198.18.{i}.2"  # lab.sh's underlay
        self.control = os.path.join(workdir, f"relay-{name}.ctl")
        self.set(0, 0)
        self.log = open(os.path.join(workdir, f"relay-{name}.log"), "w+")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{lab.hub}", sys.executable, os.path.join(ROOT, "lab", "relay.py"),
             "--listen", f"{hub_side}:{52000 + i}", "--inner", f"{hub_side}:{52100 + i}",
             "--to", f"{hub_side}:{51800 + i}", "--back", f"{spoke_side}:51900",
             "--control", self.control, "--lifetime", "900", "--max-pps", "5000"],
            stdout=self.log, stderr=subprocess.STDOUT)
        member_pub, spoke_pub = wg_pubkey(lab.hub, p["member"]), wg_pubkey(p["ns"], p["spoke_dev"])
        nsrun(p["ns"], "wg", "set", p["spoke_dev"], "peer", member_pub, "endpoint", f"{hub_side}:{52000 + i}")
        nsrun(lab.hub, "wg", "set", p["member"], "peer", spoke_pub, "endpoint", f"{hub_side}:{52100 + i}")

    def set(self, delay_ms, loss=0.0):
        """The path's delay (each way) and loss from now on: the control
        file written whole and renamed into place."""
        tmp = self.control + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{delay_ms} {loss}\n")
        os.replace(tmp, self.control)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def babel_rtt():
    """The babel-rtt page on a lab (babel.md's files but for the hub's
    babeld.conf), bob's and carol's paths through relays from the start,
    both holding the anycast 10.99.0.1/24."""
    require_tools("babeld", "wg")
    with recipe_lab(f"t{RUN_ID}", "babel-rtt.md", "babel.md") as (lab, recipe):
        no_ipv4_on_tunnels(lab)
        lab.relays = {}
        try:
            for name in ("bob", "carol"):
                lab.relays[name] = Relay(lab, name, recipe.dir)
                spoke(lab, name, "ip", "addr", "add", "10.99.0.1/24", "dev", "lan0")
            start_babel(lab, recipe)
            yield lab
        finally:
            for r in lab.relays.values():
                r.stop()


def anycast_holder(lab):
    return dump_routes(lab).get("10.99.0.0/24")


def neighbour_rtt(lab, name):
    """The hub's babeld's RTT to a spoke, in ms (its `dump`), or None."""
    tag = lab.peers[name]["tag6"]
    m = re.search(rf"add neighbour \S+ address {re.escape(tag)} .*? rtt ([0-9.]+)", lab.babeld.dump())
    return float(m.group(1)) if m else None


@SLOW
def test_babel_rtt_moves_the_anycast_prefix_to_the_faster_spoke(babel_rtt):
    """The spoke holding the anycast prefix gets a slow path (+50 ms of
    round trip, 25 ms each way): babeld's RTT cost moves the prefix to the other within seconds,
    the maps follow, and traffic reaches it; healed, and the other path
    slowed, it moves back."""
    lab = babel_rtt
    wait_until(lambda: anycast_holder(lab) in (["bob"], ["carol"]), "the anycast prefix in the maps")
    first = anycast_holder(lab)[0]
    second = "carol" if first == "bob" else "bob"
    moves = []
    for slow, fast in ((first, second), (second, first)):
        lab.relays[fast].set(0)
        lab.relays[slow].set(25)
        t0 = time.monotonic()
        wait_until(lambda: anycast_holder(lab) == [fast], f"10.99.0.0/24 to move to {fast}", timeout=60)
        moves.append(time.monotonic() - t0)
        kernel = lab.ip("route", "show", "10.99.0.0/24").stdout
        assert f"via inet6 {lab.peers[fast]['tag6']} " in kernel, kernel
        assert json.loads(lab.wgbpf("lookup", "10.99.0.1", "--json").stdout)["peers"] == [fast]
        # measured through the relay (a moving average, still climbing):
        # above rtt-min, where its cost starts, and above the other's
        rtt = {n: neighbour_rtt(lab, n) for n in (slow, fast)}
        assert rtt[slow] > 10 and rtt[slow] > rtt[fast], (rtt, lab.babeld.dump())
        assert lab.ping("alice", "10.99.0.1", count=2)
    print(f"anycast moved to the faster spoke {moves[0]:.1f} s and {moves[1]:.1f} s after its path slowed; "
          f"RTTs now bob {neighbour_rtt(lab, 'bob')} ms, carol {neighbour_rtt(lab, 'carol')} ms")


# ---------------------------------------- (3) --backend allowedips ----

@pytest.fixture(scope="module")
def allowedips():
    require_tools("bird", "birdc")
    with recipe_lab(f"g{RUN_ID}", "allowedips.md", "bgp-bird.md") as (lab, recipe):
        spokes_on_a_24(lab)
        # each spoke's tunnel peers with the hub's wg0 instead of its member
        front_pub = wg_pubkey(lab.hub, lab.front)
        keys = {}
        for name, p in lab.peers.items():
            keys[f"{name.upper()}_PUBLIC_KEY"] = wg_pubkey(p["ns"], p["spoke_dev"])
            spoke(lab, name, "wg", "set", p["spoke_dev"], "peer", wg_pubkey(lab.hub, p["member"]), "remove",
                  "peer", front_pub, "allowed-ips", "0.0.0.0/0,::/0", "endpoint", f"198.18.{p['index']}.1:51800")
            lab.ip("link", "set", p["member"], "down")  # its port stays; its tunnel is unused
        recipe.write("wg0.toml", recipe.text("wg0.toml", extra=keys))
        recipe.write("bird-hub.conf")
        paths = {"/etc/wgbpf/wg0.toml": "wg0.toml", "/etc/bird/bird.conf": "bird-hub.conf"}
        script(lab.hub, recipe.text("hub.sh", paths, extra=keys), recipe.bin)
        lab.bird = recipe.start_hub(paths)["bird"]
        recipe.bird_spokes()
        for name in ("bob", "carol"):  # the anycast prefix, as the BGP page says
            spoke(lab, name, "ip", "addr", "add", "10.99.0.1/24", "dev", "lan0")
        lab.keys = {v: k.split("_")[0].lower() for k, v in keys.items()}
        yield lab


def allowed_ips(lab):
    """{peer: set of AllowedIPs} as `wg show wg0 allowed-ips` prints them."""
    r = run("ip", "netns", "exec", lab.hub, "wg", "show", lab.front, "allowed-ips")
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines():
        key, _, ips = line.partition("\t")
        out[lab.keys[key]] = set(ips.split()) - {"(none)"}
    return out


@SLOW
def test_allowedips_follow_bgp_and_carry_traffic(allowedips):
    lab = allowedips
    want = {n: {p["tag4"] + "/32", p["tag6"] + "/128", p["prefix4"], p["prefix6"]} for n, p in lab.peers.items()}

    def complete():
        got = allowed_ips(lab)
        return all(want[n] <= got[n] for n in want) and \
            sum("10.99.0.0/24" in ips for ips in got.values()) == 1 and got
    got = wait_until(complete, f"AllowedIPs to hold {want} and the anycast prefix once")
    assert any("10.99.0.0/24" in got[n] for n in ("bob", "carol")), got
    wait_until(lambda: lab.status()["daemon"].get("ecmp_prefixes") == 1, "status to count one ECMP prefix")
    assert "1 ECMP prefixes" in lab.wgbpf("status").stdout
    assert lab.ping("alice", "10.2.0.1", count=2)
    assert lab.ping("alice", "fd00:3::1", count=2)
    assert lab.ping("alice", "10.99.0.1", count=2)
    # alice claims an address of bob's: filtered by BIRD, refused by WireGuard
    spoke(lab, "alice", "ip", "addr", "add", "10.2.0.99/32", "dev", "lan0")
    wait_until(lambda: lab.bird.import_filtered("alice4") >= 1, "the hub's BIRD to filter alice's 10.2.0.99/32")
    assert not lab.ping("alice", "10.3.0.1", count=2, extra=("-I", "10.2.0.99"))


# ---------------------------------------------------- (4) two hubs ----

def move(ns_from, dev, ns_to):
    """A spoke tunnel of lab_from moved into ns_to: its UDP socket stays
    where it was made, so it keeps talking to lab_from's hub (addresses go
    with the move)."""
    r = run("ip", "-n", ns_from, "link", "set", dev, "netns", ns_to)
    assert r.returncode == 0, r.stderr
    for args in (("addrgenmode", "none"), ("mtu", "1420", "up")):
        r = run("ip", "-n", ns_to, "link", "set", dev, *args)
        assert r.returncode == 0, r.stderr


def nsip(ns, *args):
    r = run("ip", "-n", ns, *args)
    assert r.returncode == 0, f"ip -n {ns} {' '.join(args)}: {r.stderr}"


@pytest.fixture(scope="module")
def two_hubs():
    """hub1 = lab 1 (alice, bob, carol); hub2 = lab 2's hub, whose alice
    becomes dave (renumbered), whose carol's tunnel moves into hub1 (the
    hubs' link: wg-hub2 there, lab 2's member for carol is wg-hub1), and
    whose bob's tunnel moves into carol (her second tunnel)."""
    require_tools("bird", "birdc")
    with recipe_lab(f"x{RUN_ID}", "two-hubs.md", "bgp-bird.md") as (one, r1), \
            recipe_lab(f"y{RUN_ID}", "two-hubs.md", "bgp-bird.md") as (two, r2):
        spokes_on_a_24(one)
        a, b, c = (two.peers[n] for n in ("alice", "bob", "carol"))
        move(c["ns"], c["spoke_dev"], one.hub)
        carol = one.peers["carol"]["ns"]
        move(b["ns"], b["spoke_dev"], carol)
        nsip(carol, "addr", "add", "10.255.1.3/24", "dev", b["spoke_dev"])
        nsip(carol, "addr", "add", "fe80::3/64", "dev", b["spoke_dev"], "nodad")
        dave = a["ns"]
        for add in (("10.4.0.1/16", "lan0"), ("fd00:4::1/48", "lan0"), ("10.255.1.4/24", a["spoke_dev"]),
                    ("fe80::4/64", a["spoke_dev"])):
            nsip(dave, "addr", "add", add[0], "dev", add[1], *(["nodad"] if ":" in add[0] else []))
        for old in (("10.1.0.1/16", "lan0"), ("fd00:1::1/48", "lan0"), ("10.255.0.1/32", a["spoke_dev"]),
                    ("fe80::1/64", a["spoke_dev"])):
            nsip(dave, "addr", "del", old[0], "dev", old[1])
        nsip(dave, "route", "replace", "10.0.0.0/8", "dev", a["spoke_dev"], "src", "10.4.0.1")
        nsip(dave, "-6", "route", "replace", "fd00::/8", "dev", a["spoke_dev"], "src", "fd00:4::1")
        two.ip("addr", "del", "10.255.0.254/32", "dev", two.front)
        two.ip("-6", "addr", "del", "fe80::fe/64", "dev", two.front)

        r1.names.update({"wg-hub2": c["spoke_dev"], "wgs-carol2": b["spoke_dev"]})
        r2.names = {"wg0": two.front, "wg-dave": a["member"], "wg-carol": b["member"], "wg-hub1": c["member"],
                    "wgs-dave": a["spoke_dev"]}
        for r, n in ((r1, "hub1"), (r2, "hub2")):
            r.write(f"{n}.toml")
            r.write(f"{n}-bird.conf")
            paths = {"/etc/wgbpf/wg0.toml": f"{n}.toml", "/etc/bird/bird.conf": f"{n}-bird.conf"}
            r.script(r.lab.hub, "hub.sh" if n == "hub1" else "hub2.sh", paths)
            r.lab.bird = r.start_hub(paths)["bird"]
        r1.bird_spokes(("alice", "bob"))
        conf = r1.write("carol-bird.conf")
        r1.start(carol, f"bird -c {conf}", "carol")
        r2.bird_spoke(dave, "dave", "wgs-dave", MY_AS=65004, MY_ADDR="10.255.1.4", HUB_AS=65100,
                      HUB4="10.255.1.254", HUB6="fe80::fd")
        yield one, two


@SLOW
def test_two_hubs_exchange_routes_and_carry_traffic(two_hubs):
    one, two = two_hubs
    want1 = {"10.1.0.0/16": ["alice"], "10.3.0.0/16": ["carol"], "10.4.0.0/16": ["hub2"],
             "fd00:3::/48": ["carol"], "fd00:4::/48": ["hub2"]}
    want2 = {"10.1.0.0/16": ["hub1"], "10.2.0.0/16": ["hub1"], "10.3.0.0/16": ["carol"],
             "10.4.0.0/16": ["dave"], "fd00:1::/48": ["hub1"], "fd00:4::/48": ["dave"]}
    for lab, want in ((one, want1), (two, want2)):
        wait_until(lambda: all(dump_routes(lab).get(p) == v for p, v in want.items()),
                   f"{lab.hub}'s wgbpf dump to hold {want}", timeout=40)
    kernel = one.ip("route", "show", "10.4.0.0/16").stdout
    assert f"via inet6 fe80::fd dev {one.front}" in kernel, kernel  # extended next hop
    # carol's prefix directly, and by hub2 as the alternative
    wait_until(lambda: "[hub2 " in one.bird.birdc("show", "route", "10.3.0.0/16"),
               "hub1 to learn carol's prefix by hub2 as well")
    routes = one.bird.birdc("show", "route", "10.3.0.0/16")
    assert re.search(r"\[carol4 [^]]*\] \*", routes), routes  # the direct one preferred
    spoofed = [lab.status()["counters"]["spoofed"] for lab in (one, two)]
    assert one.ping("alice", "10.4.0.1", count=2)
    assert one.ping("alice", "fd00:4::1", count=2)
    assert two.ping("alice", "10.3.0.1", count=2)  # dave -> carol, by hub2
    assert one.ping("alice", "10.3.0.1", count=2)
    assert [lab.status()["counters"]["spoofed"] for lab in (one, two)] == spoofed


# ------------------------------------------------------ (5) FRR, BGP ----

def kernel_routes(lab, proto="bgp"):
    """{prefix: [peer, ...]} of the hub's kernel routes of `proto`, each
    route's next hops resolved as the kernel does: through its nexthop
    object (and a group's members) when it has one, else its own gateways;
    a gateway names the peer it is a tag of."""
    tags = {}
    for name, p in lab.peers.items():
        tags[p["tag4"]] = tags[p["tag6"]] = name
    objs = {o["id"]: o for o in json.loads(lab.ip("-j", "nexthop", "show").stdout or "[]")}

    def gateways(o):
        if "group" in o:
            return [g for m in o["group"] for g in gateways(objs[m["id"]])]
        return [o["gateway"]] if "gateway" in o else []

    out = {}
    for fam in ("-4", "-6"):
        for r in json.loads(lab.ip("-j", fam, "route", "show", "proto", proto).stdout or "[]"):
            if "nhid" in r:
                gws = gateways(objs[r["nhid"]]) if r["nhid"] in objs else []
            else:
                gws = [h["gateway"] for h in r.get("nexthops", [r]) if "gateway" in h]
            dst = str(ipaddress.ip_network(r["dst"]))  # a host route prints without its /32
            peers = sorted({tags[g] for g in gws if g in tags})
            if peers:  # one naming none is a "no peer" entry: not in kernel_map_routes
                out[dst] = peers
    return out


def kernel_map_routes(lab):
    """dump_routes without the tags' host routes: what the daemon wrote
    naming peers (its "no peer" entries, for the hub's LAN routes, are
    tests/e2e/test_nexthops.py's)."""
    return {r["prefix"]: sorted(r["peers"]) for r in lab.dump()["routes"] if r["origin"] == "kernel" and r["peers"]}


FRR_WANT = {"10.1.0.0/16": ["alice"], "10.2.0.0/16": ["bob"], "10.3.0.0/16": ["carol"],
            "10.99.0.0/24": ["bob", "carol"],
            "fd00:1::/48": ["alice"], "fd00:2::/48": ["bob"], "fd00:3::/48": ["carol"]}


class Frr:
    """The page's FRR on the hub: its start lines (zebra, staticd, bgpd,
    vtysh -f), restartable one by one, vtysh in its pathspace."""

    def __init__(self, lab, recipe, paths, pathspace):
        self.lab, self.recipe, self.pathspace = lab, recipe, pathspace
        self.lines = {}
        self.procs = {}
        for line in recipe.text("start.sh", paths).strip().splitlines():
            args = shlex.split(line.split("#", 1)[0])
            name = os.path.basename(args[0]) if args[0] != "wgbpf" else "wgbpf"
            self.lines[name] = line
            if name != "vtysh":
                self.start(name)
            else:
                nsrun(lab.hub, *args)

    def start(self, name):
        self.procs[name] = self.recipe.start(self.lab.hub, self.lines[name], "hub")
        return self.procs[name]

    def configure(self):
        nsrun(self.lab.hub, *shlex.split(self.lines["vtysh"]))

    def vtysh(self, *cmds):
        args = [a for c in cmds for a in ("-c", c)]
        return nsrun(self.lab.hub, "vtysh", "-N", self.pathspace, *args).stdout

    def sessions(self):
        """{neighbor: state} of every address family's BGP neighbours."""
        summary = json.loads(self.vtysh("show bgp summary json"))
        return {n: p["state"] for af in summary.values() if isinstance(af, dict)
                for n, p in af.get("peers", {}).items()}


def frr_logs(lab):
    return "\n".join(f"--- {n}:\n{p.text()[-3000:]}" for n, p in lab.frr.procs.items()
                     if isinstance(p, (FrrDaemon, DaemonProc)))


def wait_frr_complete(lab, timeout=60):
    """Every session up, the routes of the page in the maps and the maps as
    the kernel's routes."""
    def complete():
        maps = kernel_map_routes(lab)
        return all(s == "Established" for s in lab.frr.sessions().values()) and \
            all(maps.get(p) == v for p, v in FRR_WANT.items()) and maps == kernel_routes(lab)
    try:
        wait_until(complete, "every FRR session up and the maps as the kernel's routes", timeout=timeout)
    except AssertionError:
        raise AssertionError(f"sessions {lab.frr.sessions()}\nmaps {kernel_map_routes(lab)}\n"
                             f"kernel {kernel_routes(lab)}\n{lab.ip('route').stdout}"
                             f"{lab.ip('-6', 'route').stdout}{lab.ip('nexthop').stdout}\n{frr_logs(lab)}")


@pytest.fixture(scope="module", params=[1, 0], ids=["compat1", "compat0"])
def frr(request):
    """The FRR page on a lab, its hub's net.ipv4.nexthop_compat_mode set
    before zebra starts; the spokes run bgp-bird.md's BIRD."""
    require_tools("vtysh", f"{FRR_SBIN}/zebra", f"{FRR_SBIN}/staticd", f"{FRR_SBIN}/bgpd", "bird", "birdc")
    mode = request.param
    # p, q: lab ids no other module uses (lab.sh takes 5 characters)
    with recipe_lab(f"{'p' if mode else 'q'}{RUN_ID}", "bgp-frr.md", "bgp-bird.md") as (lab, recipe):
        pathspace = lab.hub  # unique to this lab; the page's `-N hub`
        recipe.names["hub"] = pathspace
        try:
            spokes_on_a_24(lab)
            recipe.write("wg0.toml")
            recipe.write("frr.conf")
            paths = {"/etc/wgbpf/wg0.toml": "wg0.toml", "/etc/frr/frr.conf": "frr.conf"}
            recipe.script(lab.hub, "hub.sh", paths)
            nsrun(lab.hub, "sysctl", "-qw", f"net.ipv4.nexthop_compat_mode={mode}")
            lab.frr = Frr(lab, recipe, paths, pathspace)
            recipe.bird_spokes()
            for name in ("bob", "carol"):  # the anycast prefix, as the page says
                spoke(lab, name, "ip", "addr", "add", "10.99.0.1/24", "dev", "lan0")
            lab.recipe, lab.compat = recipe, mode
            yield lab
        finally:
            recipe.close()  # before the lab goes: FRR's daemons, then its pathspace
            subprocess.run(["rm", "-rf", os.path.join(FRR_RUN, pathspace)])


@SLOW
def test_frr_routes_learned_through_nexthop_objects_and_in_the_maps(frr):
    wait_frr_complete(frr)
    assert len(frr.frr.sessions()) == 6, frr.frr.sessions()
    kernel = frr.ip("route", "show", "10.99.0.0/24").stdout
    assert "nhid" in kernel, kernel
    if frr.compat:
        assert kernel.count("nexthop via") == 2, kernel
    nhid = int(re.search(r"nhid (\d+)", kernel).group(1))
    group = frr.ip("nexthop", "show", "id", str(nhid)).stdout
    assert re.search(r"group \d+/\d+", group), group  # ECMP through a group object
    lookup = frr.wgbpf("lookup", "10.99.0.1").stdout
    assert "bob" in lookup and "carol" in lookup, lookup
    wait_until(lambda: "routes per peer: alice 2, bob 3, carol 3" in frr.wgbpf("status").stdout,
               "wgbpf status to count the routes per peer")
    assert "daemon: running" in frr.wgbpf("status").stdout
    # what the page shows (pytest -s prints it)
    print(frr.frr.vtysh("show bgp summary"), frr.ip("route", "show", "proto", "bgp").stdout,
          frr.ip("-6", "route", "show", "proto", "bgp").stdout, frr.ip("nexthop").stdout,
          frr.wgbpf("dump").stdout, lookup, frr.wgbpf("lookup", "10.2.0.9", "--from", "alice").stdout, sep="\n")


@SLOW
def test_frr_traffic_between_spokes_and_anycast(frr):
    wait_frr_complete(frr)
    assert frr.ping("alice", "10.2.0.1", count=2)
    assert frr.ping("alice", "fd00:3::1", count=2)
    assert frr.ping("alice", "10.99.0.1", count=2)


def spoofed(lab, peer):
    return lab.status()["counters"]["spoofed"], lab.peer(peer)["spoofed"]


def assert_spoofed(lab, src, dst, peer, **kw):
    """A ping from spoke `src` to `dst` gets no answer, each request counted
    as spoofed, in all and on `peer`."""
    before = spoofed(lab, peer)
    assert not lab.ping(src, dst, count=2, **kw)
    after = spoofed(lab, peer)
    assert after[0] - before[0] >= 2 and after[1] - before[1] >= 2, (before, after)


@SLOW
def test_frr_session_shut_withdraws_its_prefixes(frr):
    """Bob's two sessions shut at the hub: within 2 s his prefixes leave the
    maps and the anycast prefix stays on carol alone; what he sends from
    his own address is then spoofed."""
    wait_frr_complete(frr)
    bob = ("10.255.0.2", "fe80::2")
    frr.frr.vtysh("conf t", "router bgp 65000", *(f"neighbor {n} shutdown" for n in bob))
    try:
        t0 = time.monotonic()
        want = {p: v for p, v in FRR_WANT.items() if v != ["bob"]}
        want["10.99.0.0/24"] = ["carol"]
        wait_until(lambda: kernel_map_routes(frr) == want, f"the maps to hold {want} alone", timeout=2)
        took = time.monotonic() - t0
        assert kernel_routes(frr) == want
        print(f"bob's prefixes out of the maps {took:.2f} s after the shutdown")
        assert frr.ping("alice", "10.99.0.1", count=2)  # by carol
        assert_spoofed(frr, "bob", "10.1.0.1", "bob")
    finally:
        frr.frr.vtysh("conf t", "router bgp 65000", *(f"no neighbor {n} shutdown" for n in bob))
        # bob's BIRD waits after the hub's Cease before it connects again: a new one connects at once
        for p in frr.recipe.procs:
            if isinstance(p, Bird) and p.name == "bob":
                p.stop()
        frr.recipe.bird_spokes(("bob",))
    wait_frr_complete(frr)


@SLOW
def test_frr_zebra_killed_and_restarted_the_maps_follow(frr):
    """zebra killed with -9 (its routes and objects stay in the kernel),
    then FRR started again as the page starts it, as watchfrr does when
    zebra dies (every daemon restarted: with bgpd left running, 8.4's new
    zebra put back only some of bgpd's routes); it sweeps the old routes
    and objects and installs new ones. The maps end as the kernel's routes
    and traffic flows."""
    wait_frr_complete(frr)
    old = frr.ip("nexthop").stdout
    frr.frr.procs["zebra"].proc.kill()
    frr.frr.procs["zebra"].proc.wait()
    time.sleep(1)
    assert kernel_map_routes(frr) == kernel_routes(frr)  # nothing changed without zebra
    assert all(kernel_map_routes(frr).get(p) == v for p, v in FRR_WANT.items())
    for name in ("bgpd", "staticd"):
        frr.frr.procs[name].stop()
    t0 = time.monotonic()
    for name in ("zebra", "staticd", "bgpd"):
        frr.frr.start(name)
    frr.frr.configure()
    wait_frr_complete(frr, timeout=90)
    print(f"complete {time.monotonic() - t0:.1f} s after the restart; objects before:\n{old}"
          f"after:\n{frr.ip('nexthop').stdout}")
    assert frr.ping("alice", "10.2.0.1", count=2)
    assert frr.ping("alice", "fd00:3::1", count=2)
    assert frr.ping("alice", "10.99.0.1", count=2)


@SLOW
def test_frr_nexthop_flush_under_the_daemon(frr):
    """`ip nexthop flush` in the hub: the kernel drops every FRR route with
    its object, the IPv4 ones without a route message. zebra (8.4) puts the
    objects back at once, and the IPv6 routes (the kernel announced their
    deletion), not the IPv4 ones. Within 2 s the maps are the kernel's
    routes again, without every prefix the kernel lost, and a source those
    routes gave a peer is dropped as spoofed. A reset of the sessions
    (`clear bgp *`) brings the routes back."""
    wait_frr_complete(frr)
    before = kernel_routes(frr)
    assert set(before) >= set(FRR_WANT), before
    frr.ip("nexthop", "flush")
    t0 = time.monotonic()

    def followed():
        kernel = kernel_routes(frr)
        return kernel_map_routes(frr) == kernel and set(before) - set(kernel)
    try:
        removed = wait_until(followed, "the maps to follow the flush", timeout=2)
    except AssertionError as e:
        raise AssertionError(f"{e}\nmaps {kernel_map_routes(frr)}\nkernel {kernel_routes(frr)}\n"
                             f"{frr.ip('route').stdout}{frr.ip('-6', 'route').stdout}{frr.ip('nexthop').stdout}\n"
                             f"{frr_logs(frr)}") from None
    print(f"maps as the kernel {time.monotonic() - t0:.2f} s after the flush; removed {sorted(removed)}, "
          f"kernel now {kernel_routes(frr)}")
    assert "10.2.0.0/16" in removed, removed  # zebra does not know the kernel dropped it
    assert_spoofed(frr, "bob", "10.1.0.1", "bob")
    frr.frr.vtysh("clear bgp *")
    wait_frr_complete(frr)
    assert frr.ping("alice", "10.2.0.1", count=2)


# ------------------------------------------------------ (6) FRR, OSPF ----

OSPF_WANT = {"10.1.0.0/16": ["alice"], "10.2.0.0/16": ["bob"], "10.3.0.0/16": ["carol"],
             "10.99.0.0/24": ["bob", "carol"]}


def ospf_neighbors(lab):
    """{neighbour address: state} of the hub's ospfd."""
    got = json.loads(lab.frr.vtysh("show ip ospf neighbor json") or "{}").get("neighbors", {})
    return {n.get("ifaceAddress") or n.get("address"): (n.get("nbrState") or n.get("state", "?")).split("/")[0]
            for ns in got.values() for n in ns}


def wait_ospf(lab, want, neighbors, timeout=30):
    """The hub's ospfd Full with `neighbors` (addresses) and the maps
    holding `want` (prefix -> peers) as the kernel's OSPF routes do."""
    def complete():
        full = {a for a, s in ospf_neighbors(lab).items() if s == "Full"}
        maps = kernel_map_routes(lab)
        return full == set(neighbors) and maps == want and maps == kernel_routes(lab, "ospf")
    try:
        wait_until(complete, f"ospfd Full with {sorted(neighbors)} and the maps holding {want}", timeout=timeout)
    except AssertionError:
        raise AssertionError(f"neighbours {ospf_neighbors(lab)}\nmaps {kernel_map_routes(lab)}\n"
                             f"kernel {kernel_routes(lab, 'ospf')}\n{lab.ip('route').stdout}"
                             f"{lab.ip('nexthop').stdout}\n{frr_logs(lab)}") from None


@pytest.fixture(scope="module")
def ospf():
    """The OSPF page on a lab: FRR's zebra and ospfd on the hub, the page's
    BIRD on each spoke (its address and tunnel put in), the anycast prefix
    on bob and carol."""
    require_tools("vtysh", f"{FRR_SBIN}/zebra", f"{FRR_SBIN}/ospfd", "bird", "birdc")
    # ospfd 8.4 writes its graceful-restart state outside its pathspace
    gr_state = os.path.join(FRR_RUN, "ospfd-gr.json")
    gr_before = os.path.exists(gr_state)
    with recipe_lab(f"s{RUN_ID}", "ospf-frr.md") as (lab, recipe):
        pathspace = lab.hub  # unique to this lab; the page's `-N hub`
        recipe.names["hub"] = pathspace
        try:
            spokes_on_a_24(lab)  # the front's /32 (the lab's) goes by the page's hub.sh
            recipe.write("wg0.toml")
            recipe.write("frr.conf")
            paths = {"/etc/wgbpf/wg0.toml": "wg0.toml", "/etc/frr/frr.conf": "frr.conf"}
            recipe.script(lab.hub, "hub.sh", paths)
            lab.frr = Frr(lab, recipe, paths, pathspace)
            lab.spokes = {}
            for name, p in lab.peers.items():
                conf = recipe.write(f"bird-{name}.conf", recipe.text("bird-ospf-spoke.conf", extra={
                    r"^define MY_ADDR = [^;]+;": f"define MY_ADDR = {p['tag4']};",
                    r'"wgs-alice"': f'"wgs-{name}"'}))
                lab.spokes[name] = recipe.start(p["ns"], f"bird -c {conf}", name)
            for name in ("bob", "carol"):  # the anycast prefix, as the page says
                spoke(lab, name, "ip", "addr", "add", "10.99.0.1/24", "dev", "lan0")
            lab.neighbors = {p["tag4"] for p in lab.peers.values()}
            lab.recipe = recipe
            yield lab
        finally:
            recipe.close()  # before the lab goes: FRR's daemons, then its pathspace
            subprocess.run(["rm", "-rf", os.path.join(FRR_RUN, pathspace)])
            if not gr_before:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(gr_state)


def test_ospf_routes_through_objects_ecmp_and_traffic(ospf):
    wait_ospf(ospf, OSPF_WANT, ospf.neighbors)
    kernel = ospf.ip("route", "show", "10.99.0.0/24").stdout
    assert "nhid" in kernel and kernel.count("nexthop via") == 2, kernel  # one group object, two spokes
    assert "steer by flow hash to one of bob, carol" in ospf.wgbpf("lookup", "10.99.0.1").stdout
    assert ospf.ping("alice", "10.2.0.1", count=2)
    assert ospf.ping("alice", "10.3.0.1", count=2)
    assert ospf.ping("alice", "10.99.0.1", count=2)
    print(ospf.frr.vtysh("show ip ospf neighbor"), ospf.ip("route", "show", "proto", "ospf").stdout,
          ospf.wgbpf("dump").stdout, sep="\n")


def test_ospf_a_spoke_announcing_anothers_prefix_is_not_installed_and_spoofed(ospf):
    """Alice puts bob's 10.2.99.1/24 on her LAN and joins the anycast: her
    OSPF announces both, zebra's route-map installs neither through her,
    the maps do not change, and what she sends from 10.2.99.1 is dropped
    and counted as spoofed."""
    wait_ospf(ospf, OSPF_WANT, ospf.neighbors)
    for addr in ("10.2.99.1/24", "10.99.0.1/24"):
        spoke(ospf, "alice", "ip", "addr", "add", addr, "dev", "lan0")
    try:
        wait_until(lambda: "10.255.0.1" in ospf.frr.vtysh("show ip route 10.2.99.0/24"),
                   "alice's 10.2.99.0/24 to reach the hub's ospfd")
        wait_until(lambda: "10.255.0.1" in ospf.frr.vtysh("show ip route 10.99.0.0/24"),
                   "alice's anycast announcement to reach the hub's ospfd")
        time.sleep(1)  # zebra's verdict on them is in the kernel by now
        assert "10.2.99.0/24" not in ospf.ip("route", "show", "proto", "ospf").stdout
        wait_ospf(ospf, OSPF_WANT, ospf.neighbors)  # unchanged: the anycast set too
        assert_spoofed(ospf, "alice", "10.3.0.1", "alice", extra=("-I", "10.2.99.1"))
    finally:
        for addr in ("10.2.99.1/24", "10.99.0.1/24"):
            spoke(ospf, "alice", "ip", "addr", "del", addr, "dev", "lan0")


def test_ospf_a_spoke_gone_leaves_the_maps_and_ecmp(ospf):
    """Bob's OSPF stops: ospfd declares him dead (4 s without a Hello), his
    prefix leaves the routes and the maps, the anycast prefix stays on carol
    alone, and alice still reaches it. Bob back: all as before."""
    wait_ospf(ospf, OSPF_WANT, ospf.neighbors)
    bob = ospf.spokes["bob"]
    bob.stop()
    t0 = time.monotonic()
    without = {"10.1.0.0/16": ["alice"], "10.3.0.0/16": ["carol"], "10.99.0.0/24": ["carol"]}
    wait_ospf(ospf, without, ospf.neighbors - {ospf.peers["bob"]["tag4"]}, timeout=15)
    print(f"bob's routes out of the maps {time.monotonic() - t0:.1f} s after his BIRD stopped")
    assert ospf.ping("alice", "10.99.0.1", count=2)
    conf = os.path.join(ospf.recipe.dir, "bird-bob.conf")
    ospf.spokes["bob"] = ospf.recipe.start(ospf.peers["bob"]["ns"], f"bird -c {conf}", "bob")
    wait_ospf(ospf, OSPF_WANT, ospf.neighbors)

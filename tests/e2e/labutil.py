# SPDX-License-Identifier: GPL-2.0-or-later
"""The lab (lab/lab.sh) as seen from tests: names from `lab.sh info`, the
wgbpf CLI run in the hub's namespace, pings and counters; lab_session, the
up-and-always-down every module's lab fixture wraps."""
import contextlib
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB = os.path.join(ROOT, "lab", "lab.sh")
# WGBPF_CLI runs another wgbpf: make deb-test's is the installed /usr/bin/wgbpf.
WGBPF = (os.environ.get("WGBPF_CLI") or "").split() or [sys.executable, "-m", "wgbpf.cli"]
# The lab's WireGuard: "go" (wireguard-go, the default) or "kernel" (the
# kernel module; `make vm-test` runs the suite so in a qemu guest).
WG_MODE = os.environ.get("WGBPF_LAB_WG") or "go"
WG_TOOLS = ("wg",) if WG_MODE == "kernel" else ("wireguard-go", "wg")
# Lookup modes the lab tests run in; the vm tier, where every attach
# compiles under emulation, may run fewer.
LOOKUPS = [m for m in (os.environ.get("WGBPF_E2E_LOOKUPS") or "lpm,dir24,fib").split(",") if m]
# Waits for asynchronous effects are multiplied by this (>1 under emulation).
TIME_SCALE = float(os.environ.get("WGBPF_TIME_SCALE") or 1)


def run(*cmd, check=False, timeout=60):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * TIME_SCALE, check=check)


def wg_pubkey(ns, dev):
    """The public key of WireGuard device `dev` in namespace `ns`."""
    r = run("ip", "netns", "exec", ns, "wg", "show", dev, "public-key")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


class Lab:
    def __init__(self, lab_id):
        self.id = lab_id
        self.env = dict(os.environ, LAB_ID=lab_id, LAB_WG=WG_MODE)
        info = subprocess.run(["bash", LAB, "info"], env=self.env, capture_output=True,
                              text=True, check=True).stdout
        self.info = json.loads(info)
        self.hub = self.info["hub_ns"]
        self.front = self.info["front"]
        self.peers = {p["name"]: p for p in self.info["peers"]}

    def up(self):
        r = subprocess.run(["bash", LAB, "up"], env=self.env, capture_output=True, text=True)
        assert r.returncode == 0, f"lab up failed:\n{r.stdout}\n{r.stderr}"
        self.netns_id()

    def netns_id(self):
        """The hub namespace's id, remembered: teardowns need the paths it
        keys after the namespace is gone. None if it never existed."""
        if getattr(self, "_netns_id", None) is None:
            from wgbpf.maps import netns_id
            try:
                self._netns_id = netns_id(self.hub)
            except OSError:
                return None
        return self._netns_id

    def down(self):
        subprocess.run(["bash", LAB, "down"], env=self.env, capture_output=True, text=True)

    def pin_dir(self):
        """The hub instance's pin directory (wgbpf.maps.pin_dir: per namespace)."""
        from wgbpf.maps import PIN_ROOT, pin_dir
        ns = self.netns_id()
        return pin_dir(self.front, ns) if ns is not None else os.path.join(PIN_ROOT, "none", self.front)

    def run_files(self):
        """The hub daemon's status file and lock (per namespace)."""
        from wgbpf.instance import RUN_DIR, lock_path, status_path
        ns = self.netns_id()
        if ns is None:  # never up: nothing of it to remove
            return [os.path.join(RUN_DIR, "none", f"{self.front}{x}") for x in (".json", ".lock")]
        return [status_path(self.front, ns), lock_path(self.front, ns)]

    def wgbpf(self, *args, check=True):
        if args[0] in ("route", "lookup", "dump", "status") and "--front" not in args:
            args += ("--front", self.front)  # other instances may be attached meanwhile
        r = run(*WGBPF, "--netns", self.hub, *args)
        if check:
            assert r.returncode == 0, f"wgbpf {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        return r

    def peer_args(self, names=None):
        out = []
        for name, p in self.peers.items():
            if names is None or name in names:
                out += ["--peer", f"{name}={p['member']},{p['tag4']},{p['tag6']}"]
        return out

    lookup = "lpm"  # the lookup mode attach uses (tests parametrize it)

    def attach(self, names=None, *extra):
        return self.wgbpf("attach", self.front, *self.peer_args(names), "--lookup", self.lookup, *extra)

    def add_route(self, peer, prefix):
        """Send prefix to peer the way the lookup mode reads: a map entry,
        or (fib) a kernel route in the hub via the peer's tag."""
        p = self.peers[peer]
        if self.lookup == "fib":
            via = ["via", p["tag4"], "dev", self.front, "onlink"] if ":" not in prefix else \
                ["via", p["tag6"], "dev", self.front]
            r = run("ip", "-n", self.hub, "route", "replace", prefix, *via)
            assert r.returncode == 0, r.stderr
        else:
            self.wgbpf("route", "add", prefix, peer)

    def route_every_peer(self, names=None, families=(4, 6)):
        """add_route of each peer's own prefixes (its spoke's addresses)."""
        for name, p in self.peers.items():
            if names is None or name in names:
                for fam in families:
                    self.add_route(name, p[f"prefix{fam}"])

    def drop_front_routes(self):
        """The lab's plain `dev front` routes to the spokes' prefixes go: they
        name no peer; the test routes by tag (as a routing daemon does) or
        leaves the routes to the one it runs."""
        for p in self.peers.values():
            self.ip("route", "del", p["prefix4"])
            self.ip("-6", "route", "del", p["prefix6"])

    def route_by_tag(self, names=None):
        """Each peer's prefixes via its tags, as a routing daemon writes them."""
        for name, p in self.peers.items():
            if names is None or name in names:
                self.ip("route", "replace", p["prefix4"], "via", p["tag4"], "dev", self.front, "onlink")
                self.ip("-6", "route", "replace", p["prefix6"], "via", p["tag6"], "dev", self.front)

    def ip(self, *args, check=True):
        """`ip` in the hub's namespace; fails the test unless it succeeds."""
        r = run("ip", "-n", self.hub, *args)
        if check:
            assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr}"
        return r

    def spoke(self, name, *cmd, timeout=60):
        return run("ip", "netns", "exec", self.peers[name]["ns"], *cmd, timeout=timeout)

    def ping(self, src, dst, count=3, interval="0.2", extra=()):
        r = self.spoke(src, "ping", "-c", str(count), "-i", interval, "-W", "2", *extra, dst)
        return r.returncode == 0

    def ping_during(self, src, dst, action, interval="0.02"):
        """Ping src -> dst for as long as `action()` runs (plus a margin on
        each side), however slow the machine. Returns (the replies' highest
        icmp_seq, the sequence numbers below it that got no reply, what
        action returned). Judged by sequence numbers, not ping's summary:
        the request in flight when ping is stopped is no loss."""
        ping = subprocess.Popen(["ip", "netns", "exec", self.peers[src]["ns"], "ping", "-i", interval,
                                 "-W", "1", dst], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(0.3 * TIME_SCALE)
            out = action()
            time.sleep(0.3 * TIME_SCALE)
        finally:
            ping.send_signal(signal.SIGINT)
            text = ping.communicate(timeout=10 * TIME_SCALE)[0]
        seqs = {int(m) for m in re.findall(r"icmp_seq=(\d+) ttl=", text)}
        last = max(seqs, default=0)
        return last, sorted(set(range(1, last + 1)) - seqs), out

    def status(self):
        return json.loads(self.wgbpf("status", "--front", self.front, "--json").stdout)

    def dump(self):
        return json.loads(self.wgbpf("dump", "--front", self.front, "--json").stdout)

    def peer(self, name):
        return next(p for p in self.dump()["peers"] if p["name"] == name)




def map_peers(lab, prefix, trie="routes"):
    """The peers the hub's routes map (or the accept map: trie="accept")
    holds for `prefix` (sorted names), or None without an entry."""
    from wgbpf.maps import Maps
    with Maps.open(lab.pin_dir(), readonly=True) as m:
        names = {i: p.name.decode() for i, p in m.peers().items()}
        r = m.tries.get_route(ipaddress.ip_network(prefix), trie)
        return None if r is None else sorted(names[i] for i in m.route_peers(r))


@contextlib.contextmanager
def lab_session(lab_id, *tools, lookup="lpm", bpf=True, env=None):
    """The lab `lab_id` up (what an earlier run left taken down first) for
    the block; afterwards its instance detached, the lab down and what wgbpf
    keeps per namespace (pins, status files, locks) removed, also when the
    setup failed. bpf=False: no wgbpf attach (the allowedips backend), so
    root is enough, no BCC. `env`: more lab.sh variables."""
    from wgbtest import require_bcc, require_root, require_tools
    require_bcc() if bpf else require_root()
    require_tools(*WG_TOOLS, *tools)
    lab = Lab(lab_id)
    lab.lookup = lookup
    lab.env.update(env or {})
    lab.down()
    try:
        lab.up()
        yield lab
    finally:
        if bpf:
            run(*WGBPF, "--netns", lab.hub, "detach", lab.front)
        lab.down()
        # the namespace's pin and run directories: this lab's alone
        run("rm", "-rf", os.path.dirname(lab.pin_dir()), os.path.dirname(lab.run_files()[0]))


class Tail:
    """The lines a running process has written to a file, complete ones
    only: a line still being written (no "\n" yet) waits for the next read,
    so a reader never parses half of one (a sink's `float('')`). Each read
    goes on from where the last stopped. Every reader of a file another
    process is still writing reads it through this."""

    def __init__(self, path):
        self.path = path
        self.lines = []  # every complete line so far, without its "\n"
        self._pos, self._partial = 0, b""

    def read(self):
        """The lines completed since the last read."""
        with open(self.path, "rb") as f:
            f.seek(self._pos)
            data = f.read()
        self._pos += len(data)
        *done, self._partial = (self._partial + data).split(b"\n")
        new = [line.decode(errors="replace") for line in done]
        self.lines += new
        return new

    def text(self, final=False):
        """Every complete line so far; final (the writer has exited): the
        unfinished last one too."""
        self.read()
        rest = self._partial.decode(errors="replace") if final else ""
        return "".join(line + "\n" for line in self.lines) + rest


class DaemonProc:
    """A `wgbpf daemon` in the background in netns `ns`, its output in a
    log; started means its first sync is done."""

    def __init__(self, ns, *args, ready="sync (start)"):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="wgbpf-daemon-", suffix=".log")
        self.tail = Tail(self.log.name)
        self.proc = subprocess.Popen([*WGBPF, "--netns", ns, *args],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self.wait_for(ready)
        except BaseException:
            self.stop(signal.SIGKILL)  # or it holds the lock and fails every later test
            raise

    def text(self):
        """The log's complete lines (and, once the daemon has exited, all of it)."""
        return self.tail.text(final=self.proc.poll() is not None)

    def wait_for(self, needle, timeout=30):
        deadline = time.monotonic() + timeout * TIME_SCALE
        while needle not in self.text():
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}:\n{self.text()}"
            assert time.monotonic() < deadline, f"no {needle!r} in daemon log:\n{self.text()}"
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10 * TIME_SCALE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def kernel_peer(lab, addr):
    """The peer the hub's kernel sends `addr` to (`ip route get`: a member
    as device, or a tag as gateway out of the front), or None: no route, a
    blackhole, unreachable, a LAN device."""
    r = run("ip", "-n", lab.hub, "-j", "route", "get", addr)
    if r.returncode != 0:
        return None  # blackhole, unreachable, prohibit: the kernel refuses
    got = json.loads(r.stdout)[0]
    for name, p in lab.peers.items():  # the device it leaves by decides
        if got.get("dev") == p["member"] or (got.get("dev") == lab.front
                                             and got.get("gateway") in (p["tag4"], p["tag6"])):
            return name
    return None


def forged(lab, spoke, src, dst_peer):
    """Pings from `spoke` to `dst_peer` with a source `src` it does not own
    (on its lo); returns (spoofed counted, packets sent to dst_peer's
    member) meanwhile."""
    lab.spoke(spoke, "ip", "addr", "replace", f"{src}/32", "dev", "lo")
    try:
        before, tx = lab.status()["counters"]["spoofed"], lab.peer(dst_peer)["tx_packets"]
        lab.ping(spoke, lab.peers[dst_peer]["host4"], count=3, interval="0.1", extra=("-I", src))
        return lab.status()["counters"]["spoofed"] - before, lab.peer(dst_peer)["tx_packets"] - tx
    finally:
        lab.spoke(spoke, "ip", "addr", "del", f"{src}/32", "dev", "lo")


def maps_peers(lab, addr):
    """The peers the maps' longest match for `addr` names ([] for none, or
    a "no peer" entry)."""
    from wgbpf.maps import Maps
    with Maps.open(lab.pin_dir(), readonly=True) as m:
        names = {i: p.name.decode() for i, p in m.peers().items()}
        hit = m.tries.lookup(ipaddress.ip_address(addr))
        return [] if hit is None else sorted(names[i] for i in m.route_peers(hit[1]))


def kernel_view(lab):
    """(what the maps' kernel-origin entries must be, from the kernel's
    routes, "no peer" entries included; what they are)."""
    from wgbpf import abi, nsenter, routes as rt, sync  # the daemon's own reading
    from wgbpf.ties import DUMP
    from wgbpf.maps import Maps
    with Maps.open(lab.pin_dir(), readonly=True) as m:
        peers = m.peers()
        by_oif = {p.ifindex: i for i, p in peers.items()}
        by_addr = {ipaddress.ip_address(str(a)).packed: i for a, i in m.tags().items()}
        have = {k: v[1] for k, v in m.peer_entries().items() if v[0] == abi.Origin.KERNEL}
        front = m.config().front_ifindex
    table = sync.Table(sync.Tags(by_addr, by_oif, front=front), sync.Filter())
    with nsenter.entered(lab.hub):
        nl = rt.Netlink()
        try:
            table.tags.nexthops = sync.Nexthops(rt.dump_nexthops(nl))  # the objects first, as a full sync
            for fam in (2, 10):
                for r in rt.dump_routes(nl, fam):
                    table.update(r, False, DUMP)  # in the kernel's order: ties as it keeps them
        finally:
            nl.close()
    return dict(table.entries()), have

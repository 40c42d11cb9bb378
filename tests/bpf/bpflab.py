# SPDX-License-Identifier: GPL-2.0-or-later
"""The BPF verdict tier's lab: a network namespace of TUN devices with
wgbpf attached for real (dataplane.attach), and helpers to run its two tc
programs through BPF_PROG_TEST_RUN and read what they counted.

Why TUN devices: this kernel has no `dummy` link type, and wgbpf only
attaches to layer-3 devices. A persistent TUN device is one. Opening it
(TUNSETIFF) turns its carrier on; only then does bpf_clone_redirect (the
flood) to it succeed, and the clones can be read back from the fd.

IPv6 is disabled in the namespace before any device exists: otherwise the
kernel sends router solicitations and MLD reports out of the front, which
front_egress would count while a test compares counters.

Every verdict test reads counters as deltas: `Instance.measure()` snapshots
every reason counter and every peer's tx/rx/spoofed, runs the program once,
and returns (return value, {counter: change}) with zero changes left out, so
a test states the exact set of counters that must move.
"""
import contextlib
import dataclasses
import fcntl
import json
import multiprocessing
import os
import select
import shutil
import socket
import struct
import warnings

from wgbpf import abi, bpfsys, config, dataplane, maps, nsenter, routemaps

import packets as P
from wgbtest import require_bcc, sh, unique  # noqa: F401 (re-exported)

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
SKB_CTX_SIZE = 192     # sizeof(struct __sk_buff)
SKB_CTX_IFINDEX = 40   # offsetof(struct __sk_buff, ifindex)
SKB_CTX_INGRESS = 36   # offsetof(struct __sk_buff, ingress_ifindex): where it came in


@dataclasses.dataclass
class PeerSpec:
    name: str
    tags: tuple = ()
    up: bool = True        # IFF_UP when attached: the peer's WGBPF_PEER_UP flag
    carrier: bool = True   # hold the TUN open: clones to it succeed and can be read


class Instance:
    """One attached wgbpf instance: its maps, its programs, its peers."""

    def __init__(self, net, front, members, members_only):
        self.net = net
        self.front = front
        self.members = members          # peer name -> member device
        self.members_only = members_only
        self.pin_dir = maps.pin_dir(front, net.name)
        self.maps = maps.Maps.open(self.pin_dir)
        self.progs = {}
        for name in abi.PROGRAMS:
            self.progs[name] = bpfsys.obj_get(os.path.join(self.pin_dir, name))
        self.ids = {p.name.decode(): i for i, p in self.maps.peers().items()}
        self.names = {i: n for n, i in self.ids.items()}

    def close(self):
        for fd in self.progs.values():
            os.close(fd)
        self.progs = {}
        self.maps.close()

    # -- running the programs ------------------------------------------------
    def ifindex_of(self, via):
        """`via` is a peer name (its member device) or a device name."""
        return self.net.ifindex[self.members.get(via, via)]

    def run(self, prog, frame, via=None, repeat=1, came_in=None):
        """BPF_PROG_TEST_RUN of one program; returns its return value.
        `via` sets skb->ifindex (member_ingress looks its peer up by it),
        `came_in` skb->ingress_ifindex (a forwarded packet's way in)."""
        ctx = None
        if via is not None or came_in is not None:
            buf = bytearray(SKB_CTX_SIZE)
            if via is not None:
                struct.pack_into("=I", buf, SKB_CTX_IFINDEX, self.ifindex_of(via))
            if came_in is not None:
                struct.pack_into("=I", buf, SKB_CTX_INGRESS, self.ifindex_of(came_in))
            ctx = bytes(buf)
        with nsenter.entered(self.net.name):
            retval, _, _ = bpfsys.test_run(self.progs[prog], frame, repeat, ctx)
        return retval

    def snapshot(self):
        out = {r.name.lower(): v for r, v in self.maps.counters().items()}
        for name, pid in self.ids.items():
            s = self.maps.peer_stats(pid)
            out[f"tx:{name}"] = s.tx_packets
            out[f"rx:{name}"] = s.rx_packets
            out[f"spoofed:{name}"] = s.spoofed
        return out

    def delta(self, before):
        after = self.snapshot()
        return {k: after[k] - before[k] for k in after if after[k] != before[k]}

    def measure(self, prog, frame, via=None, came_in=None):
        """(return value, counter deltas) of one run."""
        before = self.snapshot()
        retval = self.run(prog, frame, via, came_in=came_in)
        return retval, self.delta(before)

    def steer(self, frame):
        """front_egress on one frame that must be steered: the peer it chose."""
        retval, d = self.measure("front_egress", frame)
        tx = [k[3:] for k in d if k.startswith("tx:")]
        assert retval == P.TC_ACT_REDIRECT and d.get("steered") == 1 and len(tx) == 1 \
            and d == {"steered": 1, f"tx:{tx[0]}": 1}, (retval, d)
        return tx[0]

    # -- changing state, undone on exit ---------------------------------------
    @contextlib.contextmanager
    def peers_down(self, *names):
        """Clear WGBPF_PEER_UP of some peers and rebuild the flood list, as
        the daemon does when a member goes down; restored afterwards."""
        saved = {}
        try:
            for n in names:
                pid = self.ids[n]
                old = self.maps.peers()[pid]
                saved[pid] = abi.Peer.from_buffer_copy(bytes(old))
                old.flags &= ~abi.PEER_UP
                self.maps.set_peer(pid, old)
            self.maps.rebuild_flood()
            yield
        finally:
            for pid, old in saved.items():
                self.maps.set_peer(pid, old)
            self.maps.rebuild_flood()

    @contextlib.contextmanager
    def peer_source(self, name, mode):
        """Set one peer's own source check (abi.Source); restored afterwards."""
        pid = self.ids[name]
        old = self.maps.peers()[pid]
        saved = abi.Peer.from_buffer_copy(bytes(old))
        try:
            old.source = int(mode)
            self.maps.set_peer(pid, old)
            yield
        finally:
            self.maps.set_peer(pid, saved)

    @contextlib.contextmanager
    def settings(self, **fields):
        """Change fields of the config map (no_route, source, ...); restored
        afterwards."""
        cfg = self.maps.config()
        saved = abi.Config.from_buffer_copy(bytes(cfg))
        try:
            for k, v in fields.items():
                setattr(cfg, k, int(v))
            self.maps.set_config(cfg)
            yield
        finally:
            self.maps.set_config(saved)

    def policy(self, no_route):
        return self.settings(no_route=no_route)

    def set_route(self, net, names, origin=abi.Origin.STATIC, trie="routes"):
        self.maps.tries.set_route(routemaps.network(net), [self.ids[n] for n in names], origin, trie=trie)

    def del_route(self, net, trie="routes"):
        return self.maps.tries.del_route(routemaps.network(net), trie=trie)


class Lab:
    """A network namespace holding TUN devices and wgbpf instances; close()
    removes instances (dataplane.detach, else the pin directory), devices
    and the namespace, each step even if an earlier one failed."""

    def __init__(self):
        self.name = unique("wgbt")
        self.ifindex = {}
        self.fds = {}
        self.devices = []
        self.fronts = []
        self.instances = []
        sh("ip", "netns", "add", self.name)
        try:
            sh("ip", "-n", self.name, "link", "set", "lo", "up")
            with nsenter.entered(self.name):
                for scope in ("all", "default"):
                    with open(f"/proc/sys/net/ipv6/conf/{scope}/disable_ipv6", "w") as f:
                        f.write("1")
        except BaseException:
            self.close()
            raise

    def tun(self, dev, up=True, carrier=False):
        """A persistent TUN device; `carrier`: hold it open (with the 4-byte
        packet-information header, so writes can name any protocol)."""
        sh("ip", "-n", self.name, "tuntap", "add", "dev", dev, "mode", "tun")
        self.devices.append(dev)
        if up:
            sh("ip", "-n", self.name, "link", "set", dev, "up")
        with nsenter.entered(self.name):
            self.ifindex[dev] = socket.if_nametoindex(dev)
            if carrier:
                fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
                try:
                    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN))
                except BaseException:
                    os.close(fd)
                    raise
                self.fds[dev] = fd
        return dev

    def attach(self, peers, *, members_only=False, front_carrier=False,
               no_route=abi.Policy.PASS, lookup=abi.Lookup.LPM, in_child=False):
        """Devices for a front (unless members_only) and one member per
        PeerSpec, then dataplane.attach inside the namespace.

        In this process by default: pytest then holds whatever BCC left
        open. `in_child`: attach from a child process that exits, as
        `wgbpf attach` does, so only what is pinned outlives it."""
        front = unique("wgbf")
        self.fronts.append(front)
        if not members_only:
            self.tun(front, carrier=front_carrier)
        members = {}
        for p in peers:
            members[p.name] = self.tun(unique("wgbm"), up=p.up, carrier=p.carrier and p.up)
        cfg = config.Config(front=front, members_only=members_only, no_route=no_route,
                            lookup=lookup, peers=[config.PeerConfig(p.name, members[p.name],
                                                     [P.ip(t) for t in p.tags]) for p in peers])
        config.validate(cfg)
        if in_child:
            child = multiprocessing.get_context("spawn").Process(target=attach_here, args=(self.name, cfg))
            child.start()
            child.join()
            assert child.exitcode == 0, "attach in a child process failed (its traceback is in the captured stderr)"
        else:
            with nsenter.entered(self.name):
                dataplane.attach(cfg)
        inst = Instance(self, front, members, members_only)
        self.instances.append(inst)
        return inst

    # -- real paths (for what BPF_PROG_TEST_RUN refuses) ----------------------
    def send(self, dev, ip_packet, ethertype):
        """Transmit through `dev` with an AF_PACKET socket, so its tc egress
        runs on exactly these bytes. Returns 0 or the errno of sendto
        (ENOBUFS: tc dropped it)."""
        with nsenter.entered(self.name):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        with s:
            try:
                s.sendto(ip_packet, (dev, ethertype))
            except OSError as e:
                return e.errno
        return 0

    def inject(self, dev, ip_packet, ethertype):
        """Write to a TUN fd: the packet arrives on `dev` (its tc ingress)."""
        os.write(self.fds[dev], struct.pack("!HH", 0, ethertype) + ip_packet)

    def read(self, dev):
        """Every packet the kernel queued to `dev`'s fd: [(ethertype, bytes)]."""
        out = []
        fd = self.fds[dev]
        while select.select([fd], [], [], 0)[0]:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                break
            out.append((struct.unpack("!H", data[2:4])[0], data[4:]))
        return out

    def drain(self):
        for dev in self.fds:
            self.read(dev)

    def clsact_drops(self, dev):
        """Packets tc dropped on `dev` (both hooks share the clsact qdisc)."""
        for q in json.loads(sh("tc", "-n", self.name, "-s", "-j", "qdisc", "show",
                               "dev", dev).stdout):
            if q.get("kind") == "clsact":
                return q.get("drops", 0)
        return 0

    # -- teardown -------------------------------------------------------------
    def close(self):
        errors = []
        for inst in self.instances:
            with contextlib.suppress(Exception):
                inst.close()
        for front in self.fronts:
            d = maps.pin_dir(front, self.name)
            if not os.path.isdir(d):
                continue  # attach failed before creating it
            try:
                with nsenter.entered(self.name):
                    dataplane.detach(front)
            except Exception as e:
                errors.append(f"detach {front}: {e}")
            if os.path.isdir(d):
                shutil.rmtree(d, ignore_errors=True)
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = {}
        for dev in self.devices:
            sh("ip", "-n", self.name, "link", "del", dev, check=False)
        sh("ip", "netns", "del", self.name, check=False)
        return errors


@contextlib.contextmanager
def open_lab():
    require_bcc()
    lab = Lab()
    try:
        yield lab
    finally:
        for e in lab.close():
            warnings.warn(f"BPF lab teardown: {e}")


def attach_here(netns, cfg):
    """dataplane.attach in `netns`, run by Lab.attach(in_child=True) in a
    process of its own: what BCC holds goes when it exits, as after
    `wgbpf attach`, so only the pins keep the programs and maps."""
    nsenter.enter(netns)
    dataplane.attach(cfg)


# -- what a verdict case expects (shared by the lpm/dir24 and fib tables) ----
@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    packet: bytes        # the Ethernet frame handed to BPF_PROG_TEST_RUN
    verdict: int
    deltas: dict         # counters that must move: reason names, tx:/rx:/spoofed:PEER
    via: str = None      # member_ingress: the peer whose member it arrives on


def ids(cases):
    return [c.id for c in cases]


def steered(peer):
    return {"steered": 1, f"tx:{peer}": 1}


def passed(peer, reason="passed"):
    return {reason: 1, f"rx:{peer}": 1}


def spoofed(peer):
    return {"spoofed": 1, f"spoofed:{peer}": 1}


NO_ROUTE = {"no_route": 1}
PEER_DOWN = {"peer_down": 1}

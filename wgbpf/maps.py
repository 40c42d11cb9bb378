# SPDX-License-Identifier: GPL-2.0-or-later
"""Typed access to one wgbpf instance's pinned maps.

An instance is a directory /sys/fs/bpf/wgbpf/<netns cookie>/<front>/
(pin_dir) holding one pin per map of abi.MAPS (and the programs): a front
name is unique only within its network namespace. Everything here is plain
bpf(2) calls: no compiler, no BCC import, so listings are fast.

This room holds the instance's map set (Maps: open, create, close) and its
small tables (config, counters, peers, members, tags, flood, the monitor
lease; the guard's locals and forwarders as m.guard), and the helpers that
find instances (netns_id, pin_dir, instances). The route tries are
routemaps.py's (m.tries), the DIR-24-8 arrays dir24maps.py's (m.dir24):
each its own concern, reached by composition.
"""
import ctypes
import ipaddress
import os
import pickle
import socket
import stat
import struct
import sys

from . import abi, bpfsys, nsenter
from .bpfsys import MapError  # noqa: F401 (callers name it maps.MapError)
from .files import child_env  # noqa: F401 (callers name it maps.child_env)
from .routemaps import Tries, hash_items
from .setmaps import Sets

# WGBPF_PIN_ROOT moves every instance's pins (tests point it at a directory
# of their own, which must be on a bpffs mount too)
PIN_ROOT = os.environ.get("WGBPF_PIN_ROOT") or "/sys/fs/bpf/wgbpf"
SO_NETNS_COOKIE = 71
DIR_MAPS = ("dir24", "dir8")


def _cookie():
    """This thread's network namespace cookie (Linux 5.14+): unlike an
    inode number, never reused while the host runs, so pins left by a
    deleted namespace can never be taken for a new one's."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        return struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


def netns_id(netns=None):
    """The cookie of this thread's network namespace, or of the one named
    (/run/netns/NAME or a path), read from a thread that joins it: setns()
    moves only the calling thread, so this one stays where it is."""
    if netns is None:
        return _cookie()
    return nsenter.run(netns, _cookie)


def netns_dir(netns=None):
    """The pin directory of one namespace's instances; `netns`: None (this
    thread's), a cookie (int), or a name or path as netns_id takes."""
    ns = netns if isinstance(netns, int) else netns_id(netns)
    return os.path.join(PIN_ROOT, str(ns))


def pin_dir(front, netns=None):
    """/sys/fs/bpf/wgbpf/<netns cookie>/<front>: the one place a pin path is
    made, so the same front name in two namespaces is two instances."""
    return os.path.join(netns_dir(netns), front)


def instances(netns=None):
    """Names of the fronts with pinned state in one namespace, sorted."""
    d = netns_dir(netns)
    try:
        return sorted(n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n)))
    except FileNotFoundError:
        return []


def all_instances():
    """[(netns cookie, front)] of every namespace's instances, sorted."""
    out = []
    try:
        names = os.listdir(PIN_ROOT)
    except FileNotFoundError:
        return out
    for ns in names:
        if ns.isdigit() and os.path.isdir(os.path.join(PIN_ROOT, ns)):
            out += [(int(ns), f) for f in instances(int(ns))]
    return sorted(out)


def legacy_instances():
    """Pin directories of an older wgbpf, keyed by the front alone
    (/sys/fs/bpf/wgbpf/<front>/): listed, never acted on."""
    try:
        names = os.listdir(PIN_ROOT)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(PIN_ROOT, n) for n in names
                  if not n.isdigit() and os.path.exists(os.path.join(PIN_ROOT, n, "config")))


def prune(directory):
    """Remove a namespace's pin directory once its last instance is gone."""
    try:
        os.rmdir(os.path.dirname(directory))
    except OSError:
        pass  # other instances remain (ENOTEMPTY), or already gone


class Maps:
    """Open file descriptors on every map of one instance, and its small
    tables; the rest by composition: m.tries (routemaps.Tries: the route
    tries), m.sets (setmaps.Sets: the peer sets they name), m.dir24
    (dir24maps.Dir24Maps: the DIR-24-8 arrays), m.guard
    (Guard: the fail-closed guard's state)."""

    def __init__(self, directory, fds):
        from .dir24maps import Dir24Maps  # above this module: it is handed the Maps
        self.directory = directory
        self.fds = fds
        self.replaced = []
        self.ncpu = bpfsys.possible_cpus()
        self.tries = Tries(self)
        self.sets = Sets(self)
        self.dir24 = Dir24Maps(self)
        self.guard = Guard(self)

    def route_peers(self, r):
        """The peer ids a route entry (abi.Route) names, by its set."""
        return list(self.sets.members(r.set))

    def peer_entries(self, trie="routes"):
        """{pkey: (origin, peer ids)} of every route entry (a view by peers)."""
        sets = self.sets.peers()
        return {k: (o, sets.get(s, ((), None))[0]) for k, (o, s) in self.tries.entries(trie).items()}

    @classmethod
    def open(cls, directory, readonly=False):
        fds = {}
        try:
            for name, spec in abi.MAPS.items():
                path = os.path.join(directory, name)
                try:
                    fd = bpfsys.obj_get(path, readonly=readonly)
                except OSError as e:
                    raise MapError(f"{path}: {e.strerror}") from None
                fds[name] = fd
                _check_layout(path, fd, spec)
        except Exception:
            for fd in fds.values():
                os.close(fd)
            raise
        return cls(directory, fds)

    @classmethod
    def create(cls, directory, dir24=False):
        """Open the maps of `directory`, creating and pinning those missing.

        The directory is root's alone (0700) and pins are 0600: whoever can
        write these maps can steer or spoof traffic. The DIR-24-8 arrays
        (48 MiB) get their full size only with `dir24`, one element else; a
        pin of the other size is replaced (programs loaded before keep the
        map they hold).
        """
        for d in (PIN_ROOT, os.path.dirname(directory), directory):
            os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        replaced = []
        for name, spec in abi.MAPS.items():
            path = os.path.join(directory, name)
            size = spec.max_entries
            if name in DIR_MAPS and not dir24:
                size = 1
            if os.path.exists(path):
                if name not in DIR_MAPS:
                    continue
                fd = bpfsys.obj_get(path)
                try:
                    if bpfsys.map_info(fd).max_entries == size:
                        continue
                finally:
                    os.close(fd)
                os.unlink(path)
                replaced.append(name)
            fd = bpfsys.map_create(spec.type, ctypes.sizeof(spec.key),
                                   ctypes.sizeof(spec.value), size,
                                   spec.flags, name)
            try:
                bpfsys.obj_pin(fd, path)
            finally:
                os.close(fd)
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        m = cls.open(directory)
        m.replaced = replaced  # programs built on the old maps must be reloaded
        return m

    def close(self):
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- per-CPU values ----------------------------------------------------
    def _percpu(self, name, index, vtype):
        size = (ctypes.sizeof(vtype) + 7) & ~7
        buf = (ctypes.c_uint8 * (size * self.ncpu))()
        key = ctypes.c_uint32(index)
        bpfsys.lookup(self.fds[name], key, buf)
        return [vtype.from_buffer_copy(bytes(buf[i * size:i * size + ctypes.sizeof(vtype)]))
                for i in range(self.ncpu)]

    def counters(self):
        """{Reason: packets}, summed over CPUs."""
        return {r: sum(v.value for v in self._percpu("counters", r, ctypes.c_uint64))
                for r in abi.Reason}

    def peer_stats(self, peer_id):
        """A PeerStats summed over CPUs."""
        total = abi.PeerStats()
        for v in self._percpu("peer_stats", peer_id, abi.PeerStats):
            for f, _ in abi.PeerStats._fields_:
                setattr(total, f, getattr(total, f) + getattr(v, f))
        return total

    # -- config --------------------------------------------------------------
    def config(self):
        c = abi.Config()
        bpfsys.lookup(self.fds["config"], ctypes.c_uint32(0), c)
        return c

    def set_config(self, cfg):
        bpfsys.update(self.fds["config"], ctypes.c_uint32(0), cfg)

    # -- the monitor lease; peers, members, tags -----------------------------
    def monitor(self):
        """The monitor lease: a `wgbpf monitor` listening (mode, pid, until), or mode OFF."""
        s = abi.Monitor()
        bpfsys.lookup(self.fds["monitor"], ctypes.c_uint32(0), s)
        return s

    def peers(self):
        """{peer id: Peer} for every slot in use."""
        out = {}
        for k, p in bpfsys.lookup_batch(self.fds["peers"], ctypes.c_uint32, abi.Peer, chunk=abi.MAX_PEERS):
            if p.ifindex:
                out[k.value] = p
        return out

    def set_peer(self, peer_id, peer):
        bpfsys.update(self.fds["peers"], ctypes.c_uint32(peer_id), peer)

    def clear_peer(self, peer_id):
        bpfsys.update(self.fds["peers"], ctypes.c_uint32(peer_id), abi.Peer())

    def rebuild_flood(self):
        """The flood list from the peers map: every member that is up.

        Entries are written before the count grows and after it shrinks, so
        the data plane never reads a slot that is not filled in."""
        up = [(p.ifindex, peer_id) for peer_id, p in sorted(self.peers().items()) if p.flags & abi.PEER_UP]
        cfg = self.config()
        if len(up) < cfg.flood_count:
            cfg.flood_count = len(up)
            self.set_config(cfg)
        for i, (ifindex, peer_id) in enumerate(up):
            bpfsys.update(self.fds["flood"], ctypes.c_uint32(i), abi.Flood(ifindex=ifindex, peer=peer_id))
        if cfg.flood_count != len(up):
            cfg.flood_count = len(up)
            self.set_config(cfg)

    def members(self):
        """{member ifindex: peer id}"""
        return {k.value: v.value for k, v in hash_items(self.fds["members"], ctypes.c_uint32, ctypes.c_uint32)}

    def set_member(self, ifindex, peer_id):
        bpfsys.update(self.fds["members"], ctypes.c_uint32(ifindex), ctypes.c_uint32(peer_id))

    def del_member(self, ifindex):
        return bpfsys.delete(self.fds["members"], ctypes.c_uint32(ifindex))

    def tags(self):
        """{ip_address: peer id}"""
        return _by_address(self.fds["tags"])

    def set_tag(self, addr, peer_id):
        bpfsys.update(self.fds["tags"], _tag_key(addr), ctypes.c_uint32(peer_id))

    def del_tag(self, addr):
        """True if it was there."""
        return bpfsys.delete(self.fds["tags"], _tag_key(addr))

    # -- what matters to fill ------------------------------------------------
    def fill(self):
        """{map name: (entries, max_entries)} for the maps whose fill matters."""
        out = {}
        for trie in ("routes", "accept"):
            for v in (4, 6):
                n = sum(1 for _ in self.tries.routes(v, trie))
                out[f"{trie}{v}"] = (n, abi.MAPS[f"{trie}{v}"].max_entries)
        out["peers"] = (len(self.peers()), abi.MAX_PEERS - 1)
        out["tags"] = (len(self.tags()), abi.MAX_TAGS)
        sets = self.sets.all()
        out["sets"] = (sum(1 for i in sets if i < abi.OPERATOR_SETS), abi.OPERATOR_SETS - 1)
        out["operator_sets"] = (len(sets) - out["sets"][0], abi.MAX_SETS - abi.OPERATOR_SETS)
        return out


class Guard:
    """The fail-closed guard's state of one Maps (m.guard): the host's own
    addresses (martian sources) and the devices vetted as no member."""

    def __init__(self, maps):
        self.maps = maps

    def locals(self):
        """{ip_address: ifindex} of the host's own addresses (martian sources)."""
        return _by_address(self.maps.fds["locals"])

    def set_local(self, addr, ifindex):
        bpfsys.update(self.maps.fds["locals"], _tag_key(addr), ctypes.c_uint32(ifindex))

    def del_local(self, addr):
        return bpfsys.delete(self.maps.fds["locals"], _tag_key(addr))

    def forwarders(self):
        """Ifindexes of the devices vetted as no member: their forwarded
        traffic may leave by a peer."""
        return {k.value for k, _ in hash_items(self.maps.fds["forwarders"], ctypes.c_uint32, ctypes.c_uint32)}

    def set_forwarder(self, ifindex):
        bpfsys.update(self.maps.fds["forwarders"], ctypes.c_uint32(ifindex), ctypes.c_uint32(1))

    def del_forwarder(self, ifindex):
        return bpfsys.delete(self.maps.fds["forwarders"], ctypes.c_uint32(ifindex))


def _tag_key(addr):
    """The abi.Tag key of an address (the tags and locals maps)."""
    t = abi.Tag(family=abi.AF_INET if addr.version == 4 else abi.AF_INET6)
    ctypes.memmove(t.addr, addr.packed, len(addr.packed))
    return t


def _by_address(fd):
    """{ip_address: u32} of a map keyed by address (abi.Tag)."""
    out = {}
    for k, v in hash_items(fd, abi.Tag, ctypes.c_uint32):
        n = 4 if k.family == abi.AF_INET else 16
        out[ipaddress.ip_address(bytes(k.addr[:n]))] = v.value
    return out


def _check_layout(path, fd, spec):
    info = bpfsys.map_info(fd)
    want = (spec.type, ctypes.sizeof(spec.key), ctypes.sizeof(spec.value))
    have = (info.type, info.key_size, info.value_size)
    if want != have:
        raise MapError(
            f"{path}: pinned map has type/key/value sizes {have}, this wgbpf expects {want}; "
            f"run `wgbpf detach` to remove the old instance first")


def _compile_dir24_child(directory):
    from .dir24 import Dir24Error
    try:
        with Maps.open(directory) as m:
            d = m.dir24.rebuild()
    except (MapError, Dir24Error, OSError) as e:
        print(str(e), file=sys.stderr)
        sys.exit(3)
    sys.stdout.buffer.write(pickle.dumps(d.state()))
    sys.stdout.buffer.write(d.depth)


if __name__ == "__main__" and sys.argv[1:2] == ["--compile-dir24"] and len(sys.argv) == 3:
    _compile_dir24_child(sys.argv[2])

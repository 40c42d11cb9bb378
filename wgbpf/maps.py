# SPDX-License-Identifier: GPL-2.0-or-later
"""Typed access to one wgbpf instance's pinned maps.

An instance is a directory /sys/fs/bpf/wgbpf/<netns cookie>/<front>/
(pin_dir) holding one pin per map of abi.MAPS (and the programs): a front
name is unique only within its network namespace. Everything here is plain
bpf(2) calls: no compiler, no BCC import, so listings are fast.
"""
import contextlib
import ctypes
import errno
import functools
import ipaddress
import os
import pickle
import queue
import socket
import stat
import struct
import subprocess
import sys
import threading

from . import abi, bpfsys, nsenter

# WGBPF_PIN_ROOT moves every instance's pins (tests point it at a directory
# of their own, which must be on a bpffs mount too)
PIN_ROOT = os.environ.get("WGBPF_PIN_ROOT") or "/sys/fs/bpf/wgbpf"
SO_NETNS_COOKIE = 71
DIR_MAPS = ("dir24", "dir8", "dir_sets")
AF4, AF6 = socket.AF_INET, socket.AF_INET6


class MapError(Exception):
    """A pinned map is missing, or not the layout this wgbpf expects."""


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


def network(prefix):
    """An ip_network from text, host bits cleared; ValueError names the input."""
    try:
        return ipaddress.ip_network(prefix, strict=False)
    except ValueError:
        raise ValueError(f"not an IPv4/IPv6 prefix: {prefix!r}") from None


def _key(net):
    if net.version == 4:
        k = abi.Key4(prefixlen=net.prefixlen)
    else:
        k = abi.Key6(prefixlen=net.prefixlen)
    ctypes.memmove(k.addr, net.network_address.packed, len(net.network_address.packed))
    return k


def _net(key, version):
    n = 4 if version == 4 else 16
    addr = ipaddress.ip_address(bytes(key.addr[:n]))
    return ipaddress.ip_network((addr, key.prefixlen))


class Maps:
    """Open file descriptors on every map of one instance."""

    def __init__(self, directory, fds):
        self.directory = directory
        self.fds = fds
        self.replaced = []
        self.ncpu = bpfsys.possible_cpus()

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

    # -- peers, members, tags -----------------------------------------------
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

    def _hash_items(self, name, ktype, vtype):
        out = []
        key = ktype()
        prev = None
        while bpfsys.next_key(self.fds[name], prev, key):
            v = vtype()
            if bpfsys.lookup(self.fds[name], key, v):
                out.append((ktype.from_buffer_copy(key), v))
            prev = ktype.from_buffer_copy(key)
        return out

    def members(self):
        """{member ifindex: peer id}"""
        return {k.value: v.value for k, v in self._hash_items("members", ctypes.c_uint32, ctypes.c_uint32)}

    def set_member(self, ifindex, peer_id):
        bpfsys.update(self.fds["members"], ctypes.c_uint32(ifindex), ctypes.c_uint32(peer_id))

    def del_member(self, ifindex):
        return bpfsys.delete(self.fds["members"], ctypes.c_uint32(ifindex))

    @staticmethod
    def _tag_key(addr):
        t = abi.Tag(family=abi.AF_INET if addr.version == 4 else abi.AF_INET6)
        ctypes.memmove(t.addr, addr.packed, len(addr.packed))
        return t

    def _by_address(self, name):
        """{ip_address: u32} of a map keyed by address (abi.Tag)."""
        out = {}
        for k, v in self._hash_items(name, abi.Tag, ctypes.c_uint32):
            n = 4 if k.family == abi.AF_INET else 16
            out[ipaddress.ip_address(bytes(k.addr[:n]))] = v.value
        return out

    def _set_address(self, name, addr, value):
        bpfsys.update(self.fds[name], self._tag_key(addr), ctypes.c_uint32(value))

    def _del_address(self, name, addr):
        return bpfsys.delete(self.fds[name], self._tag_key(addr))

    def tags(self):
        """{ip_address: peer id}"""
        return self._by_address("tags")

    set_tag = functools.partialmethod(_set_address, "tags")     # (addr, peer id)
    del_tag = functools.partialmethod(_del_address, "tags")     # (addr): True if it was there

    # -- the fail-closed guard's state: host addresses, vetted devices -------
    def locals(self):
        """{ip_address: ifindex} of the host's own addresses (martian sources)."""
        return self._by_address("locals")

    set_local = functools.partialmethod(_set_address, "locals")  # (addr, ifindex)
    del_local = functools.partialmethod(_del_address, "locals")

    def forwarders(self):
        """Ifindexes of the devices vetted as no member: their forwarded
        traffic may leave by a peer."""
        return {k.value for k, _ in self._hash_items("forwarders", ctypes.c_uint32, ctypes.c_uint32)}

    def set_forwarder(self, ifindex):
        bpfsys.update(self.fds["forwarders"], ctypes.c_uint32(ifindex), ctypes.c_uint32(1))

    def del_forwarder(self, ifindex):
        return bpfsys.delete(self.fds["forwarders"], ctypes.c_uint32(ifindex))

    # -- routes ---------------------------------------------------------------
    def _routes_fd(self, version, trie="routes"):
        """trie: "routes" (steering, strict source check) or "accept" (the
        feasible-path table of the source check)."""
        return self.fds[f"{trie}{version}"]

    def routes(self, version, trie="routes"):
        """Yield (ip_network, Route) for every prefix of one family."""
        ktype = abi.Key4 if version == 4 else abi.Key6
        fd = self._routes_fd(version, trie)
        try:
            for k, v in bpfsys.lookup_batch(fd, ktype, abi.Route):
                yield _net(k, version), v
            return
        except OSError as e:
            if e.errno not in (errno.EINVAL, 524):  # 524: ENOTSUPP, no batch ops
                raise
        for k, v in self._hash_items(f"{trie}{version}", ktype, abi.Route):
            yield _net(k, version), v

    def lookup(self, addr, trie="routes"):
        """Longest match for an address: (ip_network, Route) or None."""
        net = ipaddress.ip_network(addr)
        r = abi.Route()
        if not bpfsys.lookup(self._routes_fd(net.version, trie), _key(net), r):
            return None
        return network(f"{addr}/{r.prefixlen}"), r

    def get_route(self, net, trie="routes"):
        """The Route stored for exactly this prefix, or None."""
        r = abi.Route()
        if bpfsys.lookup(self._routes_fd(net.version, trie), _key(net), r) and r.prefixlen == net.prefixlen:
            return r
        return None

    def set_route(self, net, peer_ids, origin, trie="routes"):
        if not 1 <= len(peer_ids) <= abi.MAX_ECMP:
            raise ValueError(f"{net}: a route names 1 to {abi.MAX_ECMP} peers, not {len(peer_ids)}")
        bpfsys.update(self._routes_fd(net.version, trie), _key(net), make_route(net, peer_ids, origin))

    def del_route(self, net, trie="routes"):
        return bpfsys.delete(self._routes_fd(net.version, trie), _key(net))

    # -- routes by the million -------------------------------------------------
    # Prefixes here are the sync model's keys, bytes([family, length]) + addr.
    def batches(self, trie="routes", ahead=False):
        """Yield (head, key size, keys, values, count) per batch read of
        both families' route maps, with head[prefixlen] the first two bytes
        of a pkey: the raw form scan() unpacks, for the loops that compare a
        million entries (the daemon's restart). `ahead`: read by a thread
        of its own, a few batches ahead (the kernel's walk of the trie,
        0.8 s at a million, then overlaps the caller's loop)."""
        def read():
            for version, fam, n in ((4, AF4, 4), (6, AF6, 16)):
                ks = 4 + n
                head = [bytes((fam, plen)) for plen in range(8 * n + 1)]
                for keys, values, count in bpfsys.lookup_batch_raw(self._routes_fd(version, trie), ks, ROUTE_SIZE):
                    yield head, ks, keys, values, count
        return read_ahead(read()) if ahead else read()

    def scan(self, trie="routes"):
        """Yield (pkey, origin, value bytes) of every route entry of both
        families, read in batches: no object per entry but what is yielded."""
        rs = ROUTE_SIZE
        for head, ks, keys, values, count in self.batches(trie):
            for i in range(count):
                at = i * ks
                v = values[i * rs:(i + 1) * rs]
                yield head[keys[at]] + keys[at + 4:at + ks], v[1], v

    def entries(self, trie="routes"):
        """{pkey: (origin, peers)} of every route entry (a view for diff)."""
        return {k: (origin, value_peers(v)) for k, origin, v in self.scan(trie)}

    def _stored(self, keys, trie):
        """Yield (pkey, the value bytes stored exactly under it, or None)
        for each of `keys`: one lookup each, no view of the maps built."""
        readers = {AF4: bpfsys.Reader(self._routes_fd(4, trie), 8, ROUTE_SIZE),
                   AF6: bpfsys.Reader(self._routes_fd(6, trie), 20, ROUTE_SIZE)}
        for k in keys:
            v = readers[k[0]].get(_PLEN[k[1]] + k[2:])
            # an LPM lookup of the prefix itself: exact when the stored length is
            yield k, v if v is not None and v[2] == k[1] else None

    def read(self, keys, trie="routes"):
        """{pkey: (origin, peers)} of the entries stored exactly under `keys`
        (a fresh view of a few, for an incremental diff)."""
        return {k: (v[1], value_peers(v)) for k, v in self._stored(keys, trie) if v is not None}

    def missing(self, keys, trie="routes"):
        """Yield those of `keys` that have no entry of their own."""
        return (k for k, v in self._stored(keys, trie) if v is None)

    def apply(self, d, trie="routes", progress=None):
        """Write a sync.Diff (puts of kernel-origin entries, deletes) in
        batches; returns the number of map writes."""
        w = Writer(self, threaded=False, progress=progress)
        for k, peers in d.put.items():
            w.put(trie, k, peers)
        for k in d.delete:
            w.delete(trie, k)
        return w.close()

    # -- DIR-24-8 ------------------------------------------------------------
    def dir24(self):
        """A Dir24 over the dir24/dir8 maps, read and written by bpf(2)
        (ArrayBytes, not mmap: their 48 MiB stay out of the daemon's RSS),
        finding what covers a removed prefix by an LPM lookup in routes4."""
        from .dir24 import Dir24

        def array(name):
            info = bpfsys.map_info(self.fds[name])
            if info.max_entries <= 1:
                raise MapError(f"{self.directory}/{name}: not sized for DIR-24-8 (attach --lookup dir24)")
            return ArrayBytes(self.fds[name], info.value_size, info.max_entries)

        def write_set(sid, peers):
            r = abi.Route(count=len(peers))
            for i, p in enumerate(peers):
                r.peers[i] = p
            bpfsys.update(self.fds["dir_sets"], ctypes.c_uint32(sid), r)

        reader = bpfsys.Reader(self._routes_fd(4, "routes"), 8, ROUTE_SIZE)

        def route(addr, bound):
            # an LPM lookup is bounded by the key's prefix length
            v = reader.get(_PLEN[bound] + addr.to_bytes(4, "big"))
            return None if v is None else (v[2], value_peers(v))
        return Dir24(array("dir24"), array("dir8"), write_set, route)

    def ipv4_prefixes(self):
        """{(network int, plen): peers} of routes4, as Dir24.rebuild takes them."""
        out = {}
        rsize = ROUTE_SIZE
        for keys, values, n in bpfsys.lookup_batch_raw(self._routes_fd(4, "routes"), 8, rsize):
            for i in range(n):
                out[(int.from_bytes(keys[8 * i + 4:8 * i + 8], "big"), keys[8 * i])] = \
                    value_peers(values[i * rsize:(i + 1) * rsize])
        return out

    def rebuild_dir24(self, d=None):
        """Recompile the DIR-24-8 arrays (of `d`, else a new Dir24 over the
        maps) from routes4 read in batches: no object per prefix (1M: ~1 s,
        where ipv4_prefixes() + rebuild() took ~12 s through ipaddress)."""
        d = d or self.dir24()
        d.rebuild_raw(bpfsys.lookup_batch_raw(self._routes_fd(4, "routes"), 8, ROUTE_SIZE), ROUTE_SIZE, value_peers)
        return d

    def compile_dir24_apart(self):
        """rebuild_dir24 in a child process (`python -m wgbpf.maps
        --compile-dir24 DIR`), for the daemon: the compile's transient
        arrays (about 100 MiB at a full table: a private tbl24 to compare
        with the map, the prefixes by length) are the child's and gone with
        it. The daemon gets back what change() needs: the depth bytes (16
        MiB, read straight into place) and the few groups and sets."""
        return self.start_dir24_apart().result()

    def start_dir24_apart(self):
        """compile_dir24_apart started, not waited for: the child compiles
        routes4 as it is now while the caller goes on (on another CPU)."""
        return _Dir24Child(self)

    def compile_dir24(self):
        """Recompile the DIR-24-8 arrays from routes4 (when in that mode)."""
        if self.config().lookup == abi.Lookup.DIR24:
            return self.rebuild_dir24()
        return None

    def fill(self):
        """{map name: (entries, max_entries)} for the maps whose fill matters."""
        out = {}
        for trie in ("routes", "accept"):
            for v in (4, 6):
                n = sum(1 for _ in self.routes(v, trie))
                out[f"{trie}{v}"] = (n, abi.MAPS[f"{trie}{v}"].max_entries)
        out["peers"] = (len(self.peers()), abi.MAX_PEERS - 1)
        out["tags"] = (len(self.tags()), abi.MAX_TAGS)
        return out


_PLEN = [struct.pack("=I", n) for n in range(129)]
_ROUTE = struct.Struct("=BBBx%dH" % abi.MAX_ECMP)
ROUTE_SIZE = _ROUTE.size
_VALUES = {}


class ArrayBytes:
    """An array map seen as one byte buffer, for slices: read by batch
    lookups, written by batch updates (a partly covered element is read
    first). The data plane reads every element whole, before or after."""

    CHUNK = 4096  # elements a syscall

    def __init__(self, fd, value_size, max_entries):
        self.fd, self.size, self.count = fd, value_size, max_entries

    def __len__(self):
        return self.size * self.count

    def _span(self, s):
        a, b, _ = s.indices(len(self))
        return a, b, a // self.size, -(-b // self.size)

    def __getitem__(self, s):
        a, b, e0, e1 = self._span(s)
        data = b"".join(bpfsys.read_array(self.fd, e, min(self.CHUNK, e1 - e), self.size)
                        for e in range(e0, e1, self.CHUNK))
        return data[a - e0 * self.size:b - e0 * self.size]

    def __setitem__(self, s, data):
        a, b, e0, e1 = self._span(s)
        if len(data) != b - a:
            raise ValueError("ArrayBytes: a slice keeps its length")
        if a % self.size or b % self.size:
            whole = bytearray(self[e0 * self.size:e1 * self.size])
            whole[a - e0 * self.size:b - e0 * self.size] = data
            data = whole
        data = bytes(data)
        for e in range(e0, e1, self.CHUNK):
            n = min(self.CHUNK, e1 - e)
            off = (e - e0) * self.size
            bpfsys.update_batch_raw(self.fd, struct.pack(f"={n}I", *range(e, e + n)),
                                    data[off:off + n * self.size], n)


def route_value(peers, plen, origin=abi.Origin.KERNEL):
    """The Route value bytes for a peer set (cached: a full table has few
    distinct sets, and a million writes)."""
    v = _VALUES.get((peers, plen, origin))
    if v is None:
        if len(_VALUES) > 1 << 16:
            _VALUES.clear()
        pad = (0,) * (abi.MAX_ECMP - len(peers))
        v = _VALUES[(peers, plen, origin)] = _ROUTE.pack(len(peers), int(origin), plen, *peers, *pad)
    return v


def value_peers(v):
    """The peer ids of Route value bytes."""
    return _PEERS[v[0]].unpack_from(v, 4)


_PEERS = [struct.Struct("=%dH" % n) for n in range(256)]  # by count: no format string per call


class Writer:
    """Route puts and deletes packed into batches of BATCH and written by a
    thread of its own (threaded) while the caller goes on: the bpf(2)
    syscall releases the GIL, so a full sync parses the next netlink
    buffers while the kernel inserts the last ones. Writes of one map keep
    their order; deletes follow the puts. close() flushes, waits, and
    raises what a write raised."""

    BATCH = 16384

    def __init__(self, maps, threaded=True, progress=None):
        self.maps = maps
        self.progress = progress
        self.puts = {}     # (trie, family) -> [(pkey, peers)], packed at _flush
        self.deletes = {}  # (trie, family) -> [key bytes]
        self.writes = 0
        self.error = None
        self.jobs = None
        if threaded:
            self.jobs = queue.Queue(maxsize=4)
            self.thread = threading.Thread(target=self._run, name="wgbpf-writer", daemon=True)
            self.thread.start()

    def put(self, trie, k, peers):
        # kept as given; packed per batch in _flush, where a comprehension
        # costs less than this call doing it a million times
        p = self.puts.get((trie, k[0]))
        if p is None:
            p = self.puts[(trie, k[0])] = []
        p.append((k, peers))
        if len(p) >= self.BATCH:
            self._flush(trie, k[0])

    def delete(self, trie, k):
        self.deletes.setdefault((trie, k[0]), []).append(_PLEN[k[1]] + k[2:])

    def _fd(self, trie, fam):
        return self.maps._routes_fd(4 if fam == AF4 else 6, trie)

    def _flush(self, trie, fam):
        puts = self.puts.pop((trie, fam))
        plen = _PLEN
        keys = b"".join([plen[k[1]] + k[2:] for k, _ in puts])
        values = b"".join([route_value(p, k[1]) for k, p in puts])
        self._submit((bpfsys.update_batch_raw, self._fd(trie, fam), keys, values, len(puts)))

    def _submit(self, job):
        if self.jobs is None:
            self._do(job)
        else:
            if self.error is not None:
                raise self.error
            self.jobs.put(job)

    def _do(self, job):
        fn, fd, *args = job
        if fn is bpfsys.update_batch_raw:
            fn(fd, *args)
            n = args[-1]
        else:  # deletes: an entry already gone (ENOENT) stops a batch; skip it
            keys, count = args
            size = len(keys) // count
            at = 0
            while at < count:
                at += bpfsys.delete_batch_raw(fd, keys[at * size:], count - at) + 1
            n = count
        self.writes += n
        if self.progress:
            self.progress(self.writes)

    def _run(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is None:
                try:
                    self._do(job)
                except Exception as e:  # raised by close() (or the next submit)
                    self.error = e

    def close(self):
        """Write what is pending; returns the number of writes."""
        for trie, fam in list(self.puts):
            self._flush(trie, fam)
        for (trie, fam), keys in self.deletes.items():
            for i in range(0, len(keys), self.BATCH):
                chunk = keys[i:i + self.BATCH]
                self._submit((bpfsys.delete_batch_raw, self._fd(trie, fam), b"".join(chunk), len(chunk)))
        self.deletes = {}
        if self.jobs is not None:
            self.jobs.put(None)
            self.thread.join()
            self.jobs = None
        if self.error is not None:
            raise self.error
        return self.writes


def make_route(net, peer_ids, origin):
    r = abi.Route(count=len(peer_ids), origin=int(origin), prefixlen=net.prefixlen)
    for i, p in enumerate(peer_ids):
        r.peers[i] = p
    return r


def route_peers(route):
    return [route.peers[i] for i in range(route.count)]


def _check_layout(path, fd, spec):
    info = bpfsys.map_info(fd)
    want = (spec.type, ctypes.sizeof(spec.key), ctypes.sizeof(spec.value))
    have = (info.type, info.key_size, info.value_size)
    if want != have:
        raise MapError(
            f"{path}: pinned map has type/key/value sizes {have}, this wgbpf expects {want}; "
            f"run `wgbpf detach` to remove the old instance first")


class _Dir24Child:
    """A DIR-24-8 compile running in a child process (Maps.start_dir24_apart)."""

    def __init__(self, maps):
        self.maps = maps
        self.p = subprocess.Popen([sys.executable, "-m", "wgbpf.maps", "--compile-dir24", maps.directory],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())

    def result(self):
        """Wait for the compile; the Dir24 the child's arrays describe (its
        16 MiB of depth bytes taken only now: the caller may have freed
        more meanwhile)."""
        d, p, got = self.maps.dir24(), self.p, 0
        try:
            state = pickle.load(p.stdout)
            view = memoryview(d.depth)
            while got < len(d.depth):
                n = p.stdout.readinto(view[got:])
                if not n:
                    break
                got += n
        except (EOFError, pickle.UnpicklingError):
            state = None
        err = p.stderr.read().decode(errors="replace").strip()
        _pid, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        d.child_peak_mib = usage.ru_maxrss / 1024  # the memory the compile took, for the log and bench
        if p.returncode != 0 or state is None or got != len(d.depth):
            raise MapError(f"DIR-24-8 compile failed (exit {p.returncode}): "
                           f"{err.splitlines()[-1] if err else 'no output'}")
        d.restore(state)
        return d

    def cancel(self):
        """Not wanted after all (the sync failed): the child is stopped."""
        self.p.kill()
        self.p.communicate()


def in_background(fn):
    """Run fn() in a thread of its own, for work that is syscalls (they
    release the GIL); returns a function that waits for its result (or
    raises what it raised)."""
    out = {}

    def run():
        try:
            out["result"] = fn()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=run, name="wgbpf-background", daemon=True)
    t.start()

    def result():
        t.join()
        if "error" in out:
            raise out["error"]
        return out.pop("result")
    return result


def read_ahead(items, depth=4):
    """Yield what `items` yields, taken from it by a thread of its own up to
    `depth` ahead: for iterators whose work is syscalls, which release the
    GIL. The thread stops when the caller does (or leaves early)."""
    q = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def run():
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(end)
        except BaseException as e:
            q.put(e)

    t = threading.Thread(target=run, name="wgbpf-read-ahead", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a put on a full queue
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.01)
        t.join()


def child_env():
    """The environment of a `python -m wgbpf...` child: this package first
    on its path, wherever it was imported from (a checkout, the venv)."""
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (pkg, os.environ.get("PYTHONPATH")))))


def _compile_dir24_child(directory):
    from .dir24 import Dir24Error
    try:
        with Maps.open(directory) as m:
            d = m.rebuild_dir24()
    except (MapError, Dir24Error, OSError) as e:
        print(str(e), file=sys.stderr)
        sys.exit(3)
    sys.stdout.buffer.write(pickle.dumps(d.state()))
    sys.stdout.buffer.write(d.depth)


if __name__ == "__main__" and sys.argv[1:2] == ["--compile-dir24"] and len(sys.argv) == 3:
    _compile_dir24_child(sys.argv[2])

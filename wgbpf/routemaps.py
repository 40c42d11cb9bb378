# SPDX-License-Identifier: GPL-2.0-or-later
"""One instance's route tries: routes4/routes6 (steering, the strict source
check) and accept4/accept6 (the feasible-path table of the source check).

Their own room because they are the maps the daemon reads and writes by
the million: by prefix (Tries: routes, lookup, get/set/del_route), in
batches (batches, scan, entries, read, missing, apply, and Writer, which
writes from a thread of its own), and the Route value in its two forms
(abi.Route for the CLI, packed bytes for the bulk paths), which names a
peer set by id (setmaps: m.sets). A Maps reaches
them as `m.tries`. Only abi and bpfsys below: maps.py and dir24maps.py
build on this module, never the other way round.
"""
import contextlib
import ctypes
import errno
import ipaddress
import queue
import socket
import struct
import sys
import threading

from . import abi, bpfsys

AF4, AF6 = socket.AF_INET, socket.AF_INET6


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


def hash_items(fd, ktype, vtype):
    """[(key, value)] of a map walked key by key (next_key): the hash maps,
    and the tries on a kernel without batch operations."""
    out = []
    key = ktype()
    prev = None
    while bpfsys.next_key(fd, prev, key):
        v = vtype()
        if bpfsys.lookup(fd, key, v):
            out.append((ktype.from_buffer_copy(key), v))
        prev = ktype.from_buffer_copy(key)
    return out


class Tries:
    """The route tries of one Maps (read through its fds, so a closed
    Maps has none). `trie`: "routes" (steering, strict source check) or
    "accept" (the feasible-path table of the source check)."""

    def __init__(self, maps):
        self.maps = maps

    def fd(self, version, trie="routes"):
        """The fd of one family's trie."""
        return self.maps.fds[f"{trie}{version}"]

    def routes(self, version, trie="routes"):
        """Yield (ip_network, Route) for every prefix of one family."""
        ktype = abi.Key4 if version == 4 else abi.Key6
        fd = self.fd(version, trie)
        try:
            for k, v in bpfsys.lookup_batch(fd, ktype, abi.Route):
                yield _net(k, version), v
            return
        except OSError as e:
            if e.errno not in (errno.EINVAL, 524):  # 524: ENOTSUPP, no batch ops
                raise
        for k, v in hash_items(fd, ktype, abi.Route):
            yield _net(k, version), v

    def lookup(self, addr, trie="routes"):
        """Longest match for an address: (ip_network, Route) or None."""
        net = ipaddress.ip_network(addr)
        r = abi.Route()
        if not bpfsys.lookup(self.fd(net.version, trie), _key(net), r):
            return None
        return network(f"{addr}/{r.prefixlen}"), r

    def get_route(self, net, trie="routes"):
        """The Route stored for exactly this prefix, or None."""
        r = abi.Route()
        if bpfsys.lookup(self.fd(net.version, trie), _key(net), r) and r.prefixlen == net.prefixlen:
            return r
        return None

    def set_route(self, net, peer_ids, origin, trie="routes", weights=None):
        """An operator's entry (static, a tag): its set taken by content
        from the operator's ids (the caller holds the writer lock)."""
        # no peer at all is the daemon's (a kernel route naming none), never the operator's
        least = 0 if origin == abi.Origin.KERNEL else 1
        if not least <= len(peer_ids) <= abi.MAX_ECMP:
            raise ValueError(f"{net}: a route names 1 to {abi.MAX_ECMP} peers, not {len(peer_ids)}")
        sid = self.maps.sets.operator_id(tuple(peer_ids), weights)
        bpfsys.update(self.fd(net.version, trie), _key(net), make_route(net, sid, origin))

    def del_route(self, net, trie="routes"):
        return bpfsys.delete(self.fd(net.version, trie), _key(net))

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
                for keys, values, count in bpfsys.lookup_batch_raw(self.fd(version, trie), ks, ROUTE_SIZE):
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
                yield head[keys[at]] + keys[at + 4:at + ks], v[ORIGIN_AT], v

    def entries(self, trie="routes"):
        """{pkey: (origin, set id)} of every route entry (a view for diff)."""
        return {k: (origin, value_set(v)) for k, origin, v in self.scan(trie)}

    def _stored(self, keys, trie):
        """Yield (pkey, the value bytes stored exactly under it, or None)
        for each of `keys`: one lookup each, no view of the maps built."""
        readers = {AF4: bpfsys.Reader(self.fd(4, trie), 8, ROUTE_SIZE),
                   AF6: bpfsys.Reader(self.fd(6, trie), 20, ROUTE_SIZE)}
        for k in keys:
            v = readers[k[0]].get(PLEN[k[1]] + k[2:])
            # an LPM lookup of the prefix itself: exact when the stored length is
            yield k, v if v is not None and v[PLEN_AT] == k[1] else None

    def read(self, keys, trie="routes"):
        """{pkey: (origin, set id)} of the entries stored exactly under `keys`
        (a fresh view of a few, for an incremental diff)."""
        return {k: (v[ORIGIN_AT], value_set(v)) for k, v in self._stored(keys, trie) if v is not None}

    def missing(self, keys, trie="routes"):
        """Yield those of `keys` that have no entry of their own."""
        return (k for k, v in self._stored(keys, trie) if v is None)

    def apply(self, d, trie="routes", progress=None):
        """Write a sync.Diff (puts of kernel-origin entries, by set id;
        deletes) in batches; returns the number of map writes."""
        w = Writer(self.maps, threaded=False, progress=progress)
        for k, sid in d.put.items():
            w.put(trie, k, sid)
        for k in d.delete:
            w.delete(trie, k)
        return w.close()


# -- the Route value ------------------------------------------------------------
PLEN = [struct.pack("=I", n) for n in range(129)]  # a trie key's head (prefix length), by length
_ROUTE = struct.Struct("=IBBxx")
ROUTE_SIZE = _ROUTE.size
ORIGIN_AT, PLEN_AT = 4, 5  # offsets in the value's bytes
_VALUES = {}


def route_value(sid, plen, origin=abi.Origin.KERNEL):
    """The Route value bytes naming set `sid` (cached: a million writes,
    of few distinct values)."""
    v = _VALUES.get((sid, plen, origin))
    if v is None:
        if len(_VALUES) > 1 << 16:
            _VALUES.clear()
        v = _VALUES[(sid, plen, origin)] = _ROUTE.pack(sid, int(origin), plen)
    return v


def value_set(v):
    """The set id of Route value bytes."""
    return int.from_bytes(v[:4], sys.byteorder)


def make_route(net, sid, origin):
    return abi.Route(set=sid, origin=int(origin), prefixlen=net.prefixlen)


class Writer:
    """Route puts and deletes packed into batches of BATCH and written by a
    thread of its own (threaded) while the caller goes on: the bpf(2)
    syscall releases the GIL, so a full sync parses the next netlink
    buffers while the kernel inserts the last ones. Writes of one map keep
    their order; deletes follow the puts. close() flushes, waits, and
    raises what a write raised. `maps`: the Maps whose tries it writes."""

    BATCH = 16384

    def __init__(self, maps, threaded=True, progress=None):
        self.maps = maps
        self.progress = progress
        self.puts = {}     # (trie, family) -> [(pkey, set id)], packed at _flush
        self.deletes = {}  # (trie, family) -> [key bytes]
        self.writes = 0
        self.error = None
        self.jobs = None
        if threaded:
            self.jobs = queue.Queue(maxsize=4)
            self.thread = threading.Thread(target=self._run, name="wgbpf-writer", daemon=True)
            self.thread.start()

    def put(self, trie, k, sid):
        # kept as given; packed per batch in _flush, where a comprehension
        # costs less than this call doing it a million times
        p = self.puts.get((trie, k[0]))
        if p is None:
            p = self.puts[(trie, k[0])] = []
        p.append((k, sid))
        if len(p) >= self.BATCH:
            self._flush(trie, k[0])

    def delete(self, trie, k):
        self.deletes.setdefault((trie, k[0]), []).append(PLEN[k[1]] + k[2:])

    def _fd(self, trie, fam):
        return self.maps.tries.fd(4 if fam == AF4 else 6, trie)

    def _flush(self, trie, fam):
        puts = self.puts.pop((trie, fam))
        plen = PLEN
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


# -- syscalls on a thread of their own (they release the GIL) ---------------------
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

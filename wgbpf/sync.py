"""Kernel routes -> peer sets -> the LPM maps, by difference.

Tags decides which peers a route names; Table holds, per prefix, the routes
the daemon's filters accept and yields the one the kernel would prefer;
apply_diff() writes to the maps only what differs from them, in batches.

Prefixes are kept as compact bytes keys, `bytes([family, length]) + addr`,
and peer sets as interned tuples: a full table is a million of them.
"""
import ctypes
import ipaddress
import socket

from . import abi, bpfsys
from .maps import route_peers

AF4, AF6 = socket.AF_INET, socket.AF_INET6


def pkey(family, dst, dst_len):
    return bytes((family, dst_len)) + dst


def pkey_network(k):
    return ipaddress.ip_network((ipaddress.ip_address(k[2:]), k[1]))


def network_pkey(net):
    return pkey(AF4 if net.version == 4 else AF6, net.network_address.packed, net.prefixlen)


class Tags:
    """How routes name peers: a nexthop gateway equal to a peer's tag address
    (RTA_GATEWAY, or RTA_VIA for IPv4 via an IPv6 link-local), else the
    nexthop's output device being the peer's member device."""

    def __init__(self, by_addr, by_oif):
        self.by_addr = dict(by_addr)  # packed address -> peer id
        self.by_oif = dict(by_oif)    # member ifindex -> peer id
        self._sets = {}

    def _intern(self, peers):
        return self._sets.setdefault(peers, peers)

    def resolve(self, route):
        """Sorted tuple of the peer ids a KernelRoute names; () for none."""
        peers = set()
        for gw, oif in route.nexthops:
            pid = self.by_addr.get(gw) if gw is not None else None
            if pid is None:
                pid = self.by_oif.get(oif)
            if pid is not None:
                peers.add(pid)
        if not peers:
            return ()
        return self._intern(tuple(sorted(peers))[:abi.MAX_ECMP])

    def __eq__(self, other):
        return isinstance(other, Tags) and (self.by_addr, self.by_oif) == (other.by_addr, other.by_oif)


class Filter:
    """Which kernel routes the daemon follows: tables (in preference order),
    protocols and realms (empty: any)."""

    def __init__(self, tables=(254,), protocols=(), realms=()):
        self.tables = {t: rank for rank, t in enumerate(tables)}
        self.protocols = frozenset(protocols)
        self.realms = frozenset(realms)

    def accepts(self, r):
        return (r.table in self.tables
                and (not self.protocols or r.protocol in self.protocols)
                and (not self.realms or r.realm in self.realms or (r.realm & 0xFFFF) in self.realms))

    def rank(self, r):
        """Lower wins: first table given, then lowest metric (as the kernel)."""
        return (self.tables[r.table] << 32) | r.priority


class Table:
    """Per prefix, the accepted routes that name peers: {rank: peers}.

    best() is what the kernel would use (lowest rank); with union=True, as
    for the feasible-path accept table, it is every peer of every route.

    Routes are keyed as the kernel keys them: table and metric (the rank),
    IPv4 TOS and IPv6 source prefix. A TOS or source-specific route applies
    to part of the traffic to its prefix only, and the maps key on the
    destination alone: such a route is kept apart (its add and delete touch
    nothing else) and never written, so it cannot steer all traffic to its
    prefix. `from ::/0` is no source prefix: the kernel stores it as a plain
    route."""

    def __init__(self, tags, flt, union=False):
        self.tags = tags
        self.filter = flt
        self.union = union
        self.prefixes = {}  # pkey -> (rank, peers) | {rank: peers}
        self.ignored = 0    # accepted routes that named no peer, or a TOS/source
        self.specific = {}  # (pkey, rank, tos, src) -> peers: TOS/source-specific routes naming peers
        self.per_peer = {}  # peer id -> prefixes whose best set holds it

    def __len__(self):
        return len(self.prefixes)

    def best(self, k):
        """The peer set the kernel's preferred route for prefix k names, or None."""
        v = self.prefixes.get(k)
        if v is None:
            return None
        if isinstance(v, tuple):
            return v[1]
        if self.union:
            return self.tags._intern(tuple(sorted({p for ps in v.values() for p in ps}))[:abi.MAX_ECMP])
        return v[min(v)]

    def update(self, route, deleted=False):
        """Apply one route (from a dump or an event); returns its pkey if
        the prefix's best peer set may have changed, else None."""
        if route.table not in self.filter.tables:
            return None
        # A route that fails the protocol/realm filter still replaces the one
        # of the same key that passed: the kernel keeps one per key.
        accepted = self.filter.accepts(route)
        k = pkey(route.family, route.dst, route.dst_len)
        rank = self.filter.rank(route)
        peers = self.tags.resolve(route) if accepted and not deleted else ()
        if accepted and not deleted and not peers:
            self.ignored += 1
        if route.tos or route.src is not None:
            self._specific((k, rank, route.tos, route.src), route, peers, deleted)
            return None
        v = self.prefixes.get(k)
        if v is None and peers:
            # the common case of a full dump: a prefix seen for the first time
            self.prefixes[k] = (rank, peers)
            self._count(None, peers)
            return k
        before = self.best(k)
        if isinstance(v, tuple):
            v = {v[0]: v[1]}
        elif v is None:
            v = {}
        if peers:
            v[rank] = peers
        elif deleted and route.family == AF6 and len(route.nexthops) == 1 and rank in v and len(v[rank]) > 1:
            # IPv6 reports the removal of one nexthop of a multipath route
            # as a delete naming that nexthop only: drop just its peer.
            gone = self.tags.resolve(route)
            rest = tuple(p for p in v[rank] if p not in gone)
            if rest:
                v[rank] = self.tags._intern(rest)
            else:
                del v[rank]
        else:
            v.pop(rank, None)
        if not v:
            self.prefixes.pop(k, None)
        elif len(v) == 1:
            self.prefixes[k] = next(iter(v.items()))
        else:
            self.prefixes[k] = v
        after = self.best(k)
        if after == before:
            return None
        self._count(before, after)
        return k

    def _specific(self, key, route, peers, deleted):
        """Track a TOS or source-specific route (for the count only)."""
        if peers:
            if key not in self.specific:
                self.ignored += 1
            self.specific[key] = peers
            return
        have = self.specific.pop(key, None)
        if have and deleted and route.family == AF6 and len(route.nexthops) == 1 and len(have) > 1:
            # one nexthop of a multipath route removed (see update)
            gone = self.tags.resolve(route)
            rest = tuple(p for p in have if p not in gone)
            if rest:
                self.specific[key] = rest

    def _count(self, before, after):
        per_peer = self.per_peer
        for p in before or ():
            per_peer[p] -= 1
        for p in after or ():
            per_peer[p] = per_peer.get(p, 0) + 1


# -- the maps side --------------------------------------------------------

def _map_entries(maps, version, kind="routes"):
    """{pkey: (origin, peers tuple)} of one family's LPM map."""
    fam = AF4 if version == 4 else AF6
    n = 4 if version == 4 else 16
    ktype = abi.Key4 if version == 4 else abi.Key6
    out = {}
    for k, r in bpfsys.lookup_batch(maps._routes_fd(version, kind), ktype, abi.Route):
        out[bytes((fam, k.prefixlen)) + bytes(k.addr[:n])] = (r.origin, tuple(route_peers(r)))
    return out


def map_entries(maps, kind="routes"):
    out = _map_entries(maps, 4, kind)
    out.update(_map_entries(maps, 6, kind))
    return out


def refresh(maps, entries, keys, kind="routes"):
    """Re-read `keys` from the maps into `entries` (the caller's view of
    them) before an incremental diff: `wgbpf route` writes the maps behind
    the daemon's back, and its entries must win. Returns how many differed
    from the view (then other entries may be stale too)."""
    stale = 0
    r = abi.Route()
    key = {AF4: abi.Key4(), AF6: abi.Key6()}
    fds = {AF4: maps._routes_fd(4, kind), AF6: maps._routes_fd(6, kind)}
    for k in keys:
        kk = key[k[0]]
        kk.prefixlen = k[1]
        ctypes.memmove(ctypes.addressof(kk) + 4, k[2:], len(k) - 2)
        # an LPM lookup of the prefix itself: exact when the stored length is
        if bpfsys.lookup(fds[k[0]], kk, r) and r.prefixlen == k[1]:
            have = (r.origin, tuple(r.peers[:r.count]))
        else:
            have = None
        if have != entries.get(k):
            stale += 1
            if have is None:
                del entries[k]
            else:
                entries[k] = have
    return stale


class Diff:
    def __init__(self):
        self.put = {}     # pkey -> peers
        self.delete = []  # pkeys

    def __len__(self):
        return len(self.put) + len(self.delete)


def diff(table, entries, keys=None):
    """What to write so the maps' kernel-origin entries equal the table.

    Entries written by `wgbpf route` (static) and tag host routes are left
    alone, never replaced nor deleted: they are the operator's, and win over
    routes. `entries` must be fresh for the keys compared (map_entries, or
    refresh). `keys` limits the work to some prefixes (incremental); None
    compares everything."""
    d = Diff()
    kern = abi.Origin.KERNEL
    if keys is None:
        for k, (origin, peers) in entries.items():
            if origin == kern and table.best(k) is None:
                d.delete.append(k)
        keys = table.prefixes.keys()
    for k in keys:
        want = table.best(k)
        have = entries.get(k)
        if want is None:
            if have is not None and have[0] == kern:
                d.delete.append(k)
        elif have is None or (have[0] == kern and have[1] != want):
            d.put[k] = want
    return d


def _keys_array(version, ks):
    ktype = abi.Key4 if version == 4 else abi.Key6
    arr = (ktype * len(ks))()
    for i, k in enumerate(ks):
        arr[i].prefixlen = k[1]
        ctypes.memmove(ctypes.addressof(arr[i]) + 4, k[2:], len(k) - 2)
    return arr


BATCH = 16384


def apply_diff(maps, d, entries=None, progress=None, kind="routes"):
    """Write a Diff to the maps in batches; keep `entries` (the caller's
    view of the maps) in step. Returns the number of map writes."""
    kern = int(abi.Origin.KERNEL)
    writes = 0
    for version, fam in ((4, AF4), (6, AF6)):
        fd = maps._routes_fd(version, kind)
        puts = [(k, p) for k, p in d.put.items() if k[0] == fam]
        for i in range(0, len(puts), BATCH):
            chunk = puts[i:i + BATCH]
            keys = _keys_array(version, [k for k, _ in chunk])
            vals = (abi.Route * len(chunk))()
            for j, (k, peers) in enumerate(chunk):
                v = vals[j]
                v.count, v.origin, v.prefixlen = len(peers), kern, k[1]
                for x, p in enumerate(peers):
                    v.peers[x] = p
            bpfsys.update_batch(fd, keys, vals)
            writes += len(chunk)
            if progress:
                progress(writes)
        dels = [k for k in d.delete if k[0] == fam]
        for i in range(0, len(dels), BATCH):
            chunk = dels[i:i + BATCH]
            try:
                bpfsys.delete_batch(fd, _keys_array(version, chunk))
            except OSError:
                # one already gone (ENOENT) stops a batch: finish one by one
                for k in chunk:
                    key = _keys_array(version, [k])[0]
                    bpfsys.delete(fd, key)
            writes += len(chunk)
            if progress:
                progress(writes)
    if entries is not None:
        for k, peers in d.put.items():
            entries[k] = (kern, peers)
        for k in d.delete:
            entries.pop(k, None)
    return writes

# SPDX-License-Identifier: GPL-2.0-or-later
"""Kernel routes -> peer sets, per prefix: the sync engine's model.

Tags decides which peers a route names; Filter which routes are followed;
Table holds, per prefix, the routes of the followed tables and yields the
peers of the one the kernel would prefer ("no peer" when it names none); diff() says what to write so a view of the
maps equals the table. Nothing here touches the maps (routemaps.Tries.apply and
routemaps.Writer do): the model is tested without a kernel.

A full table is a million prefixes, so no object lives per route: a prefix
is a compact bytes key, `bytes([family, length]) + addr`, and its routes
one small int, (rank id << 24) | peer set id, in one dict; the rare prefix
with several routes (other tables, other metrics) holds a dict of them.
Peer sets and ranks are interned to ids, and a route's nexthops resolve
through a cache (a full table has few distinct nexthops). Measured on 1M
IPv4 + 200k IPv6 prefixes (docs/bench, bench_sync --model): ~100 bytes a
prefix, against ~330 for the tuples and dicts of views this replaced.
"""
import socket

from . import abi, ties
from .nexthops import SILENT, Nexthops  # noqa: F401 (re-exported: sync.SILENT, sync.Nexthops)
from .peersets import SET_BITS as _SET_BITS, SET_MASK as _SET_MASK, Tags, weighed  # noqa: F401 (sync.Tags)
from .routes import NH

AF4, AF6 = socket.AF_INET, socket.AF_INET6
# the first two bytes of a pkey, made once
_HEAD = {AF4: [bytes((AF4, n)) for n in range(33)], AF6: [bytes((AF6, n)) for n in range(129)]}


def pkey(family, dst, dst_len):
    return bytes((family, dst_len)) + dst


def pkey_network(k):
    import ipaddress
    return ipaddress.ip_network((ipaddress.ip_address(k[2:]), k[1]))


def network_pkey(net):
    return pkey(AF4 if net.version == 4 else AF6, net.network_address.packed, net.prefixlen)


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
    """Per prefix, the routes the kernel keeps for it in the followed tables.

    best() is what the kernel would use (lowest rank); with union=True, as
    for the feasible-path accept table, it is every peer of every route.
    entry() is what the maps hold for a prefix: its best peer set, () when
    the best route names no peer (a "no peer" entry: a blackhole or a route
    through a LAN device must hide the covering route's peer, for steering
    and for the source check, as the kernel's rp_filter does), None when
    the table has no route for it.

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
        # pkey -> (rank id << 24) | set id, or {rank: set id} for several
        # routes; set 0: a route naming no peer (it may hide worse ones)
        self.prefixes = {}
        self.ranks = []     # rank id -> rank
        self._rank_ids = {}
        self.ignored = 0    # accepted routes that named no peer, or a TOS/source
        self.specific = {}  # (pkey, rank, tos, src) -> peers: TOS/source-specific routes naming peers
        self._best = []     # set id -> prefixes whose best set it is
        self._hops = tags._hops  # the nexthops -> set id cache, read inline
        # set slot of a nexthop object -> the prefixes that took a route
        # through it (appended as they come; entries whose route has gone
        # since are skipped on use, and dropped when the list doubles): a
        # changed object names exactly the prefixes to write, never a
        # rescan of the table, and a deleted one the routes to remove
        self.nexthop_keys = {}
        self._kept = {}  # slot -> its list's length when last compacted
        self.filling = False  # a dump into a fresh table: every prefix new, nothing to compact
        # the maps name sets by id (the maps backend): a changed object's
        # slot is rewritten, not the prefixes through it, but where a
        # union names it among others (nexthop_keys_of)
        self.by_id = False
        # pkey -> {rank: [(key, set id)]}: the rare keys with two routes or
        # more, in the kernel's order (wgbpf/ties.py); the prefix's value
        # holds the set the kernel uses of them
        self.ties = {}
        self.prev = None     # a dump: the route before this one (ties.route)
        self.unsure = False  # a tie holds a route whose nexthops are not known: read again

    def __len__(self):
        """Prefixes whose best route names peers."""
        if self.union:
            return sum(1 for k in self.prefixes if self.best_id(k))
        sets = self.tags.sets
        return sum(n for i, n in enumerate(self._best) if n and sets[i])

    def _rank_id(self, rank):
        i = self._rank_ids.get(rank)
        if i is None:
            i = self._rank_ids[rank] = len(self.ranks)
            self.ranks.append(rank)
        return i

    def _routes(self, v):
        """{rank: set id} of a stored value."""
        if isinstance(v, dict):
            return v
        return {self.ranks[v >> _SET_BITS]: v & _SET_MASK}

    def best_id(self, k):
        """The set id of best(k); 0 when the prefix names no peer."""
        i = self._best_raw(k)
        return i if self.tags.sets[i] else 0  # a nexthop object's slot may name none now

    def _best_raw(self, k):
        v = self.prefixes.get(k)
        if v is None:
            return 0
        if not isinstance(v, dict):
            return v & _SET_MASK
        if self.union:  # every route that names peers (a blackhole is no path)
            sets = self.tags.sets
            return self.tags.set_id(tuple(sorted({p for i in v.values() for p in sets[i]}))[:abi.MAX_ECMP])
        return v[min(v)]

    def best(self, k):
        """The peer set the kernel's preferred route for prefix k names, or None."""
        return self.tags.sets[self.best_id(k)] or None

    def best_weights(self, k):
        """The weights of best(k)'s peers, in its order; None for equal."""
        return self.tags.weights[self.best_id(k)]

    def entry_id(self, k):
        """The set id of the maps' entry for prefix k (0: "no peer"), None
        for none: a nexthop object's slot even when it names no peer now,
        so that its routes need no write when it names some again."""
        if k not in self.prefixes:
            return None
        return self._best_raw(k)

    def entry(self, k):
        """The maps' entry for prefix k: its best peer set, () for "no
        peer", None for none at all."""
        if k not in self.prefixes:
            return None
        return self.tags.sets[self.best_id(k)]

    def entries(self):
        """(pkey, entry) of every prefix with a route, "no peer" ones too."""
        entry = self.entry
        for k in self.prefixes:
            yield k, entry(k)

    def items(self):
        """(pkey, best peer set) of every prefix whose best route names peers."""
        sets = self.tags.sets
        for k, v in self.prefixes.items():
            peers = sets[v & _SET_MASK] if not isinstance(v, dict) else self.best(k)
            if peers:
                yield k, peers

    @property
    def per_peer(self):
        """peer id -> prefixes whose best set holds it."""
        out = {}
        if self.union:
            for k in self.prefixes:
                for p in self.tags.sets[self.best_id(k)]:
                    out[p] = out.get(p, 0) + 1
            return out
        for i, n in enumerate(self._best):
            for p in self.tags.sets[i]:
                out[p] = out.get(p, 0) + n
        return out

    # rooms: the per-route hot path of a million-route dump, inlined on purpose (bench_sync.py)
    def update(self, route, deleted=False, flags=ties.NLM_F_REPLACE):
        """Apply one route (from a dump or an event); returns its pkey if
        the prefix's entry (its best peer set, or "no peer") may have
        changed, else None. flags: the message's nlmsg_flags, which say
        where a route of a key that has one goes (ties.placement; a dump
        passes ties.DUMP); by default it replaces it.

        The first lines are the whole of a full dump's common case (a new
        prefix, one route): they run a million times."""
        family, dst, dst_len, table, priority, protocol, realm, nexthops, tos, src = route
        flt = self.filter
        trank = flt.tables.get(table)
        if trank is None:
            return None
        if family == AF6 and dst[0] == 0xFE and dst[1] & 0xC0 == 0x80 and dst_len >= 10:
            # fe80::/10: link-local, never forwarded; the kernel's fe80::/64
            # on every device would name whichever member came up last.
            # Link-local tags are the operator's entries, not routes.
            return None
        vanished = self.tags.nexthops.vanished
        if vanished and not deleted and nexthops and nexthops[0][0] is NH and nexthops[0][1] in vanished:
            deleted = True  # queued before its object went: the kernel removed it with it
        # A route that fails the protocol/realm filter still replaces the one
        # of the same key that passed: the kernel keeps one per key.
        accepted = ((not flt.protocols or protocol in flt.protocols)
                    and (not flt.realms or realm in flt.realms or (realm & 0xFFFF) in flt.realms))
        k = _HEAD[family][dst_len] + dst
        sid = 0
        if not deleted:
            sid = self._hops.get(nexthops)
            if sid is None:
                sid = self.tags.resolve_id(nexthops)
            if not accepted:  # not ours to follow: it hides, unless via the front
                sid = sid if sid == Tags.VIA_FRONT else 0
            elif sid <= 0:
                self.ignored += 1
            elif nexthops[0][0] is NH:
                self._note(sid, k)
        rank = (trank << 32) | priority
        if tos or src is not None:
            self._specific((k, rank, tos, src), route, max(0, sid), deleted)
            return None
        prefixes = self.prefixes
        v = prefixes.get(k)
        if (self.ties and rank in self.ties.get(k, ())) or (
                flags != ties.NLM_F_REPLACE and not deleted and v is not None and self._has_rank(v, rank)
                and ties.placement(family, flags, nexthops) in (ties.APPEND, ties.PREPEND)):
            return ties.route(self, k, rank, route, sid, deleted, flags)
        if v is None:
            if deleted or sid < 0:
                return None
            # the common case of a full dump: a prefix seen for the first time.
            # A route that names no peer is kept too (set 0): the kernel
            # prefers it to worse ones that do (a blackhole, a route via
            # another device), and so must the maps.
            rid = self._rank_ids.get(rank)
            if rid is None:
                rid = self._rank_id(rank)
            prefixes[k] = (rid << _SET_BITS) | sid
            if sid:
                self._count(0, sid)
            return k  # a peer set, or a "no peer" entry
        if not isinstance(v, dict) and v >> _SET_BITS == self._rank_ids.get(rank):
            # the common case of a route event: the prefix's one route
            # replaced or deleted (an IPv6 multipath route losing one
            # nexthop takes the long way)
            before = v & _SET_MASK
            if not deleted and sid >= 0:
                prefixes[k] = (v & ~_SET_MASK) | sid
                after = sid
            elif (deleted and family == AF6 and len(nexthops) == 1 and len(self.tags.sets[before]) > 1
                  and nexthops[0][0] is not NH):
                after = None
            else:
                del prefixes[k]
                if not before:
                    return k  # its "no peer" entry goes
                after = 0
            if after is not None:
                if after == before:
                    return None
                self._count(before, after)
                return k
        before = self._best_raw(k)
        v = dict(self._routes(v))
        if not deleted and sid >= 0:
            v[rank] = sid
        elif sid < 0:
            v.pop(rank, None)  # via the front, naming no peer: hides nothing
        elif (family == AF6 and len(nexthops) == 1 and v.get(rank) and len(self.tags.sets[v[rank]]) > 1
              and nexthops[0][0] is not NH):
            # one nexthop of an IPv6 multipath route removed: just its peer goes
            rest = self.tags.without_id(v[rank], route)
            if rest:
                v[rank] = rest
            else:
                del v[rank]
        else:
            v.pop(rank, None)
        self._store(k, v)
        after = self._best_raw(k)
        if after == before:
            return k if k not in prefixes else None  # gone: even a "no peer" entry
        self._count(before, after)
        return k

    def _has_rank(self, v, rank):
        if isinstance(v, dict):
            return rank in v
        return v >> _SET_BITS == self._rank_ids.get(rank)

    def ambiguous(self):
        """IPv6 prefixes whose routes of one key name different peers."""
        return ties.ambiguous_count(self)

    def _store(self, k, v):
        """A prefix's routes {rank: set id} back in their compact form."""
        if not v:
            del self.prefixes[k]
        elif len(v) == 1:
            (r, i), = v.items()
            self.prefixes[k] = (self._rank_id(r) << _SET_BITS) | i
        else:
            self.prefixes[k] = v

    def _note(self, slot, k):
        keys = self.nexthop_keys.get(slot)
        if keys is None:
            keys = self.nexthop_keys[slot] = []
        if not self.filling and len(keys) >= 2 * self._kept.get(slot, 0) + 64:
            # k's route is not stored yet: it joins after the others' check
            keys[:] = [x for x in dict.fromkeys(keys) if self._uses(x, slot)]
            self._kept[slot] = len(keys) + 1
        keys.append(k)

    def filled(self):
        """The dump is in: its lists are as long as their routes (each
        prefix seen once), and compaction starts from there."""
        self.filling = False
        self._kept = {slot: len(keys) for slot, keys in self.nexthop_keys.items()}

    def _uses(self, k, slot):
        """Whether a route of prefix k is through the object of `slot`."""
        v = self.prefixes.get(k)
        if v is None:
            return False
        if isinstance(v, dict):
            return slot in v.values()
        return v & _SET_MASK == slot

    def nexthop_keys_of(self, slots):
        """The prefixes with a route through the objects of `slots` (whose
        peers changed: Tags.refresh): their best set may have changed."""
        out = set()
        if self.by_id and not self.union:
            return out  # the best route of a prefix does not depend on its set's peers
        for slot in slots:
            keys = (k for k in dict.fromkeys(self.nexthop_keys.get(slot, ())) if self._uses(k, slot))
            if self.by_id:  # only a union of several routes is interned from the peers
                keys = (k for k in keys if isinstance(self.prefixes[k], dict))
            out.update(keys)
        return out

    def drop_nexthops(self, nhids):
        """Nexthop objects deleted: the kernel removed their routes without
        a word, and so do we; returns the prefixes changed."""
        out = set()
        for nhid in nhids:
            slot = self.tags.slots.get(nhid)
            for k in dict.fromkeys(self.nexthop_keys.pop(slot, ())):
                if self.ties and k in self.ties and ties.untie(self, k, slot):
                    out.add(k)
                v = self.prefixes.get(k)
                if v is None or not self._uses(k, slot):
                    continue
                before = self._best_raw(k)
                self._store(k, {r: i for r, i in self._routes(v).items() if i != slot})
                after = self._best_raw(k)
                if after != before:
                    self._count(before, after)
                out.add(k)
            self._kept.pop(slot, None)
        return out

    def _count(self, before, after):
        """Prefixes per best set id, kept as routes come and go, so that
        len() and per_peer cost no walk of a million prefixes. Not in a
        union table: its "best" is interned from its routes' contents,
        which a nexthop object's change alters without a route event, so
        a count kept under it would be taken from the wrong id later."""
        if self.union:
            return
        best = self._best
        if before and after and self.by_id and after not in self.tags.parent:
            self.tags.parent[after] = before
        if before:
            best[before] -= 1
        if after:
            if after >= len(best):
                best.extend([0] * (after + 1 - len(best)))
            best[after] += 1

    def _specific(self, key, route, sid, deleted):
        """Track a TOS or source-specific route (for the count only)."""
        if sid:
            if key not in self.specific:
                self.ignored += 1
            self.specific[key] = self.tags.sets[sid]
            return
        have = self.specific.pop(key, None)
        if (have and deleted and route.family == AF6 and len(route.nexthops) == 1 and len(have) > 1
                and route.nexthops[0][0] is not NH):
            rest = self.tags.without(have, route)  # one nexthop removed (see update)
            if rest:
                self.specific[key] = rest


class Diff:
    def __init__(self):
        self.put = {}     # pkey -> peers
        self.delete = []  # pkeys

    def __len__(self):
        return len(self.put) + len(self.delete)


def changes(table, keys, operator, entry=None):
    """What to write for `keys`, prefixes whose best peer set changed, when
    the maps are known to hold each one's previous best set, but for the
    `operator` prefixes (static, tag entries: left alone). No read of the
    maps: a prefix with no route left is deleted, the rest put ("no peer"
    entries too). `entry`: what the maps hold for a prefix (default
    Table.entry, its peers; the maps backend: its set's kernel id)."""
    d = Diff()
    entry = entry or table.entry
    for k in keys:
        if k not in operator:
            peers = entry(k)
            if peers is None:
                d.delete.append(k)
            else:
                d.put[k] = peers
    return d


def diff(table, entries, keys=None, entry=None):
    """What to write so the maps' kernel-origin entries equal the table.

    `entries` is a view of the maps, {pkey: (origin, peers)}, fresh for the
    keys compared (Tries.entries, Tries.read). Entries written by `wgbpf
    route` (static) and tag host routes are left alone, never replaced nor
    deleted: they are the operator's, and win over routes. `keys` limits
    the work to some prefixes (incremental); None compares everything.
    `entry`: as for changes()."""
    d = Diff()
    entry = entry or table.entry
    kern = abi.Origin.KERNEL
    if keys is None:
        for k, (origin, peers) in entries.items():
            if origin == kern and k not in table.prefixes:
                d.delete.append(k)
        keys = table.prefixes.keys()
    for k in keys:
        want = entry(k)
        have = entries.get(k)
        if want is None:
            if have is not None and have[0] == kern:
                d.delete.append(k)
        elif have is None or (have[0] == kern and have[1] != want):
            d.put[k] = want
    return d

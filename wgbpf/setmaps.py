# SPDX-License-Identifier: GPL-2.0-or-later
"""Peer sets in the kernel: the `sets` array the route values (and dir24's
entries) name, its buckets, and who takes which ids.

    fill        a set's 64 buckets, in proportion to its members' weights
    Sets        one Maps' sets array (m.sets): read, written, and the
                operator's ids (`wgbpf route`, tags), found by content
    KernelSets  the daemon's ids: the model's sets (sync/peersets) as
                kernel ids, adopted across restarts, swept when unused

Buckets: resilient, as the kernel's resilient nexthop groups, rather than
Maglev's table (Cilium, katran). Maglev fills a large prime-sized table
from each member's permutation, so a change moves a few percent of flows
that were not the leaver's; we hold 64 buckets a set (a set is an array
element, read per packet) and want the leaver's flows alone to move. So a
changed nexthop object keeps every bucket of the members that stay, up to
their new share, and hands out only the rest (fill's `keep`); a fresh set
(found by content) is filled by rendezvous scores, so that two sets that
differ by one member share most buckets too. A member down keeps its
buckets: the data plane passes its flows on by other bits of the hash
(bpf/lookup.h's pick), so nothing is written at all.
"""
import ctypes
import struct

from . import abi, bpfsys
from .bpfsys import MapError

BUCKETS = abi.SET_BUCKETS
SET_SIZE = ctypes.sizeof(abi.Set)
_SET = struct.Struct("=BBxxI%dH%dH%ds" % (abi.MAX_ECMP, abi.MAX_ECMP, BUCKETS))
FIRST_OPERATOR = abi.OPERATOR_SETS


class SetsFull(MapError):
    """No set id left in a range (a full sync frees the unused ones)."""


def quotas(weights):
    """Buckets per member: their share of BUCKETS by weight, the rest by
    largest remainder (then the earlier member)."""
    total = sum(weights)
    q = [w * BUCKETS // total for w in weights]
    order = sorted(range(len(weights)), key=lambda i: (-(weights[i] * BUCKETS % total), i))
    for i in order[:BUCKETS - sum(q)]:
        q[i] += 1
    return q


def _score(bucket, peer):
    # a fixed mix of (bucket, peer id): the same in every process and run
    h = (bucket * 0x9E3779B1 + peer * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    h ^= h >> 12
    h = (h * 0x297A2D39) & 0xFFFFFFFF
    return h ^ (h >> 15)


def fill(members, weights=None, keep=None):
    """The buckets (member index per bucket, bytes) of a set of peer ids
    `members` with `weights` (None: equal). `keep`: (members, buckets) the
    set held before: each bucket stays with its member while that member
    has share left; only the others are handed out."""
    n = len(members)
    if n == 0:
        return bytes(BUCKETS)
    q = quotas(list(weights) if weights else [1] * n)
    out = [None] * BUCKETS
    if keep is not None:
        index = {p: i for i, p in enumerate(members)}
        was, buckets = keep
        for b in range(BUCKETS):
            i = index.get(was[buckets[b]]) if buckets[b] < len(was) else None
            if i is not None and q[i]:
                out[b] = i
                q[i] -= 1
    # the rest by rendezvous: highest score first, while the member has share
    pairs = sorted(((_score(b, members[i]), b, i) for b in range(BUCKETS) if out[b] is None
                    for i in range(n) if q[i]), reverse=True)
    for _s, b, i in pairs:
        if out[b] is None and q[i]:
            out[b] = i
            q[i] -= 1
    return bytes(out)


def stored(weights):
    """Weights as the map's u16s hold them: a group's may be 65536 (the
    kernel keeps weight - 1), so a set with one scales all to fit."""
    top = max(weights)
    if top <= 0xFFFF:
        return tuple(weights)
    return tuple(max(1, w * 0xFFFF // top) for w in weights)


def pack(members, weights, kind, nexthop=0, buckets=None):
    """A Set value's bytes (buckets filled from the weights as given)."""
    pad = (0,) * (abi.MAX_ECMP - len(members))
    w = stored(weights) if weights else (1,) * len(members)
    return _SET.pack(len(members), int(kind), nexthop, *members, *pad, *w, *pad,
                     buckets if buckets is not None else fill(members, weights))


def describe(sid, members, weights, names):
    """A set as listings show it: "set 17: alice 3, bob 1" (weights only
    when they differ)."""
    if not members:
        return f"set {sid}: no peer"
    who = [names.get(p, f"#{p}") for p in members]
    if weights and len(set(weights)) > 1:
        who = [f"{n} {w}" for n, w in zip(who, weights)]
    return f"set {sid}: " + ", ".join(who)


def weighed_verdict(owners, extra, up, name):
    """Steering by flow hash over a set's live members, with their weights
    when they differ; a member whose share is under half a bucket gets no
    flow while another is up, and is said so."""
    live = [(i, w, b) for i, w, b in zip(owners, extra["weights"], extra["buckets"]) if up.get(i)]
    some = [x for x in live if x[2]] or live
    out = f"steer by flow hash to one of {', '.join(name.get(i, f'#{i}') for i, _w, _b in some)}"
    if len({w for _i, w, _b in some}) > 1:
        out += f", by weight ({':'.join(str(w) for _i, w, _b in some)})"
    none = [name.get(i, f"#{i}") for i, _w, b in live if not b and some is not live]
    return out + (f"; {', '.join(none)}: weight under half a bucket, no flow" if none else "")


def unpack(v):
    """(kind, nexthop, members, weights or None for equal, buckets) of a Set's bytes."""
    f = _SET.unpack_from(v)
    n = f[0]
    members = tuple(f[3:3 + n])
    w = tuple(f[3 + abi.MAX_ECMP:3 + abi.MAX_ECMP + n])
    return f[1], f[2], members, (w if len(set(w)) > 1 else None), f[-1]


class Sets:
    """The sets array of one Maps (m.sets)."""

    def __init__(self, maps):
        self.maps = maps
        self._operator = None  # operator id -> (members, weights), read at first use

    @property
    def fd(self):
        return self.maps.fds["sets"]

    def read(self, sid):
        """(kind, nexthop, members, weights, buckets) of one set."""
        v = ctypes.create_string_buffer(SET_SIZE)
        if not bpfsys.lookup(self.fd, ctypes.c_uint32(sid), v):
            raise MapError(f"set {sid}: not in the sets map")
        return unpack(v.raw)

    def all(self, first=1, last=abi.MAX_SETS):
        """{id: (kind, nexthop, members, weights, buckets)} of the sets in
        use (kind not FREE) with ids first .. last - 1, read in batches."""
        data = bpfsys.read_array(self.fd, first, last - first, SET_SIZE)
        out = {}
        for i in range(last - first):
            if data[i * SET_SIZE + 1]:
                out[first + i] = unpack(data[i * SET_SIZE:(i + 1) * SET_SIZE])
        return out

    def peers(self):
        """{id: (members, weights)} of every set in use: what a listing
        shows for a route's set id (0: names no peer)."""
        return {sid: (s[2], s[3]) for sid, s in self.all().items()}

    def rows(self, names):
        """Every set in use, for `dump`: its id, kind (interned by content,
        or a kernel nexthop object's), owner, members, weights and the
        buckets each member holds. `names`: {peer id: name}."""
        rows = []
        for sid, (kind, nexthop, members, weights, buckets) in sorted(self.all().items()):
            rows.append({"set": sid, "kind": abi.SetKind(kind).name.lower(), "nexthop": nexthop or None,
                         "owner": "daemon" if sid < FIRST_OPERATOR else "operator",
                         "peers": [names.get(p, f"#{p}") for p in members],
                         "weights": list(weights or [1] * len(members)),
                         "buckets": [buckets.count(i) for i in range(len(members))]})
        return rows

    def members(self, sid):
        """The peer ids of one set; () for 0 (a "no peer" entry)."""
        return self.read(sid)[2] if sid else ()

    def weighed(self, sid):
        """(members, weights, each 1 for an equal split) of one set."""
        if not sid:
            return (), ()
        _k, _n, members, weights, _b = self.read(sid)
        return members, weights or (1,) * len(members)

    def write(self, sid, value):
        bpfsys.update(self.fd, ctypes.c_uint32(sid), ctypes.create_string_buffer(value, SET_SIZE))

    def free(self, sid):
        self.write(sid, bytes(SET_SIZE))

    def operator_id(self, members, weights=None):
        """The id of a set of the operator's (`wgbpf route`, a peer's tag),
        by content: an interned set of the operator's range with these
        members and weights, else a free id written now. The caller holds
        the writer lock: no other writer takes operator ids meanwhile, so
        the range is read once a Sets (an attach writes a route a tag).
        All taken: the ids no route names are freed first."""
        if not members:
            return 0
        key = (tuple(members), tuple(weights) if weights else None)
        for attempt in range(3):  # cached; read again (another Maps wrote), then swept
            if self._operator is None:
                self._operator = {}
                for sid, s in self.all(FIRST_OPERATOR).items():
                    self._operator[sid] = (s[2], s[3]) if s[0] == abi.SetKind.INTERNED else None
            sid = next((i for i, have in self._operator.items() if have == key), None)
            if sid is not None:
                kind, _n, members, weights, _b = self.read(sid)
                if kind == abi.SetKind.INTERNED and (members, weights) == key:
                    return sid
            else:
                sid = next((i for i in range(FIRST_OPERATOR, abi.MAX_SETS) if i not in self._operator), None)
                if sid is not None and self.read(sid)[0] == abi.SetKind.FREE:
                    self.write(sid, pack(*key, abi.SetKind.INTERNED))
                    self._operator[sid] = key
                    return sid
            if sid is None and attempt:
                self.sweep_operator()
            self._operator = None
        raise SetsFull(f"all {abi.MAX_SETS - FIRST_OPERATOR} peer set ids of static routes and tags "
                       f"are in use")

    def named(self):
        """The set ids that route entries name, in every trie."""
        out = set()
        for trie in ("routes", "accept"):
            for head, ks, keys, values, count in self.maps.tries.batches(trie):
                out.update(struct.unpack_from("=%s" % ("I4x" * count), values))
        return out

    def sweep_operator(self):
        """Free the operator's sets that no route entry names."""
        named = self.named()
        for sid in self.all(FIRST_OPERATOR):
            if sid not in named:
                self.free(sid)
        self._operator = None


class KernelSets:
    """The daemon's ids of the sets array (1 .. OPERATOR_SETS - 1): each
    set of the model (peersets.Tags: interned sets by content, nexthop
    objects' slots by object id) as a kernel id. One daemon an instance,
    so it takes them without a lock.

    Kept across restarts: a starting daemon adopts the ids it finds (an
    interned set by its content, an object's by its id), so a restart
    rewrites no route whose set is the same. Freed by sweep (as a full
    sync starts, once a quarter of the ids or less is left: the ids no
    entry names); a deleted object's id is retired until then, never taken by
    another object while a route may name it. Out of ids, an event batch
    fails (SetsFull) and the daemon's full resync sweeps."""

    def __init__(self, sets):
        self.sets = sets
        self.by_content = {}  # (members, weights) -> id
        self.by_nexthop = {}  # nexthop id -> id
        self.held = {}        # id -> (members, weights, buckets) as written
        self.retired = set()  # ids of deleted objects, freed at the next sweep
        self.model = {}       # the bound Tags' set id -> id
        self.tags = None
        self.writes = 0
        self.short = 0          # prefixes written as "no peer" for want of an id
        self.exhausted = False  # since the last full sync: ids ran out
        have = sets.all(1, FIRST_OPERATOR)
        for sid, (kind, nexthop, members, weights, buckets) in have.items():
            if kind == abi.SetKind.INTERNED and (members, weights) not in self.by_content:
                self.by_content[(members, weights)] = sid
            elif kind == abi.SetKind.NEXTHOP and nexthop and nexthop not in self.by_nexthop:
                self.by_nexthop[nexthop] = sid
            else:
                # a deleted object's (nexthop 0: follow() retired it), or a
                # duplicate: named by no set we make, freed by a sweep
                self.retired.add(sid)
            self.held[sid] = (members, weights, buckets)
        self.free = [i for i in range(FIRST_OPERATOR - 1, 0, -1) if i not in have]

    def bind(self, tags):
        """Translate the set ids of these Tags from now on."""
        if tags is not self.tags:
            self.tags, self.model = tags, {}
            tags.track = True  # it keeps what follow() reads

    def kid(self, sid):
        """The kernel id of the bound Tags' set `sid` (made and written on
        first use); 0 for 0."""
        k = self.model.get(sid)
        if k is None:
            if not sid:
                return 0
            tags = self.tags
            nhid = tags.slot_nhid.get(sid)
            try:
                if nhid is not None:
                    k = self._nexthop(nhid, tags.sets[sid], tags.weights[sid])
                else:
                    parent = tags.parent.get(sid)
                    k = self._interned(tags.sets[sid], tags.weights[sid],
                                       None if parent is None else self.kid_in(tags, parent))
            except SetsFull:
                # out of ids: the prefix names no peer (fail closed: never
                # a stale set, and withdrawals go on), counted; the backend
                # asks a full sync, which frees the ids no entry names
                self.short += 1
                self.exhausted = True
                return 0
            self.model[sid] = k
        return k

    def kid_in(self, tags, sid):
        """The kernel id that set `sid` of other Tags (a table being
        replaced) has, without making one; None if it has none."""
        if not sid:
            return 0
        nhid = tags.slot_nhid.get(sid)
        if nhid is not None:
            return self.by_nexthop.get(nhid)
        return self.by_content.get((tags.sets[sid], tags.weights[sid]))

    def entry(self, table):
        """table.entry as the maps hold it: the kernel id of the prefix's
        set (None: no entry), for sync.changes and sync.diff."""
        entry_id, kid = table.entry_id, self.kid

        def get(k):
            sid = entry_id(k)
            return None if sid is None else kid(sid)
        return get

    def _take(self):
        """A free id; given back if the write that follows fails."""
        if not self.free:
            raise SetsFull(f"all {FIRST_OPERATOR - 1} peer set ids of the daemon are in use: "
                           f"a full sync frees those no route names")
        return self.free[-1]

    def interned(self, members, weights=None):
        """The id of a set by content, made and written on first use."""
        if not members:
            return 0
        return self._interned(tuple(members), tuple(weights) if weights else None)

    def _interned(self, members, weights, parent=None):
        """By content; a set made now for prefixes that named set `parent`
        before (a route changed: a peer left or joined) takes the
        parent's buckets as far as they go, so only the leaver's flows
        move (a set filled afresh shares most, not all, with it). No
        member: 0, the "no peer" set."""
        if not members:
            return 0
        k = self.by_content.get((members, weights))
        if k is None:
            k = self._take()
            keep = self.held.get(parent) if parent else None
            self._write(k, members, weights, abi.SetKind.INTERNED,
                        keep=None if keep is None or not keep[0] else (keep[0], keep[2]))
            self.by_content[(members, weights)] = k  # once written: a failed write leaves no trace
        return k

    def _nexthop(self, nhid, members, weights):
        k = self.by_nexthop.get(nhid)
        if k is None:
            k = self._take()
            self._write(k, members, weights, abi.SetKind.NEXTHOP, nhid)
            self.by_nexthop[nhid] = k  # once written: a failed write leaves no trace
        elif self.held[k][:2] != (members, weights):
            self._write(k, members, weights, abi.SetKind.NEXTHOP, nhid, keep=True)
        return k

    def _write(self, k, members, weights, kind, nhid=0, keep=None):
        """keep: True (the set's own buckets as they were), or (members,
        buckets) of another set to start from."""
        if keep is True:
            was = self.held.get(k)
            keep = (was[0], was[2]) if was and was[0] else None
        buckets = fill(members, weights, keep)
        self.sets.write(k, pack(members, weights, kind, nhid, buckets))
        if self.free and self.free[-1] == k:
            self.free.pop()  # taken (_take) and written
        self.held[k] = (members, weights, buckets)
        self.writes += 1

    def follow(self):
        """The bound Tags' slots that changed (Tags.changed: an object
        replaced, made, or deleted) written to their kernel sets: one
        write a changed object, whatever the routes through it."""
        tags = self.tags
        for sid in tags.changed:
            self.model.pop(sid, None)
        for nhid in tags.deleted:
            k = self.by_nexthop.pop(nhid, None)
            if k is not None:
                # kept as it is for the routes that may name it still, but
                # no longer its object's: a restart must not adopt it for
                # an object made again under that id
                members, weights, buckets = self.held[k]
                self.sets.write(k, pack(members, weights, abi.SetKind.NEXTHOP, 0, buckets))
                self.retired.add(k)
        for sid in tags.changed:
            nhid = tags.slot_nhid.get(sid)
            if nhid is not None and nhid in self.by_nexthop:
                self.kid(sid)  # rewritten in place if its peers changed
        tags.changed.clear()
        tags.deleted.clear()

    def low(self):
        """Whether a quarter or less of our ids is left: sweep() is due."""
        return len(self.free) <= (FIRST_OPERATOR - 1) // 4

    def sweep(self, named):
        """Free the ids of ours that no route entry names (`named`, kernel
        ids, read from the maps under the writer lock: before a full
        sync). Returns how many were freed."""
        gone = [k for k in self.held if k not in named]
        for k in gone:
            members, weights, _b = self.held.pop(k)
            self.sets.free(k)
            if self.by_content.get((members, weights)) == k:
                del self.by_content[(members, weights)]
            for nhid in [n for n, i in self.by_nexthop.items() if i == k]:
                del self.by_nexthop[nhid]
            self.free.append(k)
        self.retired -= set(gone)
        self.model = {s: k for s, k in self.model.items() if k in self.held}
        return len(gone)

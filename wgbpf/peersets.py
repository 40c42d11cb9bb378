# SPDX-License-Identifier: GPL-2.0-or-later
"""Peer sets: how routes name peers (Tags), the sets interned by content and
the nexthop objects' slots by id, in one id space the tables hold.

sync.Table keeps, per prefix, a set id; this module says what the id
means: the peers, in order, and their weights. Split from sync.py, whose
Table is the per-route hot path."""
import math

from . import abi
from .nexthops import Nexthops
from .routes import NH

SET_BITS = 24
SET_MASK = (1 << SET_BITS) - 1


class Tags:
    """How routes name peers: the nexthop's output device being the peer's
    member device, else, out of the front, a nexthop gateway equal to a
    peer's tag address (RTA_GATEWAY, or RTA_VIA for IPv4 via an IPv6
    link-local).

    Peer sets are interned: sets[id] is a sorted tuple of peer ids, id 0 the
    empty set (a route that names no peer), and weights[id] their weights
    in the same order, None for an equal split (the kernel's `weight` of a
    multipath hop, a group member's weight; a peer named by several hops
    weighs their sum; reduced by their gcd, so 3:1 and 6:2 are one set)."""

    CACHE = 1 << 16
    # a route naming no peer whose nexthops all go out the front: the kernel
    # hands its packets to the front, where the maps choose, so it hides
    # nothing (any other route naming no peer does)
    VIA_FRONT = -1

    def __init__(self, by_addr, by_oif, front=None):
        self.by_addr = dict(by_addr)  # packed address -> peer id
        self.by_oif = dict(by_oif)    # member ifindex -> peer id
        self.front = front            # the front's ifindex (or the allowedips device's)
        self.sets = [()]
        self.weights = [None]
        self._ids = {(): 0}  # peers, or (peers, weights) when weighted -> id
        self._hops = {}  # nexthops tuple -> set id
        self.nexthops = Nexthops()  # the kernel's nexthop objects (routes by RTA_NH_ID)
        # A route through a nexthop object stores the object's own set slot,
        # not an interned set: sets[slot] is the peers the object names now,
        # rewritten in place when it changes, so a million routes through
        # one object follow it without being touched (Table.nexthop_keys
        # says which prefixes to write). Two kinds in one id space, as
        # FRR's nhg_hash_entry is found by content or by id: an interned set
        # is immutable, found by content, and lives as long as the Tags (a
        # table has few distinct sets); a slot is mutable, found by its
        # object's id, never interned, and freed once its object is deleted
        # (release): its routes went with it, and zebra's ids only grow, so
        # slots kept would pile up until they overflow the id space.
        self.slots = {}  # nexthop id -> its set slot
        self.slot_nhid = {}  # its set slot -> nexthop id
        self.free = []   # slots freed, taken again before the list grows
        # for setmaps.KernelSets.follow (kept once it binds us: `track`):
        # slots whose peers or object changed since it last looked, and
        # the objects deleted
        self.track = False
        self.changed = set()
        self.deleted = []
        # set id -> a set whose prefixes moved to it (Table._count, in
        # tables whose maps name sets by id): a new kernel set starts from
        # its buckets, so a route losing a peer moves only that peer's flows
        self.parent = {}
        self.disagreements = 0  # compat mode: expanded hops that were not the object's
        self.truncated = 0      # hop sets naming more peers than a set holds (abi.MAX_ECMP)

    def set_id(self, peers, weights=None):
        key = peers if weights is None else (peers, weights)
        i = self._ids.get(key)
        if i is None:
            i = self._ids[key] = self._new(peers, weights)
        return i

    def _new(self, peers, weights):
        """A new id at the end of the id space, holding a set."""
        i = len(self.sets)
        if i > SET_MASK:
            raise OverflowError(f"more than {SET_MASK} distinct peer sets")
        self.sets.append(peers)
        self.weights.append(weights)
        return i

    def resolve_id(self, nexthops):
        """The set id of the peers a route's nexthops name; 0 for none."""
        i = self._hops.get(nexthops)
        if i is not None:
            return i
        if nexthops and nexthops[0][0] is NH:  # a nexthop object: it decides
            i = self.slot(nexthops[0][1])
            if len(nexthops) > 1:
                hops = {(gw, oif) for gw, oif, _w in self.nexthops.hops(nexthops[0][1])}
                if {h[:2] for h in nexthops[1:]} != hops:
                    self.disagreements += 1  # the expanded hops say otherwise: counted, not used
        else:
            i = self.set_id(*self._peers(nexthops))
            if not i and nexthops and all(h[1] == self.front for h in nexthops):
                i = self.VIA_FRONT
        if len(self._hops) >= self.CACHE:
            self._hops.clear()  # in place: Tables hold it
        self._hops[nexthops] = i
        return i

    def _peers(self, hops):
        """(sorted peer ids, their weights or None) of a route's or an
        object's hops: (gateway, oif) of weight 1, or (gateway, oif,
        weight)."""
        peers = {}
        for hop in hops:
            peer_id, _how = self.hop_peer(hop[0], hop[1])
            if peer_id is not None:
                peers[peer_id] = peers.get(peer_id, 0) + (hop[2] if len(hop) > 2 else 1)
        if len(peers) > abi.MAX_ECMP:
            # more than a set holds: the heaviest kept (then the lowest
            # ids), the rest counted, never a traceback, never a peer
            # the route does not name
            self.truncated += 1
            peers = {p: peers[p] for p in sorted(peers, key=lambda p: (-peers[p], p))[:abi.MAX_ECMP]}
        ids = tuple(sorted(peers))
        return ids, weighed(peers[p] for p in ids)

    def slot(self, nhid):
        """The set slot of a nexthop object (made on first use: an object
        not heard of yet names no peer until it comes)."""
        i = self.slots.get(nhid)
        if i is None:
            peers, weights = self._peers(self.nexthops.hops(nhid))
            if self.free:
                i = self.slots[nhid] = self.free.pop()
                self.sets[i], self.weights[i] = peers, weights
                if self.track:
                    self.changed.add(i)
            else:
                i = self.slots[nhid] = self._new(peers, weights)
            self.slot_nhid[i] = nhid
        return i

    def release(self, nhids):
        """Nexthop objects deleted, their routes gone from every table
        (Table.drop_nexthops): their slots are free for the next object.
        The nexthops cache forgets them (it may map hops to a slot)."""
        freed = [self.slots.pop(nhid) for nhid in nhids if nhid in self.slots]
        if self.track:
            self.deleted.extend(nhids)
            self.changed.update(freed)
        for i in freed:
            self.sets[i], self.weights[i] = (), None
            del self.slot_nhid[i]
            self.free.append(i)
        if freed:
            self._hops.clear()  # in place: Tables hold it

    def refresh(self, nhids):
        """Nexthop objects changed in the registry: their slots rewritten;
        returns the slots whose peers changed."""
        out = set()
        for nhid in nhids:
            i = self.slots.get(nhid)
            if i is not None:
                peers, weights = self._peers(self.nexthops.hops(nhid))
                if (peers, weights) != (self.sets[i], self.weights[i]):
                    self.sets[i], self.weights[i] = peers, weights
                    out.add(i)
        if self.track:
            self.changed |= out
        return out

    def hop_peer(self, gw, oif):
        """(peer id, how) of the peer one nexthop names: by its device
        being a member ("member"), else by its gateway being a tag on the
        front ("tag"); (None, None) for none. The packet leaves by the
        device, whatever the gateway: a tag via another peer's member is
        that member's peer, a tag via a LAN device names none (as
        fib_peer() in bpf/lookup.h). The one resolver of nexthops to
        peers: the daemon's tables and `wgbpf lookup` both ask it."""
        peer_id = self.by_oif.get(oif)
        if peer_id is not None:
            return peer_id, "member"
        if gw is not None and oif == self.front and self.front is not None:
            peer_id = self.by_addr.get(gw)
            if peer_id is not None:
                return peer_id, "tag"
        return None, None

    def resolve(self, route):
        """Sorted tuple of the peer ids a KernelRoute names; () for none."""
        return self.sets[max(0, self.resolve_id(route.nexthops))]

    def without(self, peers, route):
        """`peers` less those a route names: IPv6 reports the removal of one
        nexthop of a multipath route as a delete naming that nexthop only."""
        gone = self.resolve(route)
        return tuple(p for p in peers if p not in gone)

    def without_id(self, sid, route):
        """The set id of set `sid` less the peers a route names (as
        without), the others keeping their weights; 0 when none is left."""
        gone = self.resolve(route)
        w = self.weights[sid]
        kept = [(p, w[n] if w else 1) for n, p in enumerate(self.sets[sid]) if p not in gone]
        if not kept:
            return 0
        return self.set_id(tuple(p for p, _w in kept), weighed(x for _p, x in kept))

    def __eq__(self, other):
        return isinstance(other, Tags) and (self.by_addr, self.by_oif) == (other.by_addr, other.by_oif)


def weighed(weights):
    """Weights as a set keeps them: None for an equal split, else reduced
    by their gcd."""
    weights = tuple(weights)
    if len(set(weights)) <= 1:
        return None
    g = math.gcd(*weights)
    return tuple(x // g for x in weights)

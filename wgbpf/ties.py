# SPDX-License-Identifier: GPL-2.0-or-later
"""Routes of equal key: several routes to one prefix in one table with one
metric (and, for IPv4, one TOS). Where the kernel puts a new one, which it
deletes, and which it uses, so that the maps name what the kernel does.

IPv4 (net/ipv4/fib_trie.c, fib_table_insert and fib_table_delete): the
routes of a key are a list, and the kernel uses the first. NLM_F_REPLACE
replaces the first; NLM_F_APPEND (`ip route append`) adds at the end; a
create without NLM_F_EXCL (`ip route prepend`) adds in front; a plain `ip
route add` (NLM_F_EXCL) is refused when the key has a route. A deletion
removes the first route that matches what was asked, and its
RTM_DELROUTE carries that route.

IPv6 (net/ipv6/ip6_fib.c fib6_add_rt2node, route.c rt6_qualify_for_ecmp,
rt6_select): routes of one metric that qualify for ECMP (a gateway, no
nexthop object) are merged into one multipath route, whose RTM_NEWROUTE
carries every hop; a route of the same metric that does not qualify is
kept beside it, after the others (prepend or not), and NLM_F_REPLACE
replaces the first of the same qualification (else the first). Between
such routes the kernel chooses per lookup, from a round-robin pointer
moved by neighbour state (find_rr_leaf, rt6_score_route): no single
route is the one. So when they name different peers the maps name no
peer (fail closed), and `status` counts the prefix as ambiguous.

Measured with `ip monitor` on Linux 6.18: add 0x600, append 0xc00,
prepend 0x400, replace 0x100 in nlmsg_flags; an appended IPv6 gateway
route arrives as the whole multipath with 0xc00.

A tie is a list [(key, set id)] in the kernel's order, kept only for keys
with two routes or more (sync.Table.ties); key is (nexthops, protocol,
realm), or None for the route that was alone before an event began the
tie (the table keeps a route's set, not its nexthops; a dump gives the
key's routes one after the other, so there the first one is known). A
tie begun with an unknown route marks the table `unsure`: the backend
reads the routes again soon (rate-limited), and every route of the tie
is then known."""
import socket

from . import abi
from .routes import NH

AF4, AF6 = socket.AF_INET, socket.AF_INET6
NLM_F_MULTI, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x2, 0x100, 0x200, 0x400, 0x800
DUMP = NLM_F_MULTI  # a dump: routes come in the kernel's order, each after the last
FIRST, APPEND, PREPEND, MERGE = "first", "append", "prepend", "merge"
VIA_FRONT = -1  # sync.Tags.VIA_FRONT: a route out of the front naming no peer


def placement(family, flags, nexthops):
    """Where a new route of a key that has routes goes (FIRST: it replaces
    the first)."""
    if flags & NLM_F_REPLACE:
        return FIRST
    if family == AF6:
        if len(nexthops) > 1 and nexthops[0][0] is not NH:
            return MERGE  # the kernel's whole multipath route
        if flags & NLM_F_EXCL:
            return FIRST  # refused by the kernel: a stale table's repeat
        return APPEND if flags & (NLM_F_APPEND | NLM_F_CREATE | DUMP) else FIRST
    if flags & (NLM_F_APPEND | DUMP):
        return APPEND
    if flags & NLM_F_CREATE and not flags & NLM_F_EXCL:
        return PREPEND
    return FIRST


def qualifies(key):
    """IPv6: whether a route takes part in ECMP (every hop a gateway, no
    object); None when not known."""
    if key is None:
        return None
    hops = key[0]
    return bool(hops) and hops[0][0] is not NH and all(gw is not None for gw, _oif in hops)


def add(tie, key, sid, place, family):
    """The tie with a new route placed; None if nothing changes (the same
    route twice: the kernel refuses that, so a table read again got here
    first)."""
    if place != FIRST and any(k == key for k, _s in tie):
        return None
    tie = list(tie)
    if place == APPEND:
        tie.append((key, sid))
    elif place == PREPEND:
        tie.insert(0, (key, sid))
    elif place == MERGE:
        i = _first(tie, lambda k: qualifies(k) is not False)
        if i is None:
            tie.append((key, sid))
        else:
            tie[i] = (key, sid)
    else:
        i = 0
        if family == AF6:
            i = _first(tie, lambda k: qualifies(k) in (None, qualifies(key)))
            i = 0 if i is None else i
        tie[i] = (key, sid)
    return tie


def remove(tie, route, key, sid, resolve, without):
    """The tie less the deleted route (its set id `sid`); None if it holds
    no such route. The kernel deletes the first route that matches what
    was asked, and says which: the first entry of that key, or the
    unknown one before it if it names the same peers (its own key may be
    that one). IPv6 reports one hop removed from a multipath route as a
    deletion naming that hop: the multipath route shrinks.
    resolve(nexthops) -> set id; without(sid, route) -> the set id less
    the route's peers."""
    i = None
    for j, (k, s) in enumerate(tie):
        if k == key or (k is None and s == sid):
            i = j
            break
    tie = list(tie)
    if i is not None:
        del tie[i]
        return tie
    hops = route.nexthops
    if route.family == AF6 and len(hops) == 1 and hops[0][0] is not NH:
        i = _first(tie, lambda k: k is not None and hops[0] in k[0] and len(k[0]) > 1)
        if i is not None:
            rest = tuple(h for h in tie[i][0][0] if h != hops[0])
            tie[i] = ((rest,) + tie[i][0][1:], resolve(rest))
            return tie
    i = _first(tie, lambda k: k is None)
    if i is None:
        return None
    shrunk = without(tie[i][1], route) if route.family == AF6 and len(hops) == 1 else None
    if shrunk:
        tie[i] = (None, shrunk)
    else:
        del tie[i]
    return tie


def effective(tie, family, sets, union=False):
    """The set id the maps hold for the key: IPv4 the first route's; IPv6
    the routes' common set, else 0 (no single peer: fail closed). With
    union (the accept table), every route's peers."""
    sids = [s for _k, s in tie]
    if union:
        return tuple(sorted({p for s in sids if s > 0 for p in sets[s]}))
    first = sids[0]
    if family == AF4:
        return first
    if all(s == first or (s > 0 and first > 0 and sets[s] == sets[first]) for s in sids):
        return first
    return 0


def ambiguous(tie, family, sets):
    """Whether an IPv6 tie names no single peer."""
    return family == AF6 and effective(tie, family, sets) == 0 and any(s > 0 for _k, s in tie)


# -- a sync.Table's ties ---------------------------------------------------------

def route(table, k, rank, r, sid, deleted, flags):
    """Route r of a key that has another, or had, in table (sync.Table):
    the key's list changed as the kernel's, and the prefix's value for the
    rank set to the route the kernel uses of them; returns k if the
    prefix's entry may have changed."""
    v = table.prefixes.get(k)
    tie = table.ties.get(k, {}).get(rank)
    if tie is None:  # the key's one route, whose nexthops the table did not keep
        prev = table.prev  # a dump gives a key's routes one after the other
        if flags == DUMP and prev is not None and prev[:5] == r[:5] and prev[8:] == r[8:]:
            tie = [(route_key(prev), table._routes(v)[rank])]
        else:
            tie = [(None, table._routes(v)[rank])]
            table.unsure = True  # read the routes again to know it (the backends do, soon)
    key = route_key(r)
    if deleted:
        s = table.tags.resolve_id(r.nexthops) if r.nexthops else 0
        s = s if table.filter.accepts(r) or s == VIA_FRONT else 0
        new = remove(tie, r, key, s, table.tags.resolve_id, lambda s, x: _without(table.tags, s, x))
    else:
        new = add(tie, key, sid, placement(r.family, flags, r.nexthops), r.family)
    if new is None:
        return None
    return retie(table, k, rank, new)


def route_key(r):
    """What tells two routes of one key apart, as far as the maps care."""
    return (r.nexthops, r.protocol, r.realm)


def retie(table, k, rank, new):
    """A key's routes are now `new`: stored and counted in table; returns
    k if the prefix's entry may have changed."""
    prefixes, sets = table.prefixes, table.tags.sets
    before = table._best_raw(k)
    v = prefixes.get(k)
    routes = dict(table._routes(v)) if v is not None else {}
    held = table.ties.setdefault(k, {})
    if len(new) > 1:
        held[rank] = new
    else:
        held.pop(rank, None)
        if not held:
            del table.ties[k]
    routes.pop(rank, None)
    if new:
        if table.union:
            e = table.tags.set_id(effective(new, k[0], sets, union=True)[:abi.MAX_ECMP])
        else:
            e = effective(new, k[0], sets)
        if e >= 0:  # VIA_FRONT: hides nothing
            routes[rank] = e
    if routes:
        table._store(k, routes)
    else:
        prefixes.pop(k, None)
    after = table._best_raw(k)
    if after == before:
        return k if k not in prefixes else None
    table._count(before, after)
    return k


def untie(table, k, slot):
    """The routes through a deleted nexthop object (set slot `slot`) leave
    prefix k's ties; returns whether any did."""
    hit = False
    for rank, tie in list(table.ties.get(k, {}).items()):
        rest = [(key, s) for key, s in tie if s != slot]
        if len(rest) != len(tie):
            hit = True
            retie(table, k, rank, rest)
    return hit


def ambiguous_count(table):
    sets = table.tags.sets
    return sum(1 for k, held in table.ties.items() for tie in held.values() if ambiguous(tie, k[0], sets))


def _without(tags, sid, r):
    return tags.without_id(max(0, sid), r)


def _first(tie, pred):
    for i, (k, _s) in enumerate(tie):
        if pred(k):
            return i
    return None

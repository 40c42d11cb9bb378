# SPDX-License-Identifier: GPL-2.0-or-later
"""The kernel's nexthop objects as the sync engine follows them (a registry
by id, groups resolved through it), and the list of what the kernel removes
without a word. sync.Tags resolves routes through this registry."""


# What the kernel removes without a word (no RTM_DELROUTE, no
# RTM_DELNEXTHOP), read in Linux 6.18:
#  - deleting a nexthop object (RTM_DELNEXTHOP for it, none for its routes):
#    every route using it, directly or as an emptied group
#    (net/ipv4/nexthop.c, remove_nexthop -> __remove_nexthop_fib);
#  - a device going down or away: its nexthop objects and their routes
#    (nexthop.c nexthop_flush_dev, no notification), and the IPv4 routes
#    through it (net/ipv4/fib_semantics.c fib_sync_down_dev, from
#    fib_netdev_event/fib_disable_ip);
#  - an IPv4 address removed: the routes whose gateways or preferred
#    source it made valid (fib_frontend.c fib_del_ifaddr -> fib_sync_down_addr).
# So after a nexthop deletion the routes using it leave the tables here
# too, and after the other two the objects and routes are read again and
# the difference applied (routes.Changes.silent). What a deletion does to
# other objects is told: each group holding the object gets an
# RTM_NEWNEXTHOP without it, and a group it empties an RTM_DELNEXTHOP
# (net/ipv4/nexthop.c remove_nh_grp_entry; seen with `ip monitor
# nexthop`), so a deletion needs no re-read (backends.base.apply_events).
SILENT = "nexthop deleted, device down or deleted, address removed"


class Nexthops:
    """The kernel's nexthop objects by id, as dumped at the last full sync
    and followed since (RTNLGRP_NEXTHOP). A group's members are resolved
    through this registry; an id not known (yet: events can race) or a
    blackhole resolves to no nexthop, so it names no peer and hides the
    worse routes, as the kernel uses it."""

    def __init__(self, objects=()):
        self.objects = {}
        self.groups_of = {}  # member id -> ids of the groups holding it
        # ids a re-read found gone, until an RTM_NEWNEXTHOP makes them
        # again: a queued route through one was removed with it
        self.vanished = set()
        for nh in objects:
            self.set(nh)

    def hops(self, nhid):
        """((gateway bytes or None, oif, weight), ...) of one object; ()
        for a blackhole, an unknown id or an empty group."""
        nh = self.objects.get(nhid)
        if nh is None or nh.blackhole or nh.fdb:
            return ()
        if not nh.group:
            return ((nh.gateway, nh.oif, 1),)
        out = []
        for member, weight in nh.group:
            m = self.objects.get(member)
            if m is not None and not (m.blackhole or m.group or m.fdb):
                out.append((m.gateway, m.oif, weight))
        return tuple(out)

    def set(self, nh):
        """A new or replaced object; returns the ids whose hops may have
        changed (it, and the groups holding it)."""
        self.vanished.discard(nh.id)
        old = self.objects.get(nh.id)
        if old is not None:
            for member, _w in old.group:
                self.groups_of.get(member, set()).discard(nh.id)
        self.objects[nh.id] = nh
        for member, _w in nh.group:
            self.groups_of.setdefault(member, set()).add(nh.id)
        return {nh.id} | self.groups_of.get(nh.id, set())

    def remove(self, nhid):
        """An object deleted: (ids gone, ids changed). As the kernel does,
        it leaves every group holding it, and a group left empty goes too.
        An id not known is gone all the same: routes recorded through it
        (an id not heard of yet names no peer) go with it."""
        old = self.objects.pop(nhid, None)
        if old is None:
            return {nhid}, set()
        gone, changed = {nhid}, set()
        for member, _w in old.group:
            self.groups_of.get(member, set()).discard(nhid)
        for gid in self.groups_of.pop(nhid, set()):
            g = self.objects.get(gid)
            if g is None:
                continue
            rest = tuple((m, w) for m, w in g.group if m != nhid)
            if rest:
                self.objects[gid] = g._replace(group=rest)
                changed.add(gid)
            else:
                more, _ = self.remove(gid)
                gone |= more
        return gone, changed - gone

    def flush_dev(self, ifindex):
        """A device went down or away: the kernel deletes its objects
        without a word (nexthop_flush_dev), which leave their groups as a
        deletion does; (ids gone, ids changed)."""
        gone, changed = set(), set()
        for nhid in [i for i, nh in self.objects.items() if nh.oif == ifindex and not nh.group]:
            if nhid in self.objects:
                g, c = self.remove(nhid)
                gone |= g
                changed |= c
        return gone, changed - gone

    def replace_all(self, objects, vanish=False):
        """The objects as dumped now: (ids gone, ids changed). vanish: a
        re-read while events may still be queued; the ids gone are
        remembered in `vanished` (see backends.base.apply_events)."""
        new = {nh.id: nh for nh in objects}
        gone = set(self.objects) - set(new)
        changed = {i for i, nh in new.items() if self.objects.get(i) != nh}
        vanished = (self.vanished | gone) - set(new) if vanish else set()
        self.__init__(new.values())
        self.vanished = vanished
        return gone, changed | {g for i in changed for g in self.groups_of.get(i, ())}

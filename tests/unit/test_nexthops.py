# SPDX-License-Identifier: GPL-2.0-or-later
"""Routes through kernel nexthop objects (FRR's zebra, `ip route add P nhid
N`): the messages parsed, the registry of objects, and the tables held
equal to a model of what the kernel does, through any sequence of object
and route changes, in both nexthop_compat_modes. No root, no kernel."""
import ipaddress
import socket
import struct

from hypothesis import given, settings, strategies as st

from wgbpf import routes as rt, sync
from wgbpf.backends.base import follow_nexthops, _renexthop

AF4, AF6 = socket.AF_INET, socket.AF_INET6
ALICE, BOB, CAROL = 1, 2, 3
TAG = {ALICE: "10.255.0.1", BOB: "10.255.0.2", CAROL: "10.255.0.3"}
FRONT, LAN = 10, 20


def rta(kind, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + bytes((-n) % 4)


def nhmsg(nhid, *attrs, family=AF4):
    return struct.pack("=BBBBI", family, 0, 4, 0, 0) + rta(rt.NHA_ID, struct.pack("=I", nhid)) + b"".join(attrs)


def group(*members):
    """NHA_GROUP of (id, weight): weight - 1 in the low byte, the high byte
    in weight_high (16-bit weights, Linux 6.12)."""
    return rta(rt.NHA_GROUP, b"".join(struct.pack("=IBBH", i, (w - 1) & 0xFF, (w - 1) >> 8, 0)
                                      for i, w in members))


def parse_nh(body):
    return rt.parse_nexthop(body, 0, len(body))


def test_nexthop_messages():
    gw = socket.inet_aton("10.255.0.1")
    single = parse_nh(nhmsg(7, rta(rt.NHA_GATEWAY, gw), rta(rt.NHA_OIF, struct.pack("=I", FRONT))))
    assert (single.id, single.gateway, single.oif, single.group, single.blackhole) == (7, gw, FRONT, (), False)
    g = parse_nh(nhmsg(9, group((7, 3), (8, 1), (5, 65536)), family=0))
    assert g.group == ((7, 3), (8, 1), (5, 65536)) and not g.resilient
    res = parse_nh(nhmsg(10, group((7, 1)), rta(rt.NHA_GROUP_TYPE, struct.pack("=H", rt.NEXTHOP_GRP_TYPE_RES))))
    assert res.resilient and res.group == ((7, 1),)
    hole = parse_nh(nhmsg(11, rta(rt.NHA_BLACKHOLE, b"")))
    assert hole.blackhole
    assert parse_nh(struct.pack("=BBBBI", AF4, 0, 4, 0, 0)) is None  # no id: not an object


def route_msg(prefix, nhid=None, gateway=None, oif=None, multipath=None, rtype=rt.RTN_UNICAST):
    net = ipaddress.ip_network(prefix)
    fam = AF4 if net.version == 4 else AF6
    body = struct.pack("=BBBBBBBBI", fam, net.prefixlen, 0, 0, 254, 4, 0, rtype, 0)
    body += rta(rt.RTA_DST, net.network_address.packed)
    if nhid is not None:
        body += rta(rt.RTA_NH_ID, struct.pack("=I", nhid))
    if gateway is not None:
        body += rta(rt.RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
    if oif is not None:
        body += rta(rt.RTA_OIF, struct.pack("=i", oif))
    if multipath:
        # (gateway, oif) or (gateway, oif, weight): rtnh_hops is the weight less one
        hops = b"".join(struct.pack("=HBBi", 8 + 8, 0, (h[2] - 1 if len(h) > 2 else 0), h[1])
                        + rta(rt.RTA_GATEWAY, socket.inet_aton(h[0])) for h in multipath)
        body += rta(rt.RTA_MULTIPATH, hops)
    return body


def test_routes_name_their_object_in_both_compat_modes():
    gw = socket.inet_aton("10.255.0.1")
    m0 = route_msg("10.1.0.0/16", nhid=7)  # nexthop_compat_mode=0: the id alone
    m1 = route_msg("10.1.0.0/16", nhid=7, gateway="10.255.0.1", oif=FRONT)  # 1: the hops beside it
    mp = route_msg("10.1.0.0/16", nhid=9, multipath=[("10.255.0.1", FRONT), ("10.255.0.2", FRONT)])
    for _ in range(2):  # the second time, through any layout learnt
        assert rt.parse_route(m0, 0, len(m0)).nexthops == ((rt.NH, 7),)
        assert rt.parse_route(m1, 0, len(m1)).nexthops == ((rt.NH, 7), (gw, FRONT))
        assert rt.parse_route(mp, 0, len(mp)).nexthops == (
            (rt.NH, 9), (gw, FRONT), (socket.inet_aton("10.255.0.2"), FRONT))


def tags():
    return sync.Tags({socket.inet_aton(a): p for p, a in TAG.items()}, {}, front=FRONT)


def single(nhid, peer=None, blackhole=False):
    """An object via a peer's tag on the front; peer None: via a LAN gateway."""
    gw = socket.inet_aton(TAG[peer] if peer else "192.0.2.9")
    return rt.Nexthop(nhid, AF4, None if blackhole else gw, 0 if blackhole else (FRONT if peer else LAN),
                      blackhole)


def kroute(prefix, nhid, priority=0, compat=()):
    net = ipaddress.ip_network(prefix)
    return rt.KernelRoute(AF4, net.network_address.packed, net.prefixlen, 254, priority, 4, 0,
                          ((rt.NH, nhid),) + tuple(compat))


def test_a_group_resolves_to_its_members_and_follows_them():
    t = sync.Table(tags(), sync.Filter())
    reg = t.tags.nexthops
    for nh in (single(1, ALICE), single(2, BOB), rt.Nexthop(9, 0, group=((1, 3), (2, 1)))):
        reg.set(nh)
    assert reg.hops(9) == ((socket.inet_aton(TAG[ALICE]), FRONT, 3), (socket.inet_aton(TAG[BOB]), FRONT, 1))
    k = t.update(kroute("10.1.0.0/16", 9))
    assert t.best(k) == (ALICE, BOB)
    # bob's object now leads to carol: one object, every route through it follows
    changed = follow_nexthops(t.tags, {"routes": t}, [(single(2, CAROL), False)])
    assert changed == {"routes": {k}} and t.best(k) == (ALICE, CAROL)
    # alice's object deleted: the kernel takes it out of the group, the route stays
    follow_nexthops(t.tags, {"routes": t}, [(single(1, ALICE), True)])
    assert t.best(k) == (CAROL,) and reg.objects[9].group == ((2, 1),)
    # the group's last member deleted: the group goes, and its routes with it
    follow_nexthops(t.tags, {"routes": t}, [(single(2, CAROL), True)])
    assert t.best(k) is None and 9 not in reg.objects and not t.prefixes


def test_an_unknown_object_names_no_peer_until_it_comes():
    """Events race: a route may name an object not heard of yet. It names
    no peer (never an old one) until the object arrives."""
    t = sync.Table(tags(), sync.Filter())
    t.update(kroute("10.1.0.0/16", 5))
    assert t.best(sync.network_pkey(ipaddress.ip_network("10.1.0.0/16"))) is None and len(t) == 0
    changed = follow_nexthops(t.tags, {"routes": t}, [(single(5, BOB), False)])
    k = sync.network_pkey(ipaddress.ip_network("10.1.0.0/16"))
    assert changed["routes"] == {k} and t.best(k) == (BOB,)


def test_a_blackhole_object_hides_worse_routes():
    t = sync.Table(tags(), sync.Filter())
    t.tags.nexthops.set(single(1, ALICE))
    t.tags.nexthops.set(single(2, blackhole=True))
    k = t.update(kroute("10.1.0.0/16", 1, priority=10))
    assert t.best(k) == (ALICE,)
    assert t.update(kroute("10.1.0.0/16", 2, priority=1)) == k and t.best(k) is None


def test_many_routes_through_one_object_all_follow_it():
    """Past the point where the object's list of prefixes is compacted
    (routes replaced and deleted meanwhile), every route still there
    follows the object, and none that went comes back."""
    t = sync.Table(tags(), sync.Filter())
    t.tags.nexthops.set(single(1, ALICE))
    nets = [f"10.{i >> 8}.{i & 255}.0/24" for i in range(1000)]
    for n in nets:
        t.update(kroute(n, 1))
    keys = {sync.network_pkey(ipaddress.ip_network(n)): n for n in nets}
    changed = follow_nexthops(t.tags, {"routes": t}, [(single(1, BOB), False)])["routes"]
    assert {keys[k] for k in changed} == set(nets) and all(t.best(k) == (BOB,) for k in keys)
    for n in nets[::3]:  # a third deleted, a third moved to a plain route
        t.update(kroute(n, 1), deleted=True)
    bob = ((socket.inet_aton(TAG[BOB]), FRONT),)
    for n in nets[1::3]:
        t.update(kroute(n, 1)._replace(nexthops=bob))
    for n in nets[::3]:  # and the deleted ones back, twice over
        t.update(kroute(n, 1))
        t.update(kroute(n, 1))
    changed = follow_nexthops(t.tags, {"routes": t}, [(single(1, CAROL), False)])["routes"]
    assert {keys[k] for k in changed} == set(nets[::3]) | set(nets[2::3])
    assert all(t.best(k) == ((BOB,) if n in nets[1::3] else (CAROL,)) for k, n in keys.items())
    assert len(t.nexthop_keys[t.tags.slots[1]]) < 3 * 1000  # compacted as it grew


def test_compat_hops_that_disagree_are_counted_and_the_object_wins():
    t = sync.Table(tags(), sync.Filter())
    t.tags.nexthops.set(single(1, ALICE))
    k = t.update(kroute("10.1.0.0/16", 1, compat=[(socket.inet_aton(TAG[BOB]), FRONT)]))
    assert t.best(k) == (ALICE,) and t.tags.disagreements == 1


def test_a_route_no_longer_through_an_object_is_not_brought_back_by_it():
    t = sync.Table(tags(), sync.Filter())
    t.tags.nexthops.set(single(1, ALICE))
    k = t.update(kroute("10.1.0.0/16", 1))
    plain = kroute("10.1.0.0/16", 1)._replace(nexthops=((socket.inet_aton(TAG[BOB]), FRONT),))
    t.update(plain)  # `ip route replace P via bob's tag`
    assert t.best(k) == (BOB,)
    follow_nexthops(t.tags, {"routes": t}, [(single(1, CAROL), False)])
    assert t.best(k) == (BOB,)
    assert t.drop_nexthops({1}) == set() and t.best(k) == (BOB,) and len(t) == 1


# -- the model: any sequence of object and route changes -------------------

class Kernel:
    """What the kernel keeps, as its nexthop code does: a group holds
    existing single objects; deleting an object takes it out of its groups,
    deletes a group left empty, and deletes every route using what went."""

    def __init__(self):
        self.objects = {}
        self.routes = {}  # (prefix, metric) -> nhid

    def add(self, nh):
        old = self.objects.get(nh.id)
        if nh.group and (not all(m in self.objects and not self.objects[m].group for m, _w in nh.group)
                         or (old is not None and not old.group)):
            return False  # refused: a member missing or a group, or a single replaced by a group
        if not nh.group and old is not None and old.group:
            return False
        if not nh.group and any(nh.id in (m for m, _ in g.group) for g in self.objects.values()) and nh.blackhole:
            return False  # a group member cannot become a blackhole
        self.objects[nh.id] = nh
        return True

    def delete(self, nhid):
        gone = {nhid}
        self.objects.pop(nhid)
        for gid, g in list(self.objects.items()):
            rest = tuple((m, w) for m, w in g.group if m != nhid)
            if g.group and not rest:
                self.objects.pop(gid)
                gone.add(gid)
            elif rest != g.group:
                self.objects[gid] = g._replace(group=rest)
        self.routes = {k: v for k, v in self.routes.items() if v not in gone}

    def best(self, prefix):
        mine = sorted((metric, nhid) for (p, metric), nhid in self.routes.items() if p == prefix)
        if not mine:
            return None
        return self.peers(mine[0][1]) or None

    def union(self, prefix):
        """The accept table's answer (the feasible-path source check):
        every peer of every route of the prefix."""
        peers = {p for (q, _m), nhid in self.routes.items() if q == prefix for p in self.peers(nhid)}
        return tuple(sorted(peers)) or None

    def peers(self, nhid):
        nh = self.objects[nhid]
        members = [self.objects[m] for m, _w in nh.group] if nh.group else [nh]
        return tuple(sorted({p for m in members if not m.blackhole for p, a in TAG.items()
                             if m.gateway == socket.inet_aton(a) and m.oif == FRONT}))


def model_tables():
    """The routes table and the accept table (union), sharing one Tags, as
    the maps backend holds them."""
    t = sync.Table(tags(), sync.Filter())
    return t, sync.Table(t.tags, sync.Filter(), union=True)


def assert_tables_are_the_kernel(kernel, t, accept, why):
    for p in PREFIXES:
        k = sync.network_pkey(ipaddress.ip_network(p))
        assert t.best(k) == kernel.best(p), (p, why)
        assert accept.best(k) == kernel.union(p), (p, why)
    assert t.tags.nexthops.objects == kernel.objects
    assert len(t) == sum(1 for p in PREFIXES if kernel.best(p))
    assert len(accept) == sum(1 for p in PREFIXES if kernel.union(p))
    # the counts kept per set id are those of a recount, so a freed slot
    # taken by another object inherits no prefix of the one before
    recount = {}
    for k in t.prefixes:
        i = t._best_raw(k)
        if i:
            recount[i] = recount.get(i, 0) + 1
    assert {i: n for i, n in enumerate(t._best) if n} == recount, why
    # a slot is held by a live object's id only
    assert set(t.tags.slots) <= set(kernel.objects)
    assert not set(t.tags.free) & set(t.tags.slots.values())


PREFIXES = ["10.1.0.0/16", "10.2.0.0/16", "10.2.0.0/24"]
op = st.one_of(
    st.tuples(st.just("single"), st.integers(1, 4), st.sampled_from([ALICE, BOB, CAROL, None, "hole"])),
    st.tuples(st.just("group"), st.integers(5, 6),
              st.lists(st.tuples(st.integers(1, 4), st.integers(1, 65536)), min_size=1, max_size=3,
                       unique_by=lambda x: x[0])),
    st.tuples(st.just("delete"), st.integers(1, 6), st.none()),
    st.tuples(st.just("route"), st.sampled_from(PREFIXES), st.tuples(st.integers(0, 2), st.integers(1, 6))),
    st.tuples(st.just("unroute"), st.sampled_from(PREFIXES), st.integers(0, 2)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=25), st.booleans(), st.booleans())
def test_the_tables_follow_the_kernel_through_any_sequence(ops, compat, redump):
    """Every op as the daemon hears it: an object event (RTM_NEWNEXTHOP,
    RTM_DELNEXTHOP for the object alone), a route event (in compat mode 1
    with the expanded hops beside the id). With `redump`, each deletion is
    also followed by a dump of the objects (the daemon reads them again
    after a deletion). After every op the table equals the model."""
    kernel = Kernel()
    t, accept = model_tables()
    tables = {"routes": t, "accept": accept}
    for kind, a, b in ops:
        if kind == "single":
            nh = single(a, blackhole=True) if b == "hole" else single(a, b)
            if kernel.add(nh):
                follow_nexthops(t.tags, tables, [(nh, False)])
        elif kind == "group":
            nh = rt.Nexthop(a, 0, group=tuple(b))
            if kernel.add(nh):
                follow_nexthops(t.tags, tables, [(nh, False)])
        elif kind == "delete":
            if a in kernel.objects:
                kernel.delete(a)
                follow_nexthops(t.tags, tables, [(rt.Nexthop(a, AF4), True)])
                if redump:
                    gone, changed = t.tags.nexthops.replace_all(kernel.objects.values())
                    _renexthop(t.tags, tables, gone, changed - gone)
        elif kind == "route":
            metric, nhid = b
            if nhid in kernel.objects:
                kernel.routes[(a, metric)] = nhid
                net = ipaddress.ip_network(a)
                hops = ()
                if compat:
                    hops = tuple((gw, oif) for gw, oif, _w in t.tags.nexthops.hops(nhid))
                for table in (t, accept):
                    table.update(kroute(a, nhid, priority=metric, compat=hops))
        elif kind == "unroute":
            nhid = kernel.routes.pop((a, b), None)
            if nhid is not None:
                for table in (t, accept):
                    table.update(kroute(a, nhid, priority=b), deleted=True)
        assert_tables_are_the_kernel(kernel, t, accept, ops)
        assert dict(t.items()) == {sync.network_pkey(ipaddress.ip_network(p)): kernel.best(p)
                                   for p in PREFIXES if kernel.best(p)}


def kernel_events(kernel, kind, a, b):
    """One op on the kernel model and the messages the kernel sends for it
    (routes.Changes.steps): an object deleted sends its RTM_DELNEXTHOP, then
    an RTM_NEWNEXTHOP for each group it shrank and an RTM_DELNEXTHOP for
    each group it emptied (seen with `ip monitor nexthop`), and nothing
    for the routes it took."""
    if kind in ("single", "group"):
        nh = (single(a, blackhole=True) if b == "hole" else single(a, b)) if kind == "single" \
            else rt.Nexthop(a, 0, group=tuple(b))
        return [(rt.NEXTHOP, (nh, False))] if kernel.add(nh) else []
    if kind == "delete":
        if a not in kernel.objects:
            return []
        before = dict(kernel.objects)
        kernel.delete(a)
        out = [(rt.NEXTHOP, (rt.Nexthop(a, AF4), True))]
        for gid, g in before.items():
            if gid != a and g.group:
                if gid not in kernel.objects:
                    out.append((rt.NEXTHOP, (rt.Nexthop(gid, 0), True)))
                elif kernel.objects[gid] != g:
                    out.append((rt.NEXTHOP, (kernel.objects[gid], False)))
        return out
    if kind == "route":
        metric, nhid = b
        if nhid not in kernel.objects:
            return []
        kernel.routes[(a, metric)] = nhid
        return [(rt.ROUTE, (kroute(a, nhid, priority=metric), False, 0x500))]  # replace: CREATE|REPLACE
    nhid = kernel.routes.pop((a, b), None)
    return [] if nhid is None else [(rt.ROUTE, (kroute(a, nhid, priority=b), True, 0))]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(op, max_size=12), min_size=1, max_size=4))
def test_batches_of_events_in_the_kernels_order_end_where_the_kernel_is(batches):
    """Issue 32: every op's messages, several ops to a batch (a busy daemon
    reads them together), applied by backends.base.apply_events with ids
    deleted and made again, routes moved onto them and taken with them,
    inside one batch. After each batch the table equals the kernel."""
    from wgbpf.backends.base import apply_events
    kernel = Kernel()
    t, accept = model_tables()
    for ops in batches:
        steps = [s for kind, a, b in ops for s in kernel_events(kernel, kind, a, b)]
        apply_events(t.tags, {"routes": t, "accept": accept}, rt.Changes(steps=steps), netlink=None)
        assert_tables_are_the_kernel(kernel, t, accept, batches)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(op, max_size=12), min_size=1, max_size=4))
def test_maps_naming_sets_by_id_equal_the_model_after_every_batch(batches):
    """Issue 31: the maps backend's way, where entries name kernel set ids
    (setmaps.KernelSets) and a changed object rewrites its set, not its
    routes: after each batch, the maps as the data plane reads them (each
    entry's set: members and weights) equal the model's entries."""
    from wgbpf import setmaps
    from wgbpf.backends.base import apply_events
    from wgbtest import MemSets
    kernel = Kernel()
    t, accept = model_tables()
    tables = {"routes": t, "accept": accept}
    for table in tables.values():
        table.by_id = True
    mem = MemSets()
    ks = setmaps.KernelSets(mem)
    ks.bind(t.tags)
    maps = {trie: {} for trie in tables}  # pkey -> kernel set id
    for ops in batches:
        steps = [s for kind, a, b in ops for s in kernel_events(kernel, kind, a, b)]
        changed = apply_events(t.tags, tables, rt.Changes(steps=steps), netlink=None)
        ks.follow()
        for trie, keys in changed.items():
            d = sync.changes(tables[trie], keys, (), ks.entry(tables[trie]))
            maps[trie].update(d.put)
            for k in d.delete:
                maps[trie].pop(k, None)
        for trie, table in tables.items():
            got = {k: setmaps.unpack(mem.values[i])[2:4] if i else ((), None) for k, i in maps[trie].items()}
            want = {k: (table.entry(k), table.best_weights(k)) for k in table.prefixes}
            assert got == want, (trie, batches)


def test_a_deleted_id_takes_its_routes_though_a_reread_already_forgot_it():
    """Issue 32, 1: a re-read (after a device event) finds object 5 gone
    before its queued deletion is applied; the route through it that was
    queued before that deletion must not come back when 5 is made again."""
    from wgbpf.backends.base import apply_events
    t = sync.Table(tags(), sync.Filter())
    for nh in (single(5, BOB), single(9, CAROL)):
        follow_nexthops(t.tags, {"routes": t}, [(nh, False)])
    t.tags.nexthops.replace_all([single(9, CAROL)], vanish=True)  # the re-read: 5 is gone already
    k = sync.network_pkey(ipaddress.ip_network("10.2.0.0/24"))
    apply_events(t.tags, {"routes": t}, rt.Changes(steps=[
        (rt.ROUTE, (kroute("10.2.0.0/24", 5), False, 0x500)),
        (rt.NEXTHOP, (rt.Nexthop(5, AF4), True)),
    ]), netlink=None)
    assert t.entry(k) is None
    apply_events(t.tags, {"routes": t}, rt.Changes(steps=[(rt.NEXTHOP, (single(5, ALICE), False))]), netlink=None)
    assert t.entry(k) is None  # not alice's: the kernel has no such route


def test_objects_flushed_by_a_device_early_in_a_batch_do_not_come_back_with_their_ids():
    """A LAN device goes down (its objects and their routes flushed without
    a word), then, in the same batch, its id is made again through alice:
    the route the kernel flushed must not follow the new object."""
    from wgbpf.backends.base import apply_events
    t = sync.Table(tags(), sync.Filter())
    follow_nexthops(t.tags, {"routes": t}, [(single(360), False)])  # via a LAN gateway
    k = t.update(kroute("10.77.0.0/16", 360))
    assert t.entry(k) == ()
    steps = [(rt.LINK, LAN), (rt.NEXTHOP, (single(360, ALICE), False))]
    apply_events(t.tags, {"routes": t}, rt.Changes(steps=steps), netlink=None)
    assert t.entry(k) is None and t.tags.nexthops.objects[360].oif == FRONT


# -- issue 31: slots freed, the accept table's counts ------------------------

def test_a_changed_object_under_the_accept_table_is_no_traceback():
    """Reproduced from the issue: one prefix, two routes through objects 1
    and 2 (metrics 10 and 20); object 1 replaced; the metric-20 route
    deleted. The accept table raised IndexError (its counts were kept
    under ids interned from contents the replace changed), which ended
    the daemon."""
    t, accept = model_tables()
    tables = {"routes": t, "accept": accept}
    follow_nexthops(t.tags, tables, [(single(1, ALICE), False), (single(2, BOB), False)])
    for table in (t, accept):
        k = table.update(kroute("10.1.0.0/16", 1, priority=10))
        table.update(kroute("10.1.0.0/16", 2, priority=20))
    assert accept.best(k) == (ALICE, BOB) and t.best(k) == (ALICE,)
    follow_nexthops(t.tags, tables, [(single(1, CAROL), False)])
    assert accept.best(k) == (BOB, CAROL)
    for table in (t, accept):
        table.update(kroute("10.1.0.0/16", 2, priority=20), deleted=True)
    assert accept.best(k) == (CAROL,) and t.best(k) == (CAROL,)
    assert len(accept) == 1 and accept.per_peer == {CAROL: 1} and t.per_peer == {CAROL: 1}


def test_slots_of_deleted_objects_are_freed_and_taken_again():
    """zebra's object ids only grow: 10,000 objects made, routed through and
    deleted one after another must not leave 10,000 slots behind."""
    t, accept = model_tables()
    tables = {"routes": t, "accept": accept}
    k = sync.network_pkey(ipaddress.ip_network("10.1.0.0/16"))
    start = len(t.tags.sets)
    for nhid in range(100, 10100):
        follow_nexthops(t.tags, tables, [(single(nhid, (ALICE, BOB, CAROL)[nhid % 3]), False)])
        for table in (t, accept):
            table.update(kroute("10.1.0.0/16", nhid))  # replaces the route through the last one
        assert t.best(k) == ((ALICE, BOB, CAROL)[nhid % 3],) == accept.best(k)
        follow_nexthops(t.tags, tables, [(single(nhid - 1, None), True)] if nhid > 100 else [])
    assert len(t.tags.sets) - start <= 3 and len(t.tags.slots) == 1
    # the last object deleted: its route goes, its slot is free, nothing names a peer
    follow_nexthops(t.tags, tables, [(single(10099, None), True)])
    assert t.entry(k) is None and accept.entry(k) is None and not t.tags.slots and len(t) == 0
    assert t._best[t.tags.free[-1]] == 0


# -- issue 31: weights kept in the model ------------------------------------

def test_weights_of_a_multipath_route_and_of_a_group_are_kept_reduced():
    """`ip route add P nexthop via A weight 3 nexthop via B weight 1` and a
    group `id 10 group 1,3/2,1` name the same weighted set: alice 3, bob
    1 (6:2 reduces to it); equal weights are an equal split (None)."""
    a, b = TAG[ALICE], TAG[BOB]
    msg = route_msg("10.1.0.0/16", multipath=[(a, FRONT, 3), (b, FRONT)])
    r = rt.parse_route(msg, 0, len(msg))
    assert r.nexthops == ((socket.inet_aton(a), FRONT, 3), (socket.inet_aton(b), FRONT))
    t = sync.Table(tags(), sync.Filter())
    k = t.update(r)
    assert t.best(k) == (ALICE, BOB) and t.best_weights(k) == (3, 1)
    follow_nexthops(t.tags, {"routes": t}, [(single(1, ALICE), False), (single(2, BOB), False),
                                            (rt.Nexthop(10, 0, group=((1, 6), (2, 2))), False)])
    k2 = t.update(kroute("10.2.0.0/16", 10))
    assert t.best(k2) == (ALICE, BOB) and t.best_weights(k2) == (3, 1)
    # the group replaced 1:3: the route through it follows, weights and all
    follow_nexthops(t.tags, {"routes": t}, [(rt.Nexthop(10, 0, group=((1, 1), (2, 3))), False)])
    assert t.best_weights(k2) == (1, 3)
    equal = route_msg("10.3.0.0/16", multipath=[(a, FRONT, 2), (b, FRONT, 2)])
    k3 = t.update(rt.parse_route(equal, 0, len(equal)))
    assert t.best(k3) == (ALICE, BOB) and t.best_weights(k3) is None
    # two hops to one peer weigh their sum: alice 1 + 1 against bob 1
    two = route_msg("10.4.0.0/16", multipath=[(a, FRONT), (a, FRONT), (b, FRONT)])
    k4 = t.update(rt.parse_route(two, 0, len(two)))
    assert t.best_weights(k4) == (2, 1)


def test_compat_hops_with_weights_agree_with_their_weighted_group():
    """nexthop_compat_mode 1: a route through a weighted group carries the
    expanded hops, weights and all; they agree with the object."""
    t = sync.Table(tags(), sync.Filter())
    follow_nexthops(t.tags, {"routes": t}, [(single(1, ALICE), False), (single(2, BOB), False),
                                            (rt.Nexthop(10, 0, group=((1, 3), (2, 1))), False)])
    compat = ((socket.inet_aton(TAG[ALICE]), FRONT, 3), (socket.inet_aton(TAG[BOB]), FRONT))
    k = t.update(kroute("10.1.0.0/16", 10, compat=compat))
    assert t.best_weights(k) == (3, 1) and t.tags.disagreements == 0


def test_an_ipv6_multipath_route_losing_one_hop_keeps_the_others_weights():
    """IPv6 tells the removal of one hop of a multipath route as a delete
    naming that hop: the remaining peers keep their weights."""
    tg = sync.Tags({ipaddress.ip_address(f"fe80::{i}").packed: i for i in (1, 2, 3)}, {}, front=FRONT)
    t = sync.Table(tg, sync.Filter())
    hop = {i: (ipaddress.ip_address(f"fe80::{i}").packed, FRONT) for i in (1, 2, 3)}
    net = ipaddress.ip_network("fd00:9::/48")
    r = rt.KernelRoute(AF6, net.network_address.packed, 48, 254, 1024, 4, 0,
                       (hop[1] + (3,), hop[2] + (2,), hop[3]))
    k = t.update(r)
    assert t.best(k) == (1, 2, 3) and t.best_weights(k) == (3, 2, 1)
    t.update(r._replace(nexthops=(hop[3],)), deleted=True)
    assert t.best(k) == (1, 2) and t.best_weights(k) == (3, 2)
    t.update(r._replace(nexthops=(hop[2] + (2,),)), deleted=True)
    assert t.best(k) == (1,) and t.best_weights(k) is None


def test_more_peers_than_a_set_holds_keeps_the_heaviest_and_counts():
    """A group of ten members on ten peers (more than a set's 8): the
    heaviest 8 are kept (then the lowest ids), the route is counted, no
    traceback, and no peer the group does not name."""
    many = {i: f"10.255.1.{i}" for i in range(1, 11)}
    tg = sync.Tags({socket.inet_aton(a): i for i, a in many.items()}, {}, front=FRONT)
    t = sync.Table(tg, sync.Filter())
    objs = [rt.Nexthop(100 + i, AF4, socket.inet_aton(a), FRONT) for i, a in many.items()]
    group = rt.Nexthop(200, 0, group=tuple((100 + i, 5 if i in (9, 10) else 1) for i in many))
    follow_nexthops(tg, {"routes": t}, [(o, False) for o in objs] + [(group, False)])
    k = t.update(kroute("10.7.0.0/16", 200))
    assert t.best(k) == (1, 2, 3, 4, 5, 6, 9, 10) and t.best_weights(k) == (1, 1, 1, 1, 1, 1, 5, 5)
    assert tg.truncated == 1
    from wgbpf import report
    assert any("more peers than a set holds" in line for line in report.daemon_lines(
        {"state": "running", "pid": 1, "tables": [254], "prefixes": 1, "ignored": 0, "events": 0, "resyncs": 1,
         "overruns": 0, "ecmp_truncated": tg.truncated}))


def test_a_group_naming_a_missing_member_names_what_exists_then_follows_it():
    """Bad input from netlink (the kernel refuses such a group, but events
    race and messages can be forged): a group whose member 7 is not known
    names the members that are, never a stale peer; when 7 comes, the
    route follows it, weights and all."""
    t = sync.Table(tags(), sync.Filter())
    follow_nexthops(t.tags, {"routes": t}, [(single(1, ALICE), False),
                                            (rt.Nexthop(10, 0, group=((1, 1), (7, 3))), False)])
    k = t.update(kroute("10.1.0.0/16", 10))
    assert t.best(k) == (ALICE,) and t.best_weights(k) is None
    changed = follow_nexthops(t.tags, {"routes": t}, [(single(7, CAROL), False)])
    assert changed == {"routes": {k}} and t.best(k) == (ALICE, CAROL) and t.best_weights(k) == (1, 3)
    follow_nexthops(t.tags, {"routes": t}, [(single(7, CAROL), True)])  # gone again: the group shrinks
    assert t.best(k) == (ALICE,) and t.tags.nexthops.objects[10].group == ((1, 1),)

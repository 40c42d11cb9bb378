# SPDX-License-Identifier: GPL-2.0-or-later
"""What an attached instance is and does, as plain data: the answers of
`wgbpf dump`, `lookup` and `status`, without their printing (cli.py prints).

explain() and explain_source() say in words what front_egress and
member_ingress (bpf/wgbpf.c) decide for one address; they re-trace the C
rules in Python, and tests/bpf/test_explain*.py hold them to the verdict
tests' case tables so the two cannot drift. The status entries check each
recorded device by name and ifindex, its tc filters, the daemon's state
and the config file it would attach.
"""
import ipaddress
import os
import socket

from . import abi, config, dataplane, instance, maps, monitor, netlink, nsenter, routes, sync
from .setmaps import describe, weighed_verdict
from .version import VERSION

LINK_LOCAL_MULTICAST = (ipaddress.ip_network("224.0.0.0/24"), ipaddress.ip_network("ff02::/16"))
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))


class InspectError(Exception):
    """A question about the instance that names something it does not have."""


def current_links():
    """{name: ifindex} of this namespace's devices."""
    return {name: index for index, name in socket.if_nameindex()}


def ifname(index):
    """The name of a device the kernel named by ifindex just now (a route's
    oif). An ifindex read from the maps goes through device_check instead:
    it may name another device by now."""
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"#{index}"


def device_check(name, ifindex, links):
    """None while the device recorded as (name, ifindex) is the one this
    namespace holds under that name; else why not. An ifindex alone is never
    trusted: a re-created device gets a new one, and the old one may go to
    an unrelated device."""
    if not name:
        return f"no device name recorded for ifindex {ifindex} (attach again)"
    now = links.get(name)
    if now is None:
        return f"{name} does not exist"
    if now != ifindex:
        return f"{name} was re-created (ifindex {now}, recorded {ifindex})"
    return None


def origin_name(origin):
    try:
        return abi.Origin(origin).name.lower()
    except ValueError:  # written by a newer wgbpf
        return str(origin)


def peer_ids(m):
    """{name: peer id} of the instance's peers."""
    return {p.name.decode(): peer_id for peer_id, p in m.peers().items()}


def resolve_peers(m, names):
    """Peer names -> peer ids; InspectError names an unknown one."""
    by_name = peer_ids(m)
    for n in names:
        if n not in by_name:
            raise InspectError(f"unknown peer {n!r} (peers: {', '.join(sorted(by_name)) or 'none'})")
    return [by_name[n] for n in names]


def peer_rows(m, links=None):
    """Every peer: member device (checked), state, source mode, tags, counters."""
    peers = m.peers()
    tags = sorted(m.tags().items(), key=lambda kv: (kv[0].version, kv[0]))
    links = current_links() if links is None else links
    out = []
    for peer_id, p in sorted(peers.items()):
        s = m.peer_stats(peer_id)
        member = p.member.decode()
        out.append({
            "id": peer_id, "name": p.name.decode(), "member": member or f"#{p.ifindex}",
            "ifindex": p.ifindex, "member_problem": device_check(member, p.ifindex, links),
            "up": bool(p.flags & abi.PEER_UP),
            "source": abi.Source(p.source).name.lower() if p.source else "default",
            "tags": [str(t) for t, owner in tags if owner == peer_id],
            "tx_packets": s.tx_packets, "tx_bytes": s.tx_bytes,
            "rx_packets": s.rx_packets, "rx_bytes": s.rx_bytes, "spoofed": s.spoofed,
        })
    return out


def route_rows(m, names, trie="routes", sets=None):
    """Every prefix -> peer set entry, IPv4 first; `names`: {peer id: name},
    `sets`: m.sets.peers() (read once)."""
    rows = []
    sets = m.sets.peers() if sets is None else sets
    for version in (4, 6):
        for net, r in sorted(m.tries.routes(version, trie), key=lambda nr: nr[0]):
            members, weights = sets.get(r.set, ((), None))
            rows.append({"prefix": str(net), "set": r.set, "peers": [names.get(p, f"#{p}") for p in members],
                         "weights": list(weights or [1] * len(members)), "origin": origin_name(r.origin)})
    return rows


def dump(m, front):
    peers = peer_rows(m)
    names = {p["id"]: p["name"] for p in peers}
    sets = m.sets.peers()
    out = {"front": front, "routes": route_rows(m, names, sets=sets), "peers": peers,
           "sets": m.sets.rows(names)}
    if m.config().accept_table:  # the feasible source check's table
        out["accept"] = route_rows(m, names, "accept", sets)
    return out


# -- what the programs decide -------------------------------------------------

# a "no peer" entry (count 0), in words: the daemon wrote it for a prefix
# whose best kernel route names no peer
NO_PEER = "no peer (its best route is a blackhole, unreachable, or leaves by no peer)"


def explain(m, addr):
    """What front_egress does with a packet to `addr`, in words and fields."""
    peers = m.peers()
    cfg = m.config()
    name = {i: p.name.decode() for i, p in peers.items()}
    up = {i: bool(p.flags & abi.PEER_UP) for i, p in peers.items()}
    policy = abi.Policy(cfg.no_route).name.lower()
    if any(addr in net for net in LINK_LOCAL_MULTICAST if net.version == addr.version):
        to = [name[i] for i in sorted(peers) if up[i]]
        return {"address": str(addr), "rule": "link-local multicast", "prefix": None,
                "peers": to, "verdict": f"flood to {len(to)} members"}
    extra = {}  # the set, in the lookup modes that name one
    if cfg.lookup == abi.Lookup.FIB:
        owners, why = kernel_peers(m, addr, cfg.fib_table)
        prefix, rule = None, why
    else:
        hit = m.tries.lookup(addr)
        if hit is None:
            owners, prefix, rule = [], None, "no route"
        else:
            owners, prefix, rule = list(m.sets.members(hit[1].set)), str(hit[0]), f"{origin_name(hit[1].origin)} route"
            members, weights = m.sets.weighed(hit[1].set)
            buckets = m.sets.read(hit[1].set)[4] if hit[1].set else b""
            extra = {"set": hit[1].set, "set_text": describe(hit[1].set, members, weights, name),
                     "weights": list(weights), "buckets": [buckets.count(i) for i in range(len(members))]}
    if not owners:
        return {"address": str(addr), "rule": rule, "prefix": prefix, "peers": [], **extra,
                "verdict": (f"{NO_PEER}: " if prefix else "") + f"no_route policy: {policy}"}
    live = [name.get(i, f"#{i}") for i in owners if up.get(i)]
    if not live:
        verdict = f"{'every peer' if len(owners) > 1 or prefix else 'peer'} down: no_route policy: {policy}"
    elif len(live) == 1:
        verdict = f"steer to {live[0]}" + (" (the others down)" if len(owners) > 1 else "")
    elif cfg.lookup == abi.Lookup.FIB:  # the kernel's multipath choice, by the route's weights
        verdict = (f"steer as the kernel's multipath hash picks, by the route's weights, one of "
                   f"{', '.join(live)}")
    else:
        verdict = weighed_verdict(owners, extra, up, name)
    return {"address": str(addr), "rule": rule, "prefix": prefix, **extra,
            "peers": [name.get(i, f"#{i}") for i in owners],
            "down": [name.get(i, f"#{i}") for i in owners if not up.get(i)], "verdict": verdict}


def kernel_route(addr, table):
    """The route bpf_fib_lookup finds for `addr` in `table` (0: main) with
    BPF_FIB_LOOKUP_DIRECT/TBID: that table alone, no policy rules; longest
    prefix, then lowest metric. Read from a dump, since RTM_GETROUTE
    applies the rules and ignores a table. None: no route."""
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    want = table or netlink.RT_TABLE_MAIN
    value = int(addr)
    best = None
    nl = netlink.Netlink(rcvbuf=1 << 20)
    try:
        for r in routes.dump_routes(nl, family):
            if r.table != want or r.tos or r.src is not None:
                continue
            shift = addr.max_prefixlen - r.dst_len
            if int.from_bytes(r.dst, "big") >> shift != value >> shift:
                continue
            if best is None or (r.dst_len, -r.priority) > (best.dst_len, -best.priority):
                best = r
    finally:
        nl.close()
    return best


def kernel_peers(m, addr, table):
    """FIB mode, as fib_peer() in bpf/lookup.h: a tag equal to `addr` names
    its peer; else the kernel's route does, by a nexthop that is a tag or by
    a member as its device. ([peer ids], why); a multipath route may name
    several (the kernel's hash picks one per flow)."""
    tags = m.tags()
    if addr in tags:
        return [tags[addr]], "tag address"
    r = kernel_route(addr, table)
    if r is None:
        return [], "no kernel route"
    if not r.nexthops:
        return [], "kernel route without a nexthop (blackhole, unreachable, ...)"
    links = current_links()  # a member counts only while it is the device recorded
    by_oif = {p.ifindex: i for i, p in m.peers().items()
              if device_check(p.member.decode(), p.ifindex, links) is None}
    resolver = sync.Tags({t.packed: i for t, i in tags.items()}, by_oif, front=m.config().front_ifindex or None)
    nexthops, via_object = r.nexthops, ""
    if nexthops[0][0] is routes.NH:  # through a nexthop object: it decides, as for the daemon
        nhid = nexthops[0][1]
        nl = netlink.Netlink(rcvbuf=1 << 20)
        try:
            resolver.nexthops = sync.Nexthops(routes.dump_nexthops(nl))
        finally:
            nl.close()
        nexthops = resolver.nexthops.hops(nhid)  # (gateway, oif, weight) each
        via_object = f"nhid {nhid} " + (describe_object(resolver.nexthops, nhid) if nexthops else
                                         "(blackhole, or no such object): names no peer")
        if not nexthops:
            return [], "kernel route " + via_object
        via_object += ": "
    owners, hops = [], []
    for h in nexthops:  # (gateway, oif) or, weighing more than 1, (gateway, oif, weight)
        gw, oif = h[0], h[1]
        owner, how = resolver.hop_peer(gw, oif)
        if how == "tag":
            hop = f"via {ipaddress.ip_address(gw)}"
        elif how == "member":
            hop = f"dev {ifname(oif)}"
        else:
            hop = f"via {ipaddress.ip_address(gw) if gw else '-'} dev {ifname(oif) if oif else '-'} names no peer"
        hops.append(hop + (f" weight {h[2]}" if len(h) > 2 and h[2] != 1 else ""))
        if owner and owner not in owners:
            owners.append(owner)
    return owners, "kernel route " + via_object + ", ".join(hops)


def describe_object(registry, nhid):
    """A nexthop object as `ip nexthop` would name it: "group 101/102,3"
    (member ids, weights other than 1) or "object"."""
    nh = registry.objects[nhid]
    if not nh.group:
        return "(object)"
    members = "/".join(f"{m}" + (f",{w}" if w != 1 else "") for m, w in nh.group)
    return f"({'resilient ' if nh.resilient else ''}group {members})"


def martian(m, addr):
    """As martian() in bpf/wgbpf.c: (reason, why) for a source no route can
    make legitimate, or None."""
    R = abi.Reason
    if addr.version == 4:
        first = addr.packed[0]
        for hit, reason, why in ((first == 0, R.MARTIAN_UNSPEC, "0.0.0.0/8"),
                                 (first == 127, R.MARTIAN_LOOPBACK, "loopback"),
                                 (first & 0xF0 == 224, R.MARTIAN_MULTICAST, "multicast"),
                                 (first & 0xF0 == 240, R.MARTIAN_RESERVED, "240.0.0.0/4 or broadcast")):
            if hit:
                return reason, why
    elif addr.is_unspecified:
        return R.MARTIAN_UNSPEC, "unspecified"
    elif addr.is_loopback:
        return R.MARTIAN_LOOPBACK, "loopback"
    elif addr in config.MAPPED or addr in config.COMPAT:
        return R.MARTIAN_MAPPED, "IPv4-mapped or IPv4-compatible IPv6"
    elif addr.is_multicast:
        return R.MARTIAN_MULTICAST, "multicast"
    if addr in m.guard.locals():
        return R.MARTIAN_LOCAL, "one of this host's own addresses"
    return None


def source_owners(m, cfg, addr, accept=False):
    """([peer ids], why) of the route to a source: the steering one, or with
    `accept` the feasible-path (accept) table's; the kernel's in FIB mode."""
    if cfg.lookup == abi.Lookup.FIB:
        table = cfg.accept_table if accept else cfg.fib_table
        if accept and not table:
            return [], "no accept table"
        return kernel_peers(m, addr, table)
    hit = m.tries.lookup(addr, trie="accept" if accept else "routes")
    what = "accept route" if accept else "best route"
    if not hit:
        return [], f"no {what.split()[0]} route"
    owners = list(m.sets.members(hit[1].set))
    return owners, f"{what} {hit[0]}" + ("" if owners else f": {NO_PEER}")


def explain_source(m, addr, peer):
    """What member_ingress decides for a packet from `addr` arriving from
    `peer`, step by step as check_source() in bpf/wgbpf.c. The verdict is
    the name of the reason it counts (abi.Reason, lower case)."""
    cfg = m.config()
    peers = m.peers()
    [peer_id] = resolve_peers(m, [peer])
    name = {i: p.name.decode() for i, p in peers.items()}
    mode = abi.Source(peers[peer_id].source or cfg.source or abi.Source.STRICT)
    out = {"source": str(addr), "peer": peer, "mode": mode.name.lower(),
           "lookup": abi.Lookup(cfg.lookup).name.lower()}

    def done(step, reason):
        out.update(step=step, verdict=reason.name.lower())
        return out
    bad = martian(m, addr) if mode != abi.Source.OFF else None
    if bad:
        return done(f"martian source ({bad[1]}): dropped before any lookup", bad[0])
    if any(addr in net for net in LINK_LOCAL if net.version == addr.version):
        owner = m.tags().get(addr)
        return done(f"link-local source: must be {peer}'s tag; it is "
                    + (f"{name.get(owner)}'s" if owner else "no peer's"),
                    abi.Reason.PASSED if owner == peer_id else abi.Reason.SPOOFED)
    if mode == abi.Source.OFF:
        return done("source check off for this peer", abi.Reason.PASSED_UNCHECKED)
    owners, why = source_owners(m, cfg, addr)
    out["best"] = {"why": why, "peers": [name.get(i, f"#{i}") for i in owners]}
    if peer_id in owners:
        return done(f"strict: {why} leads to {peer}", abi.Reason.PASSED)
    if mode == abi.Source.FEASIBLE:
        accepted, accept_why = source_owners(m, cfg, addr, accept=True)
        out["accept"] = {"why": accept_why, "peers": [name.get(i, f"#{i}") for i in accepted]}
        if peer_id in accepted:
            return done(f"feasible: {accept_why} leads to {peer}", abi.Reason.PASSED_FEASIBLE)
    if mode == abi.Source.LOOSE and owners:
        return done(f"loose: {why} leads to a peer", abi.Reason.PASSED_LOOSE)
    if owners:
        return done(f"{mode.name.lower()}: {why} leads to {', '.join(out['best']['peers'])}, not {peer}",
                    abi.Reason.SPOOFED)
    return done(f"{mode.name.lower()}: {why}, so not {peer}'s", abi.Reason.SPOOFED)


# -- status -------------------------------------------------------------------

def hook_problem(name, ifindex, role, links, hooked, filter_name, pinned, errors=None):
    """Why the device recorded as (name, ifindex) is not hooked, or None:
    gone, re-created under its name (a new ifindex that nothing hooked),
    its filters not listed (`errors`: {(ifindex, hook): message}), our
    filter missing from one of its hooks, or running another instance's
    program (`hooked`: {(ifindex, hook): {filter name: program id}};
    `pinned`: {program name: id} of this instance's pins)."""
    problem = device_check(name, ifindex, links)
    if problem is None:
        hooks = dataplane.HOOK_PROGRAMS[role]
        failed = [errors[(ifindex, h)] for h in hooks if (ifindex, h) in (errors or {})]
        missing = [h for h in hooks if filter_name not in hooked.get((ifindex, h), ())]
        if failed:  # cannot tell: said as a problem, never taken for hooked
            problem = f"cannot tell: {'; '.join(failed)}"
        elif missing:
            problem = f"no {filter_name} filter on its {' or '.join(missing)}"
        else:
            problem = dataplane.program_problem(
                name, role, {h: hooked[(ifindex, h)][filter_name] for h in hooks}, pinned)
    return problem


def instance_status(front):
    """One instance's status entry: devices and their hooks, settings, map
    fill, counters, the daemon, forwarding and the config file."""
    m = maps.Maps.open(maps.pin_dir(front), readonly=True)
    with m:
        cfg = m.config()
        fill = m.fill()
        links = current_links()
        peers = peer_rows(m, links)
        counters = {r.name.lower(): v for r, v in m.counters().items()}
        listener = monitor.watched(m)  # a `wgbpf monitor` listening, or None
    name = dataplane.filter_name(front)
    front_dev = cfg.front.decode() or front
    asked = [(p["ifindex"], h) for p in peers for h in ("ingress", "egress")]
    if cfg.front_ifindex:
        asked.append((cfg.front_ifindex, "egress"))
    errors = {}  # a hook whose filters cannot be listed: that device's problem, not the listing's end
    hooked = dataplane.bpf_filters(asked, errors)
    pinned, _ = dataplane.pinned_ids(maps.pin_dir(front))
    front_problem = (hook_problem(front_dev, cfg.front_ifindex, "front", links, hooked, name, pinned, errors)
                     if cfg.front_ifindex else None)
    members = []
    for p in peers:
        problem = hook_problem(p["member"], p["ifindex"], "member", links, hooked, name, pinned, errors)
        members.append({"peer": p["name"], "device": p["member"], "ifindex": p["ifindex"],
                        "up": p["up"], "source": p["source"],
                        "hooked": problem is None, "problem": problem})
    out = {"front": front, "version": VERSION, "netns": maps.netns_id(), "pin_dir": maps.pin_dir(front),
           "front_device": front_dev if cfg.front_ifindex else None,
           "front_ifindex": cfg.front_ifindex or None,
           "front_hooked": bool(cfg.front_ifindex) and front_problem is None,
           "front_problem": front_problem,
           "members_only": not cfg.front_ifindex,
           "no_route": abi.Policy(cfg.no_route).name.lower(),
           "lookup": abi.Lookup(cfg.lookup).name.lower(),
           "fib_table": cfg.fib_table or None,
           "source": abi.Source(cfg.source or abi.Source.STRICT).name.lower(),
           "accept_table": cfg.accept_table or None,
           "members": members,
           "maps": {k: {"entries": v[0], "max": v[1]} for k, v in fill.items()},
           "counters": counters,
           "monitor": listener}
    out["daemon"] = instance.read_status(front)
    out["forwarding_off"] = dataplane.forwarding_off([front_dev] if cfg.front_ifindex
                                                     else [p["member"] for p in peers])
    out["config"] = config_report(front, out["daemon"])
    return out


def config_report(front, dmn):
    """The config the instance should run and how the attached one differs:
    the running daemon's (its file; its command line, as the daemon itself
    compared it after its last full sync; the attached instance it
    adopted is not compared), else <config dir>/<front>.toml if there is
    one. None: nothing to compare with."""
    dmn = dmn or {}
    source = dmn.get("config") if dmn.get("state") in ("running", "detached") else None
    if source == "attached":
        return {"source": source}
    if source == "command line":
        return {"source": source, "path": "the daemon's command line",
                "differences": dmn.get("config_differences") or []}
    path = source or config.resolve_path(front, (), None)
    if path is None:
        return None
    try:
        want = config.build(front, (), path)
    except config.ConfigError as e:
        return {"path": path, "error": str(e)}
    if want.backend != "maps":
        return {"path": path, "error": f"backend {want.backend}: not this instance's (maps)"}
    return {"path": path, "differences": config.attached_differences(want)}


def problems(s):
    """One line per thing a monitor must hear about in one status entry."""
    out = []
    if "error" in s:
        out.append(f"{s['front']}: {s['error']}")
    if s.get("front_problem"):
        out.append(f"{s['front']}: front {s['front_device']} unhooked: {s['front_problem']}")
    for x in s.get("members", ()):
        if x["problem"]:
            out.append(f"{s['front']}: peer {x['peer']}: member {x['device']} unhooked: {x['problem']}")
    dmn = s.get("daemon") or {}
    if dmn.get("state") == "failed":
        out.append(f"{s['front']}: daemon failed" + (f": {dmn['error']}" if dmn.get("error") else ""))
    elif dmn.get("state") == "not running":
        out.append(f"{s['front']}: daemon not running (pid {dmn.get('pid')} died without stopping)")
    elif dmn.get("state") == "running" and "retry_in" in dmn:
        out.append(f"{s['front']}: daemon failing, its full resync due: {dmn.get('last_failure')}")
    if dmn.get("missing_peers"):  # the allowedips backend: their prefixes reach nobody
        out.append(f"{s['front']}: peers not on the device: {', '.join(dmn['missing_peers'])} (their "
                   f"prefixes reach nobody)")
    if s.get("forwarding_off"):
        out.append(f"{s['front']}: forwarding off ({', '.join(s['forwarding_off'])}): "
                   f"traffic between peers is dropped")
    c = s.get("config") or {}
    if c.get("error"):
        out.append(f"{s['front']}: config {c['path']}: {c['error']}")
    for line in c.get("differences", ()):
        out.append(f"{s['front']}: differs from {c['path']}: {line}")
    return out


def orphan_candidates(front=None):
    """Fronts that recorded a build here (instance.build_path) and have no
    pins: where filters may run on with their pins removed. Only those
    are looked for: a scan of every device's filters is not for free."""
    try:
        names = os.listdir(instance.run_dir())
    except OSError:
        return set()
    fronts = {n[:-len(".build")] for n in names if n.endswith(".build")}
    return {f for f in fronts if (front is None or f == front) and not os.path.isdir(maps.pin_dir(f))}


def orphan_entry(front, found):
    """The status entry of an instance whose pins were removed under it
    while its filters run on (dataplane.orphaned_filters)."""
    devices = sorted({device for _i, device, _h in found})
    return {"front": front, "pin_dir": maps.pin_dir(front), "orphaned": devices,
            "error": f"pins gone ({maps.pin_dir(front)}), but its filters still run on {', '.join(devices)}, "
                     f"steering on maps nothing can write: `wgbpf detach {front}` removes them, "
                     f"`wgbpf attach` makes the instance anew"}


def namespace_status(front=None):
    """Status entries of this network namespace's instances (and of its
    allowedips daemons, which have no pins). One broken instance hides no
    other; the one named (`front`) raises its MapError."""
    single = instance.allowedips_daemons()  # --backend allowedips: a daemon, no pins
    fronts = [front] if front else maps.instances()
    orphans = {}
    if orphan_candidates(front):
        with dataplane.iproute() as ipr:
            orphans = {f: found for f, found in dataplane.orphaned_filters(ipr, front).items()
                       if f in orphan_candidates(front)}
    res = [orphan_entry(f, devices) for f, devices in sorted(orphans.items())]
    for f in fronts:
        if f in orphans:
            continue
        if f in single and not os.path.isdir(maps.pin_dir(f)):
            res.append({"front": f, "backend": "allowedips", "daemon": single[f]})
            continue
        try:
            res.append(instance_status(f))
        except maps.MapError as e:
            if front:
                raise
            res.append({"front": f, "error": str(e)})
    if not front:
        res += [{"front": f, "backend": "allowedips", "daemon": st} for f, st in sorted(single.items())
                if f not in fronts]
        # a daemon that failed with no instance to show it under (its
        # attach refused): still a problem for `status --check`
        res += [{"front": f, "error": f"daemon failed: {st.get('error', 'see its log')} (no instance attached)"}
                for f, st in sorted(instance.failed_daemons().items()) if f not in fronts and f not in single]
        res += [detached_entry(f, st) for f, st in sorted(instance.detached_daemons().items())
                if f not in fronts and f not in single]
    return res


def detached_entry(front, st):
    """The status entry of a daemon whose instance was detached under it:
    it waits for an attach, and nothing is steered meanwhile."""
    return {"front": front, "error": f"daemon (pid {st.get('pid')}) running on a detached instance: nothing "
                                     f"is steered until `wgbpf attach` makes it again"}


def find_namespaces(wanted):
    """{cookie: (label, path)} of the namespaces in `wanted` found by name
    in /run/netns, else by a process in them (/proc/PID/ns/net)."""
    def candidates():
        try:
            for n in sorted(os.listdir("/run/netns")):
                yield n, f"/run/netns/{n}"
        except OSError:
            pass
        for proc in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
            yield f"pid {proc}", f"/proc/{proc}/ns/net"
    found, seen = {}, set()
    for label, path in candidates():
        if set(wanted) <= set(found):
            break
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            cookie = maps.netns_id(path)
        except OSError:
            continue  # gone meanwhile, or not ours to see
        if cookie in wanted and cookie not in found:
            found[cookie] = (label, path)
    return found


def all_status():
    """Every namespace's status entries, each with its namespace: this
    one's read here, another's from a thread that joins it, one no name or
    process leads to listed from its pins alone."""
    here = maps.netns_id()
    cookies = {ns for ns, _ in maps.all_instances()} | instance.run_namespaces() | {here}
    where = find_namespaces(cookies)
    res = []
    for ns in sorted(cookies, key=lambda c: (c != here, c)):
        label = where.get(ns, (None, None))[0]
        if ns == here:
            entries = namespace_status()
        elif ns in where:
            try:
                entries = nsenter.run(where[ns][1], namespace_status)
            except OSError as e:
                entries = [{"front": f, "error": f"cannot enter network namespace {label}: {e.strerror}"}
                           for f in maps.instances(ns)]
        else:
            entries = [{"front": f, "pin_dir": maps.pin_dir(f, ns),
                        "error": f"network namespace {ns} not found (not in /run/netns, no process in it): "
                                 f"devices not checked; if it is gone, remove its stale pins "
                                 f"(rm -r {maps.pin_dir(f, ns)})"}
                       for f in maps.instances(ns)]
        res += [dict(e, netns=ns, netns_name=label, current=ns == here) for e in entries]
    for directory in maps.legacy_instances():
        front = os.path.basename(directory)
        res.append({"front": front, "pin_dir": directory, "netns": None, "netns_name": None,
                    "current": False,
                    "error": f"pinned by an older wgbpf, without a namespace in the path: its programs "
                             f"still run where it attached them; detach it with that version, or remove "
                             f"its wgbpf-{front} tc filters and rm -r {directory}"})
    return res


"""wgbpf: steer WireGuard peers from routes with eBPF.

Every command reads or writes the instance pinned under
/sys/fs/bpf/wgbpf/<netns cookie>/<front>/ (maps.pin_dir): instances are per
network namespace, and every listing sees the current one's (--netns picks
another; `status --all` lists them all). Listings take --json.
"""
import ipaddress
import json
import os
import socket
import sys
import time

import click

from . import abi, config as configmod, maps as mapsmod, nsenter
from .config import ConfigError
from .maps import Maps, MapError, network, route_peers
from .version import VERSION


class UsageError(click.ClickException):
    """Printed as 'wgbpf: error: ...', exit 1; the data plane is untouched."""

    def format_message(self):
        return self.message

    def show(self, file=None):
        click.echo(f"wgbpf: error: {self.format_message()}", err=True)


def fail(msg):
    raise UsageError(msg)


def emit(obj, as_json, human):
    if as_json:
        click.echo(json.dumps(obj, indent=2, sort_keys=False))
    else:
        human(obj)


def table(rows, headers):
    """Plain aligned columns, like `ip -br`."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(fmt.format(*headers).rstrip())
    for r in rows:
        click.echo(fmt.format(*r).rstrip())


def need_root():
    if os.geteuid() != 0:
        fail("needs root: the pinned maps are root's alone (0600 under /sys/fs/bpf/wgbpf)")


def pick_front(front):
    """The instance to act on: the one named, or the only one there is.
    An empty name is an error, not "the only one": an unset shell variable
    must not detach the instance that happens to be there."""
    if front is not None:
        try:
            configmod.check_ifname(front, "front")  # also keeps paths inside the pin root
        except ConfigError as e:
            fail(str(e))
        if not os.path.isdir(mapsmod.pin_dir(front)):
            have = ", ".join(mapsmod.instances()) or "none"
            elsewhere = any(f == front for _, f in mapsmod.all_instances())
            fail(f"no wgbpf instance {front!r} in this network namespace (attached: {have}); "
                 + ("one of that name is attached in another namespace (wgbpf status --all; "
                    "choose it with --netns)" if elsewhere else f"run `wgbpf attach {front} ...` first"))
        return front
    have = mapsmod.instances()  # this namespace's only: others have their own
    if not have:
        fail("no wgbpf instance is attached in this network namespace; "
             "run `wgbpf attach FRONT --peer NAME=DEV ...` first")
    if len(have) > 1:
        fail(f"several instances are attached ({', '.join(have)}): choose one with --front")
    return have[0]


def open_maps(front, readonly=False):
    need_root()
    front = pick_front(front)
    try:
        return front, Maps.open(mapsmod.pin_dir(front), readonly=readonly)
    except MapError as e:
        fail(str(e))


def ifname(index):
    """The name of a device the kernel named by ifindex just now (a route's
    oif). An ifindex read from the maps goes through device_check instead:
    it may name another device by now."""
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"#{index}"


def current_links():
    """{name: ifindex} of this namespace's devices."""
    return {name: index for index, name in socket.if_nameindex()}


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


def marked(name, problem):
    """A recorded device for display: its name, marked when it is not the
    device recorded (never another device's name)."""
    if problem is None:
        return name
    return f"{name} ({'re-created' if 're-created' in problem else 'gone'})"


def peer_rows(m, links=None):
    peers = m.peers()
    tags = m.tags()
    links = current_links() if links is None else links
    out = []
    for pid, p in sorted(peers.items()):
        s = m.peer_stats(pid)
        member = p.member.decode()
        out.append({
            "id": pid, "name": p.name.decode(), "member": member or f"#{p.ifindex}",
            "ifindex": p.ifindex, "member_problem": device_check(member, p.ifindex, links),
            "up": bool(p.flags & abi.PEER_UP),
            "source": abi.Source(p.source).name.lower() if p.source else "default",
            "tags": [str(t) for t, owner in sorted(tags.items(), key=lambda kv: (kv[0].version, kv[0])) if owner == pid],
            "tx_packets": s.tx_packets, "tx_bytes": s.tx_bytes,
            "rx_packets": s.rx_packets, "rx_bytes": s.rx_bytes, "spoofed": s.spoofed,
        })
    return out


_INSTANCE_OPTIONS = [
    click.option("--peer", "-p", "peers", multiple=True, metavar="NAME=DEV[,TAG...]",
                 help="a peer: its name, its member WireGuard device (daemon --backend allowedips: "
                      "its public key instead) and its tag addresses; repeat"),
    click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
                 help="TOML file with front, no_route, lookup, source and [[peer]] tables "
                      "(the daemon re-reads it on SIGHUP)"),
    click.option("--members-only", is_flag=True, default=None,
                 help="no front device: filter sources on the members alone (FRONT only names the instance)"),
    click.option("--no-route", type=click.Choice(["pass", "drop"]), default=None,
                 help="packets on the front that no route claims: hand to the kernel (default) or drop"),
    click.option("--lookup", type=click.Choice(["lpm", "fib", "dir24"]), default=None,
                 help="lpm (default): prefixes in BPF LPM tries, from `route` and the daemon; "
                      "fib: the kernel's own table via bpf_fib_lookup, no prefix maps; "
                      "dir24: IPv4 compiled to DIR-24-8 arrays (two array reads, 48 MiB), IPv6 as lpm"),
    click.option("--fib-table", metavar="TABLE", default=None,
                 help="with --lookup fib: the table to look in (default main)"),
    click.option("--source", type=click.Choice(["strict", "feasible", "loose", "off"]), default=None,
                 help="source check for peers without their own (default strict); per peer: "
                      "--peer NAME=DEV,...,source=MODE"),
    click.option("--accept-table", metavar="TABLE", default=None,
                 help="for --source feasible: the kernel table of accepted paths (lpm: the "
                      "daemon copies it into the accept maps; fib: looked up live)"),
]


def instance_options(f):
    """--peer, --config and the instance settings: attach and daemon alike."""
    for opt in reversed(_INSTANCE_OPTIONS):
        f = opt(f)
    return f


FRONT_OPT = click.option("--front", "-f", metavar="FRONT",
                         help="the instance (front device); default: the only one attached")
JSON_OPT = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


@click.group(invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--netns", metavar="NAME",
              help="act in network namespace NAME (/run/netns/NAME), keeping /sys/fs/bpf visible")
@click.version_option(VERSION, "--version", "-V", prog_name="wgbpf", message="%(prog)s %(version)s")
@click.pass_context
def main(ctx, netns):
    """Steer WireGuard peers from the kernel routing table with eBPF.

    A front device (wg0) carries the routes; one member WireGuard device per
    peer carries its traffic. `attach` hooks the data plane in with tc,
    `route` edits prefix -> peer entries, and `dump`, `lookup` and `status`
    show what it does. With no command: status.
    """
    if netns is not None:
        from .dataplane import AttachError, enter_netns
        if netns.strip() in ("", ".", ".."):
            fail(f"--netns {netns!r}: name a network namespace (/run/netns/NAME) or give a path to one")
        try:
            enter_netns(netns)
        except AttachError as e:
            fail(f"--netns: {e}")
    if ctx.invoked_subcommand is None:
        ctx.invoke(status)


@main.command()
@click.argument("front", required=False)
@instance_options
@click.option("--debug", is_flag=True, help="print the BPF instructions BCC generates")
@JSON_OPT
def attach(front, peers, config_path, members_only, no_route, lookup, fib_table, source,
           accept_table, debug, as_json):
    """Load the data plane and hook FRONT and its peers' members.

    Running it again with the same peers changes nothing; with other peers
    it updates in place, without dropping traffic.

    \b
    wgbpf attach wg0 --peer alice=wg-alice,fe80::1 --peer bob=wg-bob,fe80::2
    wgbpf attach --config /etc/wgbpf/wg0.toml
    """
    from .dataplane import AttachError
    from . import daemon as d, dataplane
    try:
        policy = configmod.parse_policy(no_route, "--no-route") if no_route else None
        settings = settings_args(lookup, fib_table, source, accept_table)
        path = configmod.resolve_path(front, peers, config_path)
        if path is None and not peers and front and os.path.isdir(mapsmod.pin_dir(front)):
            # no peers given, no config file: attach again what is attached
            # (after an upgrade: its new programs), with what the line changes
            need_root()
            cfg = d.adopt(front, members_only, policy, settings)
        elif path is None and not peers and front:
            fail(f"no peers: give --peer NAME=MEMBER_DEV[,TAG...] or --config FILE, "
                 f"or write {configmod.default_path(front)}")
        else:
            cfg = configmod.build(front, peers, path, members_only, policy, **settings)
    except ConfigError as e:
        fail(str(e))
    if cfg.backend == "allowedips":
        fail(f"{path}: backend \"allowedips\" has no BPF data plane to attach; "
             f"run `wgbpf daemon --config {path}` (it drives {cfg.front}'s AllowedIPs)")
    need_root()
    log = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    try:
        # one writer at a time: another attach, a detach, the daemon's sync
        with d.writer_lock(cfg.front, lambda: log(f"waiting for another writer of {cfg.front}")):
            res = dataplane.attach(cfg, log=log, debug=debug)
    except (AttachError, MapError) as e:
        fail(str(e))
    res["daemon_told"] = d.notify_attached(cfg.front)  # it reopens the maps and resyncs

    def human(r):
        what = "created" if r["created"] else ("updated" if r["changes"] else "unchanged")
        click.echo(f"{r['front']}: {what}, {r['peers']} peers"
                   f"{' (members only)' if r['members_only'] else ''}, lookup {r.get('lookup', 'lpm')}, "
                   f"source check {r.get('source', 'strict')}, pinned at {r['pin_dir']} ({r['seconds']:.1f}s)")
        if r.get("fib"):
            f = r["fib"]
            click.echo(f"  fib: table {f['table']}, forwarding {f['forwarding']}"
                       + (f", accept table {f['accept_table']}" if f["accept_table"] else "")
                       + ("" if f["tbid"] is None else f", BPF_FIB_LOOKUP_TBID {'supported' if f['tbid'] else 'missing'}"))
        for c in r["changes"]:
            click.echo(f"  {c}")
        if r.get("daemon_told"):
            click.echo("  the running daemon reopens the maps and resyncs")
        for w in r["warnings"]:
            click.echo(f"wgbpf: warning: {w}", err=True)
    emit(res, as_json, human)


def settings_args(lookup, fib_table, source, accept_table):
    """CLI spellings -> Config fields (None: not given, the file decides)."""
    return {
        "lookup": configmod.parse_lookup(lookup, "--lookup") if lookup else None,
        "fib_table": configmod.parse_table(fib_table, "--fib-table") if fib_table else None,
        "source": configmod.parse_source(source, "--source") if source else None,
        "accept_table": configmod.parse_table(accept_table, "--accept-table") if accept_table else None,
    }


@main.command()
@click.argument("front", required=False)
@JSON_OPT
def detach(front, as_json):
    """Remove the filters and pins of FRONT; traffic falls back to the kernel."""
    from . import daemon as d, dataplane
    need_root()
    front = pick_front(front)
    try:
        with d.writer_lock(front):
            res = dataplane.detach(front)
            res["run_files_removed"] = d.remove_run_files(front)
    except dataplane.AttachError as e:
        fail(str(e))
    emit(res, as_json, lambda r: click.echo(f"{r['front']}: detached from {r['devices']} devices, pins removed"))


@main.group()
def route():
    """Edit prefix -> peer entries (IPv4 and IPv6, ECMP)."""


def peer_names(text):
    """PEER[,PEER...] checked before any map is opened."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        fail(f"{text!r}: name at least one peer")
    if len(names) > abi.MAX_ECMP:
        fail(f"{text!r}: a route names at most {abi.MAX_ECMP} peers (ECMP), not {len(names)}")
    if len(set(names)) != len(names):
        fail(f"{text!r}: a peer is named twice")
    return names


def resolve_peers(m, names):
    by_name = {p.name.decode(): i for i, p in m.peers().items()}
    ids = []
    for n in names:
        if n not in by_name:
            fail(f"unknown peer {n!r} (peers: {', '.join(sorted(by_name)) or 'none'})")
        ids.append(by_name[n])
    return ids


def parse_address(text, where="ADDRESS"):
    try:
        return configmod.parse_address(text, where)
    except ConfigError as e:
        fail(str(e))


def parse_prefix(text, where="PREFIX"):
    try:
        return configmod.parse_prefix(text, where)
    except ConfigError as e:
        fail(str(e))


def check_metrics_file(path):
    """--metrics-file: refused now, not after attach and the first sync."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        fail(f"--metrics-file {path!r}: directory {directory!r} does not exist")
    if os.path.isdir(path):
        fail(f"--metrics-file {path!r} is a directory")


ACCEPT_OPT = click.option("--accept", is_flag=True,
                          help="the accept table of the feasible source check, not the steering one")


@route.command("add")
@click.argument("prefix")
@click.argument("peers", metavar="PEER[,PEER...]")
@FRONT_OPT
@ACCEPT_OPT
def route_add(prefix, peers, front, accept):
    """Send PREFIX to PEERS (several: ECMP by flow hash); replaces an entry."""
    net = parse_prefix(prefix)
    names = peer_names(peers)
    front, m = open_maps(front)
    with m:
        ids = resolve_peers(m, names)
        m.set_route(net, ids, abi.Origin.STATIC, kind="accept" if accept else "routes")
        if net.version == 4 and not accept:
            m.compile_dir24()
    from .daemon import notify_maps_written
    notify_maps_written(front)  # its view of the maps, and dir24's, is stale now
    click.echo(f"{net} -> {peers}" + (" (accept)" if accept else ""))


@route.command("del")
@click.argument("prefix")
@FRONT_OPT
@ACCEPT_OPT
def route_del(prefix, front, accept):
    """Remove the entry for exactly PREFIX."""
    net = parse_prefix(prefix)
    kind = "accept" if accept else "routes"
    front, m = open_maps(front)
    with m:
        if m.get_route(net, kind) is None:
            fail(f"no entry for {net}" + (" in the accept table" if accept else ""))
        m.del_route(net, kind)
        if net.version == 4 and not accept:
            m.compile_dir24()
    from .daemon import notify_maps_written
    notify_maps_written(front)  # a kernel route for the prefix takes its place
    click.echo(f"{net} removed")


def route_rows(m, names):
    rows = []
    for version in (4, 6):
        for net, r in sorted(m.routes(version), key=lambda nr: nr[0]):
            rows.append({"prefix": str(net), "peers": [names.get(p, f"#{p}") for p in route_peers(r)],
                         "origin": abi.Origin(r.origin).name.lower() if r.origin in abi.Origin._value2member_map_ else str(r.origin)})
    return rows


@main.command()
@FRONT_OPT
@JSON_OPT
def dump(front, as_json):
    """Every prefix with its peers, and per-peer counters."""
    front, m = open_maps(front, readonly=True)
    with m:
        peers = peer_rows(m)
        names = {p["id"]: p["name"] for p in peers}
        res = {"front": front, "routes": route_rows(m, names), "peers": peers}

    def human(r):
        table([(x["prefix"], ",".join(x["peers"]), x["origin"]) for x in r["routes"]],
              ["PREFIX", "PEERS", "ORIGIN"])
        click.echo()
        table([(p["name"], marked(p["member"], p["member_problem"]), "up" if p["up"] else "down",
                ",".join(p["tags"]) or "-",
                p["tx_packets"], p["tx_bytes"], p["rx_packets"], p["rx_bytes"], p["spoofed"])
               for p in r["peers"]],
              ["PEER", "MEMBER", "STATE", "TAGS", "TX_PKTS", "TX_BYTES", "RX_PKTS", "RX_BYTES", "SPOOFED"])
    emit(res, as_json, human)


def explain(m, addr):
    """What front_egress does with a packet to `addr`, in words and fields."""
    peers = m.peers()
    name = {i: p.name.decode() for i, p in peers.items()}
    up = {i: bool(p.flags & abi.PEER_UP) for i, p in peers.items()}
    policy = abi.Policy(m.config().no_route).name.lower()
    if (addr.version == 4 and addr in ipaddress.ip_network("224.0.0.0/24")) or \
            (addr.version == 6 and addr.packed[:2] == b"\xff\x02"):
        to = [name[i] for i in sorted(peers) if up[i]]
        return {"address": str(addr), "rule": "link-local multicast", "prefix": None,
                "peers": to, "verdict": f"flood to {len(to)} members"}
    if m.config().lookup == abi.Lookup.FIB:
        owner, why = kernel_peer(m, addr, m.config().fib_table)
        if owner is None:
            return {"address": str(addr), "rule": why, "prefix": None, "peers": [],
                    "verdict": f"no_route policy: {policy}"}
        return {"address": str(addr), "rule": why, "prefix": None, "peers": [name[owner]],
                "down": [] if up[owner] else [name[owner]],
                "verdict": f"steer to {name[owner]}" if up[owner] else f"peer down: no_route policy: {policy}"}
    hit = m.lookup(addr)
    if hit is None:
        return {"address": str(addr), "rule": "no route", "prefix": None, "peers": [],
                "verdict": f"no_route policy: {policy}"}
    net, r = hit
    ids = route_peers(r)
    live = [name.get(i, f"#{i}") for i in ids if up.get(i)]
    origin = abi.Origin(r.origin).name.lower() if r.origin in abi.Origin._value2member_map_ else str(r.origin)
    if not live:
        verdict = f"every peer down: no_route policy: {policy}"
    elif len(ids) == 1:
        verdict = f"steer to {live[0]}"
    else:
        verdict = f"steer by flow hash to one of {', '.join(live)}"
    return {"address": str(addr), "rule": f"{origin} route", "prefix": str(net),
            "peers": [name.get(i, f"#{i}") for i in ids], "down": [name.get(i, f"#{i}") for i in ids if not up.get(i)],
            "verdict": verdict}


def kernel_peer(m, addr, table):
    """FIB mode, from user space: the kernel's route to addr (RTM_GETROUTE)
    and the peer its nexthop or device names, as bpf_fib_lookup would."""
    from .dataplane import _iproute
    peers = m.peers()
    links = current_links()  # a member counts only while it is the device recorded
    by_oif = {p.ifindex: i for i, p in peers.items()
              if device_check(p.member.decode(), p.ifindex, links) is None}
    tags = {t: i for t, i in m.tags().items()}
    with _iproute() as ipr:
        try:
            kw = {"table": table} if table else {}
            r = ipr.route("get", dst=str(addr), **kw)[0]
        except Exception as e:
            return None, f"no kernel route ({getattr(e, 'args', [e])[-1]})"
    gw = r.get_attr("RTA_GATEWAY")
    via = r.get_attr("RTA_VIA")
    if via is not None:
        gw = via.get("addr") if isinstance(via, dict) else None
    oif = r.get_attr("RTA_OIF")
    if gw and ipaddress.ip_address(gw) in tags:
        return tags[ipaddress.ip_address(gw)], f"kernel route via {gw}"
    if ipaddress.ip_address(addr) in tags:
        return tags[ipaddress.ip_address(addr)], "tag address"
    if oif in by_oif:
        return by_oif[oif], f"kernel route dev {ifname(oif)}"
    return None, f"kernel route via {gw or '-'} dev {ifname(oif) if oif else '-'} names no peer"


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
    elif addr in configmod.MAPPED or addr in configmod.COMPAT:
        return R.MARTIAN_MAPPED, "IPv4-mapped or IPv4-compatible IPv6"
    elif addr.is_multicast:
        return R.MARTIAN_MULTICAST, "multicast"
    if addr in m.locals():
        return R.MARTIAN_LOCAL, "one of this host's own addresses"
    return None


def explain_source(m, addr, peer):
    """What member_ingress decides for a packet from `addr` arriving from
    `peer`, step by step as check_source() in bpf/wgbpf.c."""
    cfg = m.config()
    peers = m.peers()
    by_name = {p.name.decode(): i for i, p in peers.items()}
    if peer not in by_name:
        fail(f"unknown peer {peer!r} (peers: {', '.join(sorted(by_name)) or 'none'})")
    pid = by_name[peer]
    name = {i: p.name.decode() for i, p in peers.items()}
    mode = abi.Source(peers[pid].source or cfg.source or abi.Source.STRICT)
    out = {"source": str(addr), "peer": peer, "mode": mode.name.lower(),
           "lookup": abi.Lookup(cfg.lookup).name.lower()}
    bad = martian(m, addr) if mode != abi.Source.OFF else None
    if bad:
        out.update(step=f"martian source ({bad[1]}): dropped before any lookup",
                   verdict=bad[0].name.lower())
        return out
    link_local = (addr.version == 4 and addr in ipaddress.ip_network("169.254.0.0/16")) or \
        (addr.version == 6 and addr in ipaddress.ip_network("fe80::/10"))
    if link_local:
        owner = m.tags().get(addr)
        ok = owner == pid
        out.update(step=f"link-local source: must be {peer}'s tag; it is "
                        + (f"{name.get(owner)}'s" if owner else "no peer's"),
                   verdict="passed" if ok else "spoofed")
        return out
    if mode == abi.Source.OFF:
        out.update(step="source check off for this peer", verdict="passed_unchecked")
        return out
    if cfg.lookup == abi.Lookup.FIB:
        owner, why = kernel_peer(m, addr, cfg.fib_table)
        owners = [owner] if owner else []
    else:
        hit = m.lookup(addr)
        owners = route_peers(hit[1]) if hit else []
        why = f"best route {hit[0]}" if hit else "no route"
    out["best"] = {"why": why, "peers": [name.get(i, f"#{i}") for i in owners]}
    if pid in owners:
        out.update(step=f"strict: {why} leads to {peer}", verdict="passed")
        return out
    if mode == abi.Source.FEASIBLE:
        if cfg.lookup == abi.Lookup.FIB:
            acc, awhy = kernel_peer(m, addr, cfg.accept_table) if cfg.accept_table else (None, "no accept table")
            accepted = [acc] if acc else []
        else:
            hit = m.lookup(addr, kind="accept")
            accepted = route_peers(hit[1]) if hit else []
            awhy = f"accept route {hit[0]}" if hit else "no accept route"
        out["accept"] = {"why": awhy, "peers": [name.get(i, f"#{i}") for i in accepted]}
        if pid in accepted:
            out.update(step=f"feasible: {awhy} leads to {peer}", verdict="passed_feasible")
            return out
    if mode == abi.Source.LOOSE and owners:
        out.update(step=f"loose: {why} leads to a peer", verdict="passed_loose")
        return out
    out.update(step=f"{mode.name.lower()}: {why} does not lead to {peer}", verdict="spoofed")
    return out


@main.command()
@click.argument("address", required=False)
@click.option("--source", "source_addr", metavar="ADDR",
              help="explain the source check instead: a packet from ADDR ...")
@click.option("--peer", metavar="NAME", help="... arriving from peer NAME")
@FRONT_OPT
@JSON_OPT
def lookup(address, source_addr, peer, front, as_json):
    """The longest match for ADDRESS, its peers, and what the front does;
    or with --source ADDR --peer NAME, what a member decides for a packet
    from ADDR sent by NAME, and why."""
    if source_addr or peer:
        if not (source_addr and peer) or address is not None:
            fail("the source check takes --source ADDR and --peer NAME (and no ADDRESS)")
        addr = parse_address(source_addr, "--source")
        front, m = open_maps(front, readonly=True)
        with m:
            res = explain_source(m, addr, peer)

        def human_src(r):
            click.echo(f"from {r['source']} via {r['peer']}: {r['verdict']} "
                       f"(source check {r['mode']}, lookup {r['lookup']})")
            click.echo(f"  {r['step']}")
        emit(res, as_json, human_src)
        return
    if address is None:
        fail("give an ADDRESS, or --source ADDR --peer NAME")
    addr = parse_address(address)
    front, m = open_maps(front, readonly=True)
    with m:
        res = explain(m, addr)

    def human(r):
        click.echo(f"{r['address']}: {r['rule']}" + (f" {r['prefix']}" if r["prefix"] else ""))
        if r["peers"]:
            click.echo(f"  peers: {', '.join(r['peers'])}" + (f" (down: {', '.join(r['down'])})" if r.get("down") else ""))
        click.echo(f"  {r['verdict']}")
    emit(res, as_json, human)


@main.command()
@FRONT_OPT
@click.option("--interval", "-d", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="seconds between samples")
@click.option("--once", is_flag=True, help="print one sample (rates over --interval) and exit")
@JSON_OPT
def top(front, interval, once, as_json):
    """Per-peer rates, live: packets and bits per second each way, drops,
    state and last handshake, prefixes; busiest first. q quits."""
    from . import top as topmod
    if as_json and not once:
        fail("--json prints one sample: use it with --once")
    if not once and not sys.stdout.isatty():
        fail("the live view needs a terminal: use --once (and --json) in scripts")
    front, m = open_maps(front, readonly=True)
    with m:
        sampler = topmod.Sampler(m, front)
        if once:
            sampler.sample()
            time.sleep(interval)
            emit(sampler.sample(), as_json, lambda s: click.echo("\n".join(topmod.lines(s))))
        else:
            topmod.run_curses(sampler, interval)


@main.command()
@FRONT_OPT
@click.option("--all", "all_packets", is_flag=True, help="steered and passed packets too, not only drops")
@click.option("--count", "-c", type=click.IntRange(min=1), help="exit after N packets")
@JSON_OPT
def monitor(front, all_packets, count, as_json):
    """Dropped packets as they happen, one line each: time, device,
    source > destination, peer, reason. The data plane reports them only
    while this runs (at most 1000 a second per CPU)."""
    import signal
    from . import monitor as mon
    front, m = open_maps(front)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave through the finally below
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(0))
    with m:
        try:
            lst = mon.Listener(m, abi.Watch.ALL if all_packets else abi.Watch.DROPS)
        except mon.MonitorError as e:
            fail(f"{front}: {e}")
        seen = 0
        try:
            names, wall = mon.Names(m), mon.mono_to_wall()
            click.echo(f"wgbpf monitor: watching {front} for {'every packet' if all_packets else 'drops'}; "
                       f"Ctrl-C stops", err=True)
            while count is None or seen < count:
                for e in lst.events():
                    d = mon.describe(e, names, wall)
                    click.echo(json.dumps(d) if as_json else mon.line(d))
                    seen += 1
                    if count is not None and seen >= count:
                        break
                sys.stdout.flush()
        except (KeyboardInterrupt, BrokenPipeError):
            pass
        finally:
            held, lost = lst.held_back()
            lst.close()
            if held - lst.held0 or lost - lst.lost0:
                click.echo(f"wgbpf monitor: {held - lst.held0} packets not shown (rate limit), "
                           f"{lost - lst.lost0} lost (ring buffer full)", err=True)


@main.command()
@click.argument("front", required=False)
@instance_options
@click.option("--table", "-t", "tables", multiple=True, metavar="TABLE",
              help="routing table to follow: main, a number or a name from rt_tables; "
                   "repeat for several (the first wins a tie); default main")
@click.option("--proto", "protos", multiple=True, metavar="PROTO",
              help="only routes of this protocol (bird, babel, static, a number); repeat")
@click.option("--realm", "realms", multiple=True, type=int, metavar="N",
              help="only routes of this realm; repeat")
@click.option("--metrics-file", type=click.Path(dir_okay=False),
              help="write Prometheus text metrics here (node_exporter textfile); off by default")
@click.option("--rcvbuf", type=int, default=32 << 20, show_default=True, hidden=True,
              help="netlink receive buffer in bytes")
@click.option("--backend", type=click.Choice(configmod.BACKENDS), default=None,
              help="maps (default): the BPF maps of FRONT's instance; allowedips: no BPF, FRONT is "
                   "one multi-peer WireGuard device whose peers' AllowedIPs follow the routes "
                   "(--peer NAME=PUBLIC_KEY,TAG...)")
@click.option("--dead-after", metavar="SECONDS",
              help="a peer we send to and hear nothing from (not even a keepalive) for SECONDS is "
                   "dead: down in the peers map (ECMP falls back) until it is heard again; off by "
                   "default (README: Dead peers)")
@click.option("--verbose", "-v", is_flag=True,
              help="log each map change a route event makes, with the time to the millisecond")
@click.option("--gone-after", type=click.FloatRange(min=0), default=30.0, show_default=True,
              metavar="SECONDS",
              help="exit (status 1: systemd restarts it) once the front, or the --netns namespace, "
                   "has been gone for SECONDS on end; 0: never")
def daemon(front, peers, config_path, members_only, no_route, lookup, fib_table, source,
           accept_table, tables, protos, realms, metrics_file, rcvbuf, backend, dead_after,
           verbose, gone_after):
    """Keep the maps equal to the kernel routes that name peers.

    A route names a peer when its gateway is one of the peer's tags (also an
    IPv4 route via an IPv6 link-local nexthop) or when it leaves by the
    peer's member device; a multipath route names every such peer (ECMP).
    Runs in the foreground (systemd: see systemd/wgbpf@.service); on exit
    the data plane keeps running, and a restart reconciles by difference.
    Entries from `wgbpf route` and tag host routes are left alone.

    With --backend allowedips each peer's AllowedIPs on the device FRONT
    become its tags plus the prefixes routed to it; a multipath route's
    prefix goes to one of its peers (AllowedIPs cannot split it).
    """
    from . import daemon as d, routes as rt, sync
    try:
        table_ids = [rt.table_id(t) for t in (tables or ("main",))]
        proto_ids = [rt.protocol_id(p) for p in protos]
    except ValueError as e:
        fail(str(e))
    try:
        policy = configmod.parse_policy(no_route, "--no-route") if no_route else None
        settings = settings_args(lookup, fib_table, source, accept_table)
        if backend:
            settings["backend"] = backend
        if dead_after is not None:
            settings["dead_after"] = configmod.parse_dead_after(dead_after, "--dead-after")
        build = d.config_builder(front, peers, config_path, members_only, policy, settings, log=d.stderr_log)
        cfg = build(quiet=True)  # validate before touching anything
    except ConfigError as e:
        fail(str(e))
    if metrics_file:
        check_metrics_file(metrics_file)
    if cfg.backend == "allowedips":
        given = [opt for opt, v in (("--members-only", members_only), ("--no-route", no_route),
                                    ("--lookup", lookup), ("--fib-table", fib_table),
                                    ("--source", source), ("--accept-table", accept_table)) if v]
        if given:
            fail(f"{', '.join(given)}: settings of the BPF data plane, which --backend allowedips does "
                 f"not use (WireGuard's AllowedIPs check sources there)")
    need_root()

    def progress(stage, n, total=None):
        tail = f"/{total}" if total else ""
        click.echo(f"\r{stage}: {n}{tail} ", nl=False, err=True)

    kind = d.Daemon
    if cfg.backend == "allowedips":
        from .allowedips import AllowedIPsDaemon as kind
    daemon_ = kind(build, sync.Filter(table_ids, proto_ids, realms), d.stderr_log,
                   metrics_file=metrics_file, rcvbuf=rcvbuf,
                   progress=progress if sys.stderr.isatty() else None)
    daemon_.verbose, daemon_.gone_after = verbose, gone_after
    netns = click.get_current_context().find_root().params.get("netns")
    if netns:
        daemon_.netns_path = netns if "/" in netns else f"/run/netns/{netns}"
    from .dataplane import AttachError
    from .wireguard import WireGuardError
    try:
        daemon_.run()
    except (d.DaemonError, AttachError, MapError, ConfigError, WireGuardError) as e:
        fail(str(e))


def liveness_text(name, lv):
    """One peer's liveness for `wgbpf status`: alice alive (rx 0.4s ago),
    bob DEAD 12s (nothing received for 2.1s while sending)."""
    ago = f" {time.time() - lv['since']:.0f}s" if lv.get("since") else ""
    if lv["state"] == "dead":
        return f"{name} DEAD{ago} ({lv['reason']})"
    hold = f", hold-down {lv['hold_down']:.0f}s" if lv.get("hold_down") else ""
    rx = f"rx {lv['rx_age']:.1f}s ago" if lv.get("rx_age") is not None else "not sampled yet"
    return f"{name} alive ({rx}{hold}; dead after {lv['dead_after']:g}s, {lv['deaths']} deaths)"


def hook_problem(name, ifindex, hooks, links, has_filter, fname):
    """Why the device recorded as (name, ifindex) is not hooked, or None:
    gone, re-created under its name (a new ifindex that nothing hooked),
    or our filter missing from one of its hooks."""
    problem = device_check(name, ifindex, links)
    if problem is None:
        missing = [h for h in hooks if not has_filter(ifindex, h)]
        if missing:
            problem = f"no {fname} filter on its {' or '.join(missing)}"
    return problem


def instance_status(front):
    from .dataplane import _iproute, filter_name, filters
    from .monitor import watched
    _, m = open_maps(front, readonly=True)
    with m, _iproute() as ipr:
        cfg = m.config()
        name = filter_name(front)
        fill = m.fill()
        links = current_links()
        peers = peer_rows(m, links)

        def has_filter(ifindex, hook):
            return name in filters(ipr, ifindex, hook)
        front_dev = cfg.front.decode() or front
        front_problem = (hook_problem(front_dev, cfg.front_ifindex, ("egress",), links, has_filter, name)
                         if cfg.front_ifindex else None)
        members = []
        for p in peers:
            problem = hook_problem(p["member"], p["ifindex"], ("ingress", "egress"), links, has_filter, name)
            members.append({"peer": p["name"], "device": p["member"], "ifindex": p["ifindex"],
                            "up": p["up"], "source": p["source"],
                            "hooked": problem is None, "problem": problem})
        out = {"front": front, "version": VERSION, "netns": mapsmod.netns_id(), "pin_dir": m.dir,
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
               "counters": {r.name.lower(): v for r, v in m.counters().items()},
               "monitor": watched(m)}  # a `wgbpf monitor` listening, or None
    from .daemon import read_status
    from .dataplane import forwarding_off
    out["daemon"] = read_status(front)
    out["forwarding_off"] = forwarding_off([front_dev] if cfg.front_ifindex else [p["member"] for p in peers])
    out["config"] = config_report(front, out["daemon"])
    return out


def config_report(front, dmn):
    """The config the instance should run and how the attached one differs:
    the running daemon's (its file; its command line, or the attached
    instance it adopted, are not compared), else <config dir>/<front>.toml
    if there is one. None: nothing to compare with."""
    from .daemon import attached_differences
    dmn = dmn or {}
    source = dmn.get("config") if dmn.get("state") in ("running", "detached") else None
    if source in ("attached", "command line"):
        return {"source": source}
    path = source or configmod.resolve_path(front, (), None)
    if path is None:
        return None
    try:
        want = configmod.build(front, (), path)
    except ConfigError as e:
        return {"path": path, "error": str(e)}
    if want.backend != "maps":
        return {"path": path, "error": f"backend {want.backend}: not this instance's (maps)"}
    return {"path": path, "differences": attached_differences(want)}


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
    if s.get("forwarding_off"):
        out.append(f"{s['front']}: forwarding off ({', '.join(s['forwarding_off'])}): "
                   f"traffic between peers is dropped")
    c = s.get("config") or {}
    if c.get("error"):
        out.append(f"{s['front']}: config {c['path']}: {c['error']}")
    for line in c.get("differences", ()):
        out.append(f"{s['front']}: differs from {c['path']}: {line}")
    return out


def namespace_status(front=None):
    """Status entries of this network namespace's instances (and of its
    allowedips daemons, which have no pins)."""
    from .daemon import allowedips_daemons
    single = allowedips_daemons()  # --backend allowedips: a daemon, no pins
    fronts = [front] if front else mapsmod.instances()
    res = []
    for f in fronts:
        if f in single and not os.path.isdir(mapsmod.pin_dir(f)):
            res.append({"front": f, "backend": "allowedips", "daemon": single[f]})
            continue
        try:
            res.append(instance_status(f))
        except UsageError as e:
            if front:
                raise
            res.append({"front": f, "error": e.message})  # one broken instance hides no other
    if not front:
        res += [{"front": f, "backend": "allowedips", "daemon": st} for f, st in sorted(single.items())
                if f not in fronts]
    return res


def find_namespaces(wanted):
    """{cookie: (label, path)} of the namespaces in `wanted` found by name
    in /run/netns, else by a process in them (/proc/PID/ns/net)."""
    def candidates():
        try:
            for n in sorted(os.listdir("/run/netns")):
                yield n, f"/run/netns/{n}"
        except OSError:
            pass
        for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
            yield f"pid {pid}", f"/proc/{pid}/ns/net"
    found, seen = {}, set()
    for label, path in candidates():
        if set(wanted) <= set(found):
            break
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            cookie = mapsmod.netns_id(path)
        except OSError:
            continue  # gone meanwhile, or not ours to see
        if cookie in wanted and cookie not in found:
            found[cookie] = (label, path)
    return found


def all_status():
    """Every namespace's status entries, each with its namespace: this
    one's read here, another's from a thread that joins it, one no name or
    process leads to listed from its pins alone."""
    from .daemon import run_namespaces
    here = mapsmod.netns_id()
    cookies = {ns for ns, _ in mapsmod.all_instances()} | run_namespaces() | {here}
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
                           for f in mapsmod.instances(ns)]
        else:
            entries = [{"front": f, "pin_dir": mapsmod.pin_dir(f, ns),
                        "error": f"network namespace {ns} not found (not in /run/netns, no process in it): "
                                 f"devices not checked; if it is gone, remove its stale pins "
                                 f"(rm -r {mapsmod.pin_dir(f, ns)})"}
                       for f in mapsmod.instances(ns)]
        res += [dict(e, netns=ns, netns_name=label, current=ns == here) for e in entries]
    for d in mapsmod.legacy_instances():
        res.append({"front": os.path.basename(d), "pin_dir": d, "netns": None, "netns_name": None,
                    "current": False,
                    "error": f"pinned by an older wgbpf, without a namespace in the path: its programs "
                             f"still run where it attached them; detach it with that version, or remove "
                             f"its wgbpf-{os.path.basename(d)} tc filters and rm -r {d}"})
    return res


@main.command()
@FRONT_OPT
@click.option("--all", "all_ns", is_flag=True,
              help="the instances of every network namespace, each with its namespace id and name")
@click.option("--check", is_flag=True,
              help="for monitoring: one line per problem (a device unhooked, a daemon failed) "
                   "and exit 2 if there is any, else one line and exit 0")
@JSON_OPT
def status(front=None, all_ns=False, check=False, as_json=False):
    """What is attached where, map fill levels, counters per reason.

    Only this network namespace's instances (--netns picks another), unless
    --all."""
    need_root()
    if all_ns and front is not None:
        fail("--all lists every instance; --front picks one of this namespace: give one of them")
    if front is not None:
        try:
            configmod.check_ifname(front, "--front")
        except ConfigError as e:
            fail(str(e))
    res = all_status() if all_ns else namespace_status(front)
    found = [line for s in res for line in problems(s)]

    def human(all_):
        if not all_:
            click.echo("no wgbpf instance attached (wgbpf attach FRONT --peer NAME=DEV ...)")
        shown_ns = None
        for s in all_:
            if all_ns and s["netns"] != shown_ns:
                shown_ns = s["netns"]
                if s["netns"] is None:
                    click.echo("== an older wgbpf's pins (no namespace)")
                else:
                    click.echo(f"== netns {s['netns']}" + (f" ({s['netns_name']})" if s["netns_name"] else "")
                               + (", this one" if s["current"] else ""))
            if "error" in s:
                click.echo(f"{s['front']}: {s['error']}")
                continue
            if s.get("backend") == "allowedips":
                dmn = s["daemon"]
                removal = {"flag": "single removals", "throwaway": "single removals through a throwaway peer",
                           "rewrite": "removal rewrites the peer's list"}.get(dmn.get("removal"),
                                                                             "removal not probed yet")
                click.echo(f"{s['front']}: allowedips backend ({dmn.get('device_kind')} WireGuard, {removal}); "
                           f"daemon {dmn['state']} (pid {dmn['pid']}), tables {dmn['tables']}, "
                           f"{dmn['prefixes']} prefixes, {dmn['allowedips_changes']} allowed-IP changes, "
                           f"{dmn['peer_rewrites']} list rewrites, {dmn['ecmp_prefixes']} ECMP prefixes "
                           f"given to one peer, {dmn['resyncs']} resyncs")
                if dmn.get("missing_peers"):
                    click.echo(f"peers not on the device: {', '.join(dmn['missing_peers'])}")
                if dmn.get("routes_per_peer"):
                    click.echo("routes per peer: " + ", ".join(f"{k} {v}" for k, v in sorted(dmn["routes_per_peer"].items())))
                if dmn.get("liveness"):
                    click.echo("liveness: " + "; ".join(liveness_text(k, v) for k, v in dmn["liveness"].items()))
                continue
            if s["members_only"]:
                where = "members only (no front)"
            else:
                where = (f"front {s['front_device']} egress "
                         + ("hooked" if s["front_hooked"] else f"UNHOOKED ({s['front_problem']})"))
            click.echo(f"{s['front']}: {where}; lookup {s['lookup']}"
                       + (f" (table {s['fib_table']})" if s["fib_table"] else "")
                       + f"; source check {s['source']}; no-route policy {s['no_route']}; pins {s['pin_dir']}")
            table([(x["peer"], x["device"], "up" if x["up"] else "down",
                    "hooked" if x["hooked"] else f"UNHOOKED ({x['problem']})") for x in s["members"]],
                  ["PEER", "MEMBER", "STATE", "HOOK"])
            click.echo("maps: " + ", ".join(f"{k} {v['entries']}/{v['max']}" for k, v in s["maps"].items()))
            click.echo("counters: " + ", ".join(f"{k} {v}" for k, v in s["counters"].items()))
            if s.get("forwarding_off"):
                click.echo(f"forwarding: OFF ({', '.join(k + '=0' for k in s['forwarding_off'])}): the kernel "
                           f"drops every packet between peers")
            c = s.get("config")
            if c and c.get("source") == "attached":
                click.echo("config: the daemon adopted the attached instance")
            elif c and c.get("source"):
                click.echo("config: the daemon's command line")
            elif c and c.get("error"):
                click.echo(f"config {c['path']}: {c['error']}")
            elif c and c["differences"]:
                click.echo(f"config {c['path']}: DIFFERS from the attached instance (the daemon attaches "
                           f"it at start and on reload): " + "; ".join(c["differences"]))
            elif c:
                click.echo(f"config {c['path']}: as attached")
            dmn = s.get("daemon")
            if not dmn:
                click.echo("daemon: never ran (wgbpf daemon)")
            else:
                ago = time.time() - dmn["last_sync"] if dmn.get("last_sync") else None
                click.echo(f"daemon: {dmn['state']} (pid {dmn['pid']}), tables {dmn['tables']}, "
                           f"{dmn['prefixes']} prefixes, {dmn['ignored']} ignored routes, "
                           f"{dmn['events']} events, {dmn['resyncs']} resyncs, {dmn['overruns']} overruns, "
                           f"{dmn.get('rehooks', 0)} re-hooks, "
                           f"event lag p50/p99/max {dmn.get('lag_ms_p50')}/{dmn.get('lag_ms_p99')}/{dmn['lag_ms_max']} ms"
                           + (f", last sync {ago:.0f}s ago ({dmn['last_sync_seconds']}s)" if ago is not None else ""))
                if dmn.get("routes_per_peer"):
                    click.echo("routes per peer: " + ", ".join(f"{k} {v}" for k, v in sorted(dmn["routes_per_peer"].items())))
                if dmn.get("liveness"):
                    click.echo("liveness: " + "; ".join(liveness_text(k, v) for k, v in dmn["liveness"].items()))

    def human_check(_):
        for line in found:
            click.echo(line)
        if not found:
            n = sum(1 for s in res if "front" in s)
            click.echo(f"ok: {n} instance{'' if n == 1 else 's'}, every device hooked")
    if check and as_json:
        emit({"ok": not found, "problems": found, "instances": res}, True, None)
    elif check:
        human_check(res)
    else:
        emit(res if front is None else res[0], as_json, human if front is None else lambda s: human([s]))
    if check and found:
        sys.exit(2)


if __name__ == "__main__":
    sys.exit(main())

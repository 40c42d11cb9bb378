# SPDX-License-Identifier: GPL-2.0-or-later
# rooms: the one command table (every command, option and help text, the man page's source) is
# kept in one file, as wg.c's is; the domain work lives in the modules it calls
"""wgbpf: steer WireGuard peers from routes with eBPF.

The command line only: it parses, calls and prints. What an instance is
and does (dump, lookup, status) comes from inspect.py, changes from
dataplane/, maps.py and daemon.py.

One shape for every command, as `wg` and `ip` have it: FRONT (the instance,
named by its front device) is the positional argument after the command's
own, optional while one instance is attached; `--peer` is NAME=DEV[,TAG...]
and `--source` a source check mode wherever they appear. Older spellings
still work, hidden: `--front FRONT`, and `lookup --source ADDR --peer NAME`
for `lookup ADDR --from NAME`. Choice lists come from the abi enums.

Every command reads or writes the instance pinned under
/sys/fs/bpf/wgbpf/<netns cookie>/<front>/ (maps.pin_dir): instances are per
network namespace, and every listing sees the current one's (--netns picks
another; `status --all` lists them all). Listings take --json.
"""
import json
import os
import signal
import sys
import time

import click

from . import abi, config, daemon, dataplane, inspect, instance, maps, monitor, report, routes, sync, top, wireguard
from .status import mark_died_starting
from .version import VERSION

# what a command may refuse with: each message names the bad input or state
DOMAIN_ERRORS = (config.ConfigError, maps.MapError, dataplane.AttachError, instance.InstanceError,
                 wireguard.WireGuardError, inspect.InspectError)


class UsageError(click.ClickException):
    """Printed as 'wgbpf: error: ...', exit 1; the data plane is untouched."""

    def format_message(self):
        return self.message

    def show(self, file=None):
        click.echo(f"wgbpf: error: {self.format_message()}", err=True)


def fail(msg):
    raise UsageError(msg)


def translate_errors(invoke):
    """The one place a domain error becomes a one-line usage error (exit 1,
    no traceback), for every command: wraps the command table's invoke."""
    def run(self, ctx):
        try:
            return invoke(self, ctx)
        except DOMAIN_ERRORS as e:
            raise UsageError(str(e)) from None
    return run


class CommandLineError(UsageError):
    """A malformed command line (unknown option, bad choice, missing or
    extra argument): one line too, exit 2 as click's own."""
    exit_code = 2

    def show(self, file=None):
        click.echo(f"wgbpf: error: {self.format_message()} (see {self.where} --help)", err=True)


class OneLine:
    """click's usage errors in one line (`wgbpf: error: ...`), not a usage
    block: a command line is bad input like any other."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            raise self._one_line(e, " ".join(filter(None, (parent and parent.command_path, info_name)))) from None

    def resolve_command(self, ctx, args):  # a group's: an unknown command
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            raise self._one_line(e, ctx.command_path) from None

    @staticmethod
    def _one_line(e, where):
        err = CommandLineError(e.format_message())
        err.where = where
        return err


class Command(OneLine, click.Command):
    """A command whose FRONT may also come as the older `--front FRONT`."""

    def parse_args(self, ctx, args):
        rest = super().parse_args(ctx, args)
        alias = ctx.meta.pop("wgbpf.front_alias", None)  # front_argument's option put it there
        if alias is not None:
            if ctx.params.get("front") not in (None, alias):
                fail(f"FRONT {ctx.params['front']!r} and --front {alias!r}: name one instance")
            ctx.params["front"] = alias
        return rest


class Commands(OneLine, click.Group):
    """The command table (wg's and xdp-filter's habit): subcommands are
    Commands, sub-tables Commands too, and every domain error is
    translated once, here."""
    command_class = Command
    group_class = type  # a sub-table is a Commands as well
    invoke = translate_errors(click.Group.invoke)


def emit(obj, as_json, human):
    if as_json:
        click.echo(json.dumps(obj, indent=2, sort_keys=False))
    else:
        human(obj)


def table(rows, headers):
    """Plain aligned columns, like `ip -br`."""
    for line in report.table_lines(rows, headers):
        click.echo(line)


def need_root():
    if os.geteuid() != 0:
        fail("needs root: the pinned maps are root's alone (0600 under /sys/fs/bpf/wgbpf)")


def orphaned(front):
    """Filters of `front` run on with its pins gone (and it recorded a
    build, so they can be known for its own)."""
    if not os.path.exists(instance.build_path(front)):
        return False
    with dataplane.iproute() as ipr:
        return front in dataplane.orphaned_filters(ipr, front)


def pick_front(front, orphans=False):
    """The instance to act on: the one named, or the only one there is.
    An empty name is an error, not "the only one": an unset shell variable
    must not detach the instance that happens to be there. `orphans`: one
    whose pins are gone while its filters run on counts (detach)."""
    if front is not None:
        config.check_ifname(front, "front")  # also keeps paths inside the pin root
        if not os.path.isdir(maps.pin_dir(front)) and not (orphans and orphaned(front)):
            have = ", ".join(maps.instances()) or "none"
            elsewhere = any(f == front for _, f in maps.all_instances())
            fail(f"no wgbpf instance {front!r} in this network namespace (attached: {have}); "
                 + ("one of that name is attached in another namespace (wgbpf status --all; "
                    "choose it with --netns)" if elsewhere else f"run `wgbpf attach {front} ...` first"))
        return front
    have = maps.instances()  # this namespace's only: others have their own
    if not have:
        fail("no wgbpf instance is attached in this network namespace; "
             "run `wgbpf attach FRONT --peer NAME=DEV ...` first")
    if len(have) > 1:
        fail(f"several instances are attached ({', '.join(have)}): name one (FRONT, or --front)")
    return have[0]


def stderr(msg):
    click.echo(msg, err=True)


def open_maps(front, readonly=False):
    need_root()
    front = pick_front(front)
    return front, maps.Maps.open(maps.pin_dir(front), readonly=readonly)


def marked(name, problem):
    """A recorded device for display: its name, marked when it is not the
    device recorded (never another device's name)."""
    if problem is None:
        return name
    return f"{name} ({'re-created' if 're-created' in problem else 'gone'})"


def choices(enum, skip=()):
    """An abi enum's members as the CLI spells them (lower case)."""
    return [m.name.lower() for m in enum if m not in skip]


_INSTANCE_OPTIONS = [
    click.option("--peer", "-p", "peers", multiple=True, metavar="NAME=DEV[,TAG...]",
                 help="a peer: its name, its member WireGuard device (daemon --backend allowedips: "
                      "its public key instead) and its tag addresses; repeat"),
    click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
                 help="TOML file with front, no_route, lookup, source and [[peer]] tables "
                      "(the daemon re-reads it on SIGHUP)"),
    click.option("--members-only", is_flag=True, default=None,
                 help="no front device: filter sources on the members alone (FRONT only names the instance)"),
    click.option("--no-route", type=click.Choice(choices(abi.Policy)), default=None,
                 help="packets on the front that no route claims: hand to the kernel (default) or drop"),
    click.option("--lookup", type=click.Choice(choices(abi.Lookup)), default=None,
                 help="lpm (default): prefixes in BPF LPM tries, from `route` and the daemon; "
                      "fib: the kernel's own table via bpf_fib_lookup, no prefix maps; "
                      "dir24: IPv4 compiled to DIR-24-8 arrays (two array reads, 48 MiB), IPv6 as lpm"),
    click.option("--fib-table", metavar="TABLE", default=None,
                 help="with --lookup fib: the table to look in (default main)"),
    click.option("--source", type=click.Choice(choices(abi.Source, skip=(abi.Source.DEFAULT,))), default=None,
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


def front_argument(f):
    """FRONT, the instance: the last positional argument of every command,
    optional while one instance is attached; `--front FRONT` (-f), the
    older spelling, still works (hidden: one shape in the help)."""
    def keep(ctx, param, value):
        if value is not None:
            ctx.meta["wgbpf.front_alias"] = value
    f = click.option("--front", "-f", "front_alias", metavar="FRONT", hidden=True, expose_value=False,
                     callback=keep)(f)
    return click.argument("front", required=False)(f)


class Seconds(click.FloatRange):
    """A FloatRange that refuses nan (it compares false with both bounds)."""
    name = "seconds"

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if v != v:
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return v


JSON_OPT = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


@click.group(cls=Commands, invoke_without_command=True,
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
    show what it does. With no command: status. Every command names its
    instance by FRONT, last; it may be left out while only one is attached.
    """
    if netns is not None:
        if netns.strip() in ("", ".", ".."):
            fail(f"--netns {netns!r}: name a network namespace (/run/netns/NAME) or give a path to one")
        try:
            dataplane.enter_netns(netns)
        except dataplane.AttachError as e:
            fail(f"--netns: {e}")
    if ctx.invoked_subcommand is None:
        ctx.invoke(status)


@main.command()
@front_argument
@instance_options
@click.option("--debug", is_flag=True, help="print the BPF instructions BCC generates")
@click.option("--force", is_flag=True,
              help="take over hooks where another wgbpf instance of FRONT (another pin root) runs")
@JSON_OPT
def attach(front, peers, config_path, members_only, no_route, lookup, fib_table, source,
           accept_table, debug, force, as_json):
    """Load the data plane and hook FRONT and its peers' members.

    Running it again with the same peers changes nothing; with other peers
    it updates in place, without dropping traffic.

    \b
    wgbpf attach wg0 --peer alice=wg-alice,fe80::1 --peer bob=wg-bob,fe80::2
    wgbpf attach --config /etc/wgbpf/wg0.toml
    """
    policy = config.parse_policy(no_route, "--no-route") if no_route else None
    settings = settings_args(lookup, fib_table, source, accept_table)
    path = config.resolve_path(front, peers, config_path)
    if path is None and not peers and front and os.path.isdir(maps.pin_dir(front)):
        # no peers given, no config file: attach again what is attached
        # (after an upgrade: its new programs), with what the line changes
        need_root()
        cfg = config.adopt(front, members_only, policy, settings)
    elif path is None and not peers and front:
        fail(f"no peers: give --peer NAME=MEMBER_DEV[,TAG...] or --config FILE, "
             f"or write {config.default_path(front)}")
    else:
        cfg = config.build(front, peers, path, members_only, policy, **settings)
    if cfg.backend == "allowedips":
        fail(f"{path}: backend \"allowedips\" has no BPF data plane to attach; "
             f"run `wgbpf daemon --config {path}` (it drives {cfg.front}'s AllowedIPs)")
    need_root()
    log = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    # one writer at a time: another attach, a detach, the daemon's sync
    inst = instance.Instance(cfg.front, log)
    with inst.writing("attached"):  # the daemon reopens the maps and resyncs
        res = dataplane.attach(cfg, log=log, debug=debug, force=force)
    res["daemon_told"] = inst.told

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
        "lookup": config.parse_lookup(lookup, "--lookup") if lookup else None,
        "fib_table": config.parse_table(fib_table, "--fib-table") if fib_table is not None else None,
        "source": config.parse_source(source, "--source") if source else None,
        "accept_table": config.parse_table(accept_table, "--accept-table") if accept_table is not None else None,
    }


@main.command()
@front_argument
@JSON_OPT
def detach(front, as_json):
    """Remove the filters and pins of FRONT; traffic falls back to the kernel."""
    need_root()
    front = pick_front(front, orphans=True)
    with instance.Instance(front, stderr).writing():
        res = dataplane.detach(front)
        res["run_files_removed"] = instance.remove_run_files(front)
    emit(res, as_json, lambda r: click.echo(f"{r['front']}: detached from {r['devices']} devices, pins removed"))


@main.group()
def route():
    """Edit prefix -> peer entries (IPv4 and IPv6, ECMP)."""


def peer_names(text):
    """PEER[,PEER...] checked before any map is opened."""
    given = [n.strip() for n in text.split(",")]
    if not any(given):
        fail(f"{text!r}: name at least one peer")
    if not all(given):
        fail(f"{text!r}: an empty peer name (a comma too many)")
    if len(given) > abi.MAX_ECMP:
        fail(f"{text!r}: a route names at most {abi.MAX_ECMP} peers (ECMP), not {len(given)}")
    if len(set(given)) != len(given):
        fail(f"{text!r}: a peer is named twice")
    return given


def check_metrics_file(path):
    """--metrics-file: refused now, not after attach and the first sync."""
    if not path or not path.isprintable():
        fail(f"--metrics-file {path!r}: not a file name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        fail(f"--metrics-file {path!r}: directory {directory!r} does not exist")
    if os.path.isdir(path):
        fail(f"--metrics-file {path!r} is a directory")


ACCEPT_OPT = click.option("--accept", is_flag=True,
                          help="the accept table of the feasible source check, not the steering one")


def map_table(accept):
    return "accept" if accept else "routes"


@route.command("add")
@click.argument("prefix")
@click.argument("peers", metavar="PEER[,PEER...]")
@front_argument
@ACCEPT_OPT
def route_add(prefix, peers, front, accept):
    """Send PREFIX to PEERS (several: ECMP by flow hash); replaces an entry."""
    net = config.parse_prefix(prefix, "PREFIX")
    wanted = peer_names(peers)
    front, m = open_maps(front)
    # as a writer: the daemon's event writes wait, and then read the maps back
    # its view of the maps, and dir24's, is stale after this
    with m, instance.Instance(front, stderr).writing("maps written"):
        m.tries.set_route(net, inspect.resolve_peers(m, wanted), abi.Origin.STATIC, trie=map_table(accept))
        if net.version == 4 and not accept:
            m.dir24.compile()
    click.echo(f"{net} -> {peers}" + (" (accept)" if accept else ""))


@route.command("del")
@click.argument("prefix")
@front_argument
@ACCEPT_OPT
def route_del(prefix, front, accept):
    """Remove the entry for exactly PREFIX."""
    net = config.parse_prefix(prefix, "PREFIX")
    front, m = open_maps(front)
    # told, the daemon puts a kernel route for the prefix in its place
    with m, instance.Instance(front, stderr).writing("maps written"):
        if m.tries.get_route(net, map_table(accept)) is None:
            fail(f"no entry for {net}" + (" in the accept table" if accept else ""))
        m.tries.del_route(net, map_table(accept))
        if net.version == 4 and not accept:
            m.dir24.compile()
    click.echo(f"{net} removed")


@main.command()
@front_argument
@JSON_OPT
def dump(front, as_json):
    """Every prefix with its peers, and per-peer counters."""
    front, m = open_maps(front, readonly=True)
    with m:
        res = inspect.dump(m, front)

    def human(r):
        table([(x["prefix"], x["set"], weighed_peers(x), x["origin"]) for x in r["routes"]],
              ["PREFIX", "SET", "PEERS", "ORIGIN"])
        click.echo()
        if "accept" in r:
            table([(x["prefix"], x["set"], weighed_peers(x), x["origin"]) for x in r["accept"]],
                  ["ACCEPT PREFIX", "SET", "PEERS", "ORIGIN"])
            click.echo()
        table([(p["name"], marked(p["member"], p["member_problem"]), "up" if p["up"] else "down",
                ",".join(p["tags"]) or "-",
                p["tx_packets"], p["tx_bytes"], p["rx_packets"], p["rx_bytes"], p["spoofed"])
               for p in r["peers"]],
              ["PEER", "MEMBER", "STATE", "TAGS", "TX_PKTS", "TX_BYTES", "RX_PKTS", "RX_BYTES", "SPOOFED"])
    emit(res, as_json, human)


def weighed_peers(row):
    """A listing's peers: "alice,bob", or "alice 3,bob 1" when weighed."""
    if not row["peers"]:
        return "(no peer)"
    if len(set(row["weights"])) > 1:
        return ",".join(f"{p} {w}" for p, w in zip(row["peers"], row["weights"]))
    return ",".join(row["peers"])


@main.command()
@click.argument("address", required=False)
@front_argument
@click.option("--from", "from_peer", metavar="PEER",
              help="the source check instead: what PEER's member does with a packet from ADDRESS")
@click.option("--source", "source_alias", metavar="ADDR", hidden=True)  # older: --source ADDR --peer NAME
@click.option("--peer", "peer_alias", metavar="NAME", hidden=True)
@JSON_OPT
def lookup(address, front, from_peer, source_alias, peer_alias, as_json):
    """The longest match for ADDRESS, its peers, and what the front does;
    with --from PEER, what PEER's member decides for a packet from ADDRESS,
    and why.

    \b
    wgbpf lookup 10.1.2.3
    wgbpf lookup 10.2.0.9 --from alice
    """
    where = "ADDRESS"
    if source_alias is not None:
        if address is not None:
            fail("give the address once: ADDRESS (or the older --source ADDR)")
        address, where = source_alias, "--source"
    if peer_alias is not None:
        if from_peer not in (None, peer_alias):
            fail("give the peer once: --from PEER (or the older --peer NAME)")
        from_peer = peer_alias
    if address is None:
        fail("give an ADDRESS (and --from PEER for the source check)")
    if source_alias is not None and from_peer is None:
        fail("the source check takes a peer: ADDRESS --from PEER")
    if from_peer is not None and not from_peer.strip():
        fail("--from: name a peer")
    addr = config.parse_address(address, where)
    if from_peer is None:  # a destination, as `route add` says it (as a source: a martian, explained)
        config.check_not_v4_in_v6(addr, address, where)
    front, m = open_maps(front, readonly=True)
    with m:
        res = inspect.explain_source(m, addr, from_peer) if from_peer is not None else inspect.explain(m, addr)

    def human_source(r):
        click.echo(f"from {r['source']} via {r['peer']}: {r['verdict']} "
                   f"(source check {r['mode']}, lookup {r['lookup']})")
        click.echo(f"  {r['step']}")

    def human(r):
        click.echo(f"{r['address']}: {r['rule']}" + (f" {r['prefix']}" if r["prefix"] else ""))
        if r.get("set_text"):
            click.echo(f"  {r['set_text']}")
        if r["peers"]:
            click.echo(f"  peers: {', '.join(r['peers'])}" + (f" (down: {', '.join(r['down'])})" if r.get("down") else ""))
        click.echo(f"  {r['verdict']}")
    emit(res, as_json, human_source if from_peer else human)


@main.command("top")
@front_argument
@click.option("--interval", "-d", type=Seconds(min=0.1), default=1.0, show_default=True,
              help="seconds between samples")
@click.option("--once", is_flag=True, help="print one sample (rates over --interval) and exit")
@JSON_OPT
def top_command(front, interval, once, as_json):
    """Per-peer rates, live: packets and bits per second each way, drops,
    state and last handshake, prefixes; busiest first. q quits."""
    if as_json and not once:
        fail("--json prints one sample: use it with --once")
    if not once and not sys.stdout.isatty():
        fail("the live view needs a terminal: use --once (and --json) in scripts")
    front, m = open_maps(front, readonly=True)
    with m:
        sampler = top.Sampler(m, front)
        if once:
            sampler.sample()
            time.sleep(interval)
            emit(sampler.sample(), as_json, lambda s: click.echo("\n".join(top.lines(s))))
        else:
            top.run_curses(sampler, interval)


@main.command("monitor")
@front_argument
@click.option("--all", "all_packets", is_flag=True, help="steered and passed packets too, not only drops")
@click.option("--count", "-c", type=click.IntRange(min=1), help="exit after N packets")
@JSON_OPT
def monitor_command(front, all_packets, count, as_json):
    """Dropped packets as they happen, one line each: time, device,
    source > destination, peer, reason. The data plane reports them only
    while this runs (at most 1000 a second per CPU)."""
    front, m = open_maps(front)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave through the finally below
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(0))
    with m:
        try:
            listener = monitor.Listener(m, abi.Watch.ALL if all_packets else abi.Watch.DROPS)
        except monitor.MonitorError as e:
            fail(f"{front}: {e}")
        seen = 0
        try:
            peer_labels, wall = monitor.Names(m), monitor.mono_to_wall()
            click.echo(f"wgbpf monitor: watching {front} for {'every packet' if all_packets else 'drops'}; "
                       f"Ctrl-C stops", err=True)
            while count is None or seen < count:
                for e in listener.events():
                    event = monitor.describe(e, peer_labels, wall)
                    click.echo(json.dumps(event) if as_json else monitor.line(event))
                    seen += 1
                    if count is not None and seen >= count:
                        break
                sys.stdout.flush()
        except (KeyboardInterrupt, BrokenPipeError):
            pass
        finally:
            held, lost = listener.held_back()
            listener.close()
            if held - listener.held0 or lost - listener.lost0:
                click.echo(f"wgbpf monitor: {held - listener.held0} packets not shown (rate limit), "
                           f"{lost - listener.lost0} lost (ring buffer full)", err=True)


def route_filter(tables, protos, realms):
    """--table/--proto/--realm -> the daemon's sync.Filter."""
    try:
        return sync.Filter([routes.table_id(t) for t in (tables or ("main",))],
                           [routes.protocol_id(p) for p in protos], realms)
    except ValueError as e:  # names the table or protocol it does not know
        fail(str(e))


@main.command("daemon")
@front_argument
@instance_options
@click.option("--table", "-t", "tables", multiple=True, metavar="TABLE",
              help="routing table to follow: main, a number or a name from rt_tables; "
                   "repeat for several (the first wins a tie); default main")
@click.option("--proto", "protos", multiple=True, metavar="PROTO",
              help="only routes of this protocol (bird, babel, static, a number); repeat")
@click.option("--realm", "realms", multiple=True, type=click.IntRange(0, 0xFFFF), metavar="N",
              help="only routes of this realm (0-65535, `ip route ... realm N`); repeat")
@click.option("--metrics-file", type=click.Path(dir_okay=False),
              help="write Prometheus text metrics here (node_exporter textfile); off by default")
@click.option("--rcvbuf", type=click.IntRange(min=1), default=32 << 20, show_default=True, hidden=True,
              help="netlink receive buffer in bytes")
@click.option("--backend", type=click.Choice(config.BACKENDS), default=None,
              help="maps (default): the BPF maps of FRONT's instance; allowedips: no BPF, FRONT is "
                   "one multi-peer WireGuard device whose peers' AllowedIPs follow the routes "
                   "(--peer NAME=PUBLIC_KEY,TAG...)")
@click.option("--dead-after", metavar="SECONDS",
              help="a peer we send to and hear nothing from (not even a keepalive) for SECONDS is "
                   "dead: down in the peers map (ECMP falls back) until it is heard again; off by "
                   "default (docs/liveness.md)")
@click.option("--probe", metavar="SECONDS",
              help="an ICMP echo to each peer's first tag, out of its member, every SECONDS: RTT, "
                   "jitter and loss in status and metrics (per peer: probe = S in the config); off "
                   "by default")
@click.option("--verbose", "-v", is_flag=True,
              help="log each map change a route event makes, with the time to the millisecond")
@click.option("--gone-after", type=Seconds(min=0), default=30.0, show_default=True,
              metavar="SECONDS",
              help="exit (status 1: systemd restarts it) once the front, or the --netns namespace, "
                   "has been gone for SECONDS on end; 0: never")
def daemon_command(front, peers, config_path, members_only, no_route, lookup, fib_table, source,
                   accept_table, tables, protos, realms, metrics_file, rcvbuf, backend, dead_after,
                   probe, verbose, gone_after):
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
    follow = route_filter(tables, protos, realms)
    if metrics_file is not None:
        check_metrics_file(metrics_file)
    policy = config.parse_policy(no_route, "--no-route") if no_route else None
    settings = settings_args(lookup, fib_table, source, accept_table)
    if backend:
        settings["backend"] = backend
    if dead_after is not None:
        settings["dead_after"] = config.parse_dead_after(dead_after, "--dead-after")
    if probe is not None:
        settings["probe"] = config.parse_probe(probe, "--probe")
    build = config.config_builder(front, peers, config_path, members_only, policy, settings, log=daemon.stderr_log)
    cfg = build(quiet=True)  # validate before touching anything
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

    runner = daemon.Daemon(build, follow, daemon.stderr_log, metrics_file=metrics_file, rcvbuf=rcvbuf,
                           progress=progress if sys.stderr.isatty() else None)
    runner.verbose, runner.gone_after = verbose, gone_after
    netns = click.get_current_context().find_root().params.get("netns")
    if netns:
        runner.netns_path = netns if "/" in netns else f"/run/netns/{netns}"
    runner.run()


@main.command()
@front_argument
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
        fail("--all lists every instance; FRONT picks one of this namespace: give one of them")
    if front is not None:
        config.check_ifname(front, "front")
        if front not in instance.allowedips_daemons():  # those have no pins
            pick_front(front)
    res = mark_died_starting(inspect.all_status() if all_ns else inspect.namespace_status(front))
    found = [line for s in res for line in inspect.problems(s) + report.start_problems(s)]

    def human(all_):
        for line in report.status_lines(all_, all_ns):
            click.echo(line)

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

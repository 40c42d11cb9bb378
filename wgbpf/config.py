# SPDX-License-Identifier: GPL-2.0-or-later
"""Peers from the command line and from TOML, validated with errors that name
the bad field and quote the bad value.

    front = "wg0"            # the device routes point at
    members_only = false     # true: no front; filter sources on members alone
    no_route = "pass"        # or "drop": packets on the front no route claims
    lookup = "lpm"           # "fib": steer by the kernel's own table; "dir24":
                             # IPv4 by DIR-24-8 arrays (fastest, 48 MiB)
    fib_table = "main"       # fib: the table to look in
    source = "strict"        # source check: strict, feasible, loose, off
    accept_table = 200       # feasible: the table of accepted paths (lpm: the
                             # daemon copies it to the accept maps; fib: read live)
    dead_after = 15          # daemon: a peer we send to and hear nothing from for
                             # this many seconds is dead (docs/liveness.md); off
                             # unless set
    probe = 0.5              # daemon: an ICMP echo to each peer's first tag this
                             # often, for RTT and loss (wgbpf/probes.py); off unless set

    [[peer]]
    name = "alice"
    member = "wg-alice"      # this peer's own WireGuard device
    tags = ["fe80::1", "10.255.0.1"]   # addresses routes name the peer by
    source = "loose"         # this peer's own source check (default: the global)
    dead_after = 2           # this peer's own (persistent-keepalive 1 on its side);
                             # "off": not watched
    probe = 0.2              # this peer's own probe interval; "off": no probes

On the command line: --peer alice=wg-alice,fe80::1,10.255.0.1[,source=loose][,dead_after=2][,probe=0.2]

With backend = "allowedips" (`wgbpf daemon --backend allowedips wg0`) the
instance is one multi-peer WireGuard device and a peer is named by its
public key instead of a member device:

    [[peer]]
    name = "alice"
    public_key = "base64 key, as `wg show` prints it"
    tags = ["10.255.0.1"]

    --peer alice=PUBLIC_KEY,10.255.0.1
"""
import base64
import binascii
import dataclasses
import ipaddress
import math
import os
import re
import tomllib

from . import abi, files, maps, probes
from .maps import MapError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,%d}" % (abi.NAME_LEN - 2))
# What Linux accepts as a device name (dev_valid_name), less ',' which
# separates the tags of --peer.
IFNAME_RE = re.compile(r"[^\s/:,\x00]+")
IFNAMSIZ = 16


class ConfigError(ValueError):
    pass


def config_dir():
    """Where `<front>.toml` is looked for when neither --peer nor --config
    is given: /etc/wgbpf, or $WGBPF_CONFIG_DIR (tests use their own)."""
    return os.environ.get("WGBPF_CONFIG_DIR") or "/etc/wgbpf"


def default_path(front):
    return os.path.join(config_dir(), f"{front}.toml")


def resolve_path(front, peer_args, path):
    """The config file to read: --config, else <config dir>/<front>.toml
    when no --peer is given and that file exists; None: the peers come
    from --peer, or (the daemon) from the instance as attached."""
    if path or peer_args or not front:
        return path
    default = default_path(front)
    return default if os.path.lexists(default) else None


def from_attached(front, c, peers, tags):
    """The Config an instance was attached with, read back from its maps:
    `c` the abi.Config, `peers` {id: abi.Peer}, `tags` {address: id}."""
    by_peer = {}
    for t, peer_id in sorted(tags.items(), key=lambda kv: (kv[0].version, kv[0])):
        by_peer.setdefault(peer_id, []).append(t)
    return Config(
        front=front,
        peers=[PeerConfig(p.name.decode(), p.member.decode(), by_peer.get(peer_id, []), abi.Source(p.source))
               for peer_id, p in sorted(peers.items())],
        members_only=not c.front_ifindex, no_route=abi.Policy(c.no_route), lookup=abi.Lookup(c.lookup),
        fib_table=c.fib_table, source=abi.Source(c.source or abi.Source.STRICT),
        accept_table=c.accept_table)


def differences(attached, wanted):
    """What attaching `wanted` would change in the instance `attached`
    (both Configs, maps backend), one line each; [] when they agree."""
    out = []
    for key in ("members_only", "no_route", "lookup", "fib_table", "source", "accept_table"):
        a, w = getattr(attached, key), getattr(wanted, key)
        if a != w:
            def show(v):
                return v.name.lower() if hasattr(v, "name") else str(v).lower()
            out.append(f"{key}: attached {show(a)}, config {show(w)}")
    have = {p.name: p for p in attached.peers}
    want = {p.name: p for p in wanted.peers}
    for name in sorted(set(have) | set(want)):
        a, w = have.get(name), want.get(name)
        if a is None:
            out.append(f"peer {name}: in the config, not attached")
        elif w is None:
            out.append(f"peer {name}: attached, not in the config")
        else:
            if a.member != w.member:
                out.append(f"peer {name}: member attached {a.member}, config {w.member}")
            if set(a.tags) != set(w.tags):
                out.append(f"peer {name}: tags attached {','.join(map(str, a.tags)) or '-'}, "
                           f"config {','.join(map(str, w.tags)) or '-'}")
            if a.source != w.source:
                out.append(f"peer {name}: source attached {a.source.name.lower()}, "
                           f"config {w.source.name.lower()}")
    return out


@dataclasses.dataclass
class PeerConfig:
    name: str
    member: str = None       # maps backend: the peer's own WireGuard device
    tags: list = dataclasses.field(default_factory=list)
    source: abi.Source = abi.Source.DEFAULT
    public_key: bytes = None  # allowedips backend: the peer on the one device
    dead_after: float = None  # liveness: seconds; None: the instance's; 0: not watched
    probe: float = None       # probes: seconds; None: the instance's; 0: off


@dataclasses.dataclass
class Config:
    front: str
    peers: list
    members_only: bool = False
    no_route: abi.Policy = abi.Policy.PASS
    lookup: abi.Lookup = abi.Lookup.LPM
    fib_table: int = 0       # 0: main
    source: abi.Source = abi.Source.STRICT
    accept_table: int = 0    # 0: none
    backend: str = "maps"    # or "allowedips": drive one device's AllowedIPs
    dead_after: float = None  # liveness (daemon): seconds; None: off
    probe: float = None       # probes (daemon): seconds; None: off


BACKENDS = ("maps", "allowedips")


MAPPED = ipaddress.ip_network("::ffff:0:0/96")
COMPAT = ipaddress.ip_network("::/96")


def check_unscoped(text, where):
    # The data plane keys addresses by their bytes alone: a zone would be
    # dropped on the way in, and `lookup` would explain a different packet.
    if "%" in str(text):
        raise ConfigError(f"{where}: {text!r}: scoped addresses (%zone) are not supported; "
                          f"write the address without the %zone")


def check_not_v4_in_v6(net, text, where):
    """Refuse IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d)
    addresses and prefixes: no packet carries them as a real source (the data
    plane drops such sources as martians), so the IPv4 form is meant."""
    net = ipaddress.ip_network(net)
    if net.version != 6 or net.prefixlen < 96:
        return
    v4 = ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    v4 = v4.network_address if v4.prefixlen == 32 else v4
    if net.subnet_of(MAPPED):
        raise ConfigError(f"{where}: {text!r} is IPv4-mapped IPv6 (::ffff:0:0/96): "
                          f"write the IPv4 form, {v4}")
    if net.subnet_of(COMPAT) and not (net.prefixlen == 128 and int(net.network_address) <= 1):
        raise ConfigError(f"{where}: {text!r} is IPv4-compatible IPv6 (::/96, deprecated): "
                          f"write the IPv4 form, {v4}")


def parse_address(text, where):
    """One IPv4 or IPv6 address, without a zone."""
    s = str(text).strip()
    check_unscoped(s, where)
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not an IPv4 or IPv6 address") from None


def parse_prefix(text, where):
    """An IPv4 or IPv6 prefix, without a zone, not IPv4 in IPv6, and no
    host bits: as iproute2, 10.7.0.1/8 is refused, not taken for 10.0.0.0/8
    (an operator's entry that wide would override the kernel's /8)."""
    s = str(text).strip()
    check_unscoped(s, where)
    try:
        net = ipaddress.ip_network(s, strict=False)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not an IPv4/IPv6 prefix") from None
    if "/" in s and net.network_address != ipaddress.ip_address(s.partition("/")[0]):
        raise ConfigError(f"{where}: {text!r} has host bits set (the prefix would be {net})")
    check_not_v4_in_v6(net, text, where)
    return net


def parse_tag(text, where):
    """A tag: one host address, optionally written as /32 or /128."""
    s = str(text).strip()
    addr, slash, plen = s.partition("/")
    if "%" in addr:
        raise ConfigError(f"{where}: {text!r}: scoped addresses are not supported; "
                          f"write the tag without a %zone")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not an IP address") from None
    if slash and plen != str(ip.max_prefixlen):
        raise ConfigError(f"{where}: {text!r}: a tag is one address (/{ip.max_prefixlen}), not a prefix")
    if ip.is_multicast or ip.is_unspecified or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise ConfigError(f"{where}: {text!r}: a tag must be a unicast address")
    if ip.is_loopback:
        raise ConfigError(f"{where}: {text!r}: a tag is a peer's address, not loopback")
    check_not_v4_in_v6(ip, text, where)
    return ip


def check_name(name, where):
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}: {name!r} is not a peer name "
                          f"(letters, digits, '_', '.', '-'; at most {abi.NAME_LEN - 1})")
    return name


def parse_key(text, where):
    """A WireGuard public key as `wg` prints it: base64 of 32 bytes."""
    try:
        key = base64.b64decode(str(text).strip(), validate=True)
    except (binascii.Error, ValueError):
        key = None
    if key is None or len(key) != 32:
        raise ConfigError(f"{where}: {text!r} is not a WireGuard public key (44 characters of base64)")
    return key


def looks_like_key(text):
    # no interface name is this long (IFNAMSIZ), so there is no ambiguity
    return len(text) == 44 and text.endswith("=")


def check_ifname(name, where):
    if (not isinstance(name, str) or not IFNAME_RE.fullmatch(name) or name in (".", "..")
            or len(name.encode()) >= IFNAMSIZ):
        raise ConfigError(f"{where}: {name!r} is not an interface name "
                          f"(1-15 bytes, no '/', ':', ',' or spaces, not '.' or '..')")
    return name


def parse_peer_arg(text):
    """NAME=MEMBER[,TAG...] or NAME=PUBLIC_KEY[,TAG...] from --peer."""
    where = f"--peer {text!r}"
    name, eq, rest = text.partition("=")
    if not eq or not rest:
        raise ConfigError(f"{where}: expected NAME=MEMBER_DEV[,TAG...] (or NAME=PUBLIC_KEY[,TAG...])")
    fields = rest.split(",")
    first = fields[0].strip()
    if looks_like_key(first):
        peer = PeerConfig(check_name(name.strip(), where), public_key=parse_key(first, where))
    else:
        peer = PeerConfig(check_name(name.strip(), where), check_ifname(first, where))
    for f in (f.strip() for f in fields[1:]):
        if not f:  # `alice=wg-a,` or `,,`: a tag left out by mistake, most likely
            raise ConfigError(f"{where}: an empty field (a comma too many, or a tag missing)")
        if f.startswith("source="):
            peer.source = parse_source(f[len("source="):], where)
        elif f.startswith("dead_after="):
            peer.dead_after = parse_dead_after(f[len("dead_after="):], where, off=True)
        elif f.startswith("probe="):
            peer.probe = parse_probe(f[len("probe="):], where)
        else:
            peer.tags.append(parse_tag(f, where))
    return peer


def parse_source(value, where):
    try:
        mode = abi.Source[str(value).upper()]
    except KeyError:
        mode = None
    if mode is None or mode == abi.Source.DEFAULT:
        raise ConfigError(f"{where}: {value!r} is not a source check (strict, feasible, loose or off)")
    return mode


MIN_DEAD_AFTER = 1.0  # WireGuard's shortest keepalive: below it a live peer looks dead
MAX_DEAD_AFTER = 86400.0


def parse_dead_after(value, where, off=False):
    """Seconds for the liveness rule: finite, from MIN_DEAD_AFTER to
    MAX_DEAD_AFTER; with `off`, "off" (0.0: this peer is not watched)."""
    if off and value == "off":
        return 0.0
    try:
        if isinstance(value, bool):
            raise ValueError
        d = float(value)
    except (TypeError, ValueError):
        d = None
    if d is None or not math.isfinite(d) or not MIN_DEAD_AFTER <= d <= MAX_DEAD_AFTER:
        raise ConfigError(f"{where}: {value!r} is not a dead-after time: give seconds from "
                          f"{MIN_DEAD_AFTER:g} (WireGuard's shortest keepalive) to {MAX_DEAD_AFTER:g}"
                          + (', or "off"' if off else ""))
    return d


def parse_probe(value, where):
    """A probe interval (probes.parse_interval) as a ConfigError; "off" or
    0: 0.0 (no probes)."""
    try:
        return probes.parse_interval(value, where) or 0.0
    except probes.ProbeError as e:
        raise ConfigError(str(e)) from None


def probe_interval(cfg, peer):
    """A peer's probe interval in seconds, or None when it is not probed."""
    p = peer.probe if peer.probe is not None else cfg.probe
    return p or None


def dead_after(cfg, peer):
    """A peer's dead-after seconds, or None when it is not watched."""
    d = peer.dead_after if peer.dead_after is not None else cfg.dead_after
    return d or None


def parse_lookup(value, where):
    try:
        return abi.Lookup[str(value).upper()]
    except KeyError:
        raise ConfigError(f"{where}: {value!r} is not a lookup mode (lpm, fib or dir24)") from None


def parse_table(value, where):
    """A routing table for the FIB lookups: number or name (main: 0)."""
    from .routes import table_id
    try:
        t = table_id(value)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    return 0 if t == 254 else t


def parse_backend(value, where):
    if value not in BACKENDS:
        raise ConfigError(f"{where}: {value!r} is not a backend (maps or allowedips)")
    return value


def parse_policy(value, where):
    try:
        return abi.Policy[str(value).upper()]
    except KeyError:
        raise ConfigError(f"{where}: {value!r} is not a policy (pass or drop)") from None


def printable(path):
    """A path as errors print it: quoted when it holds a newline or another
    control character, so that the error stays one line."""
    return path if path.isprintable() else repr(path)


def load_toml(path):
    """The TOML file as (front, members_only, no_route, peers); None for unset."""
    name = printable(path)  # in errors
    # the config dir (/etc/wgbpf) is read implicitly, as root: checked as
    # the run dir is, and its files not followed through a symlink
    inside = os.path.dirname(os.path.abspath(path)) == os.path.abspath(config_dir())
    if inside and (why := files.unsafe_dir(config_dir())):
        raise ConfigError(f"{name}: {why}")
    try:
        text = files.read_bounded(path, nofollow=inside).decode()
        data = tomllib.loads(text)
    except OSError as e:
        raise ConfigError(f"{name}: {e.strerror}") from None
    except files.FileError as e:
        raise ConfigError(f"{name}: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name}: not valid TOML: not UTF-8 ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise ConfigError(f"{name}: not valid TOML: nested too deeply") from None
    except ValueError as e:  # TOMLDecodeError, and int() refusing a 5000-digit number
        raise ConfigError(f"{name}: not valid TOML: {e}") from None
    known = {"front", "members_only", "no_route", "lookup", "fib_table", "source", "accept_table",
             "backend", "dead_after", "probe", "peer"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{name}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
    front = data.get("front")
    if front is not None:
        check_ifname(front, f"{name}: front")
    members_only = data.get("members_only")
    if members_only is not None and not isinstance(members_only, bool):
        raise ConfigError(f"{name}: members_only: {members_only!r} is not true or false")
    no_route = data.get("no_route")
    if no_route is not None:
        no_route = parse_policy(no_route, f"{name}: no_route")
    settings = {}
    for key, parse in (("lookup", parse_lookup), ("fib_table", parse_table),
                       ("source", parse_source), ("accept_table", parse_table),
                       ("backend", parse_backend), ("dead_after", parse_dead_after),
                       ("probe", parse_probe)):
        if key in data:
            settings[key] = parse(data[key], f"{name}: {key}")
    peers = []
    raw = data.get("peer", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{name}: peer: write peers as [[peer]] tables")
    for i, p in enumerate(raw):
        where = f"{name}: peer[{i}]"
        if not isinstance(p, dict):
            raise ConfigError(f"{where}: write peers as [[peer]] tables")
        for key in p:
            if key not in ("name", "member", "public_key", "tags", "source", "dead_after", "probe"):
                raise ConfigError(f"{where}: unknown field {key!r} "
                                  f"(known: dead_after, member, name, probe, public_key, source, tags)")
        if "name" not in p:
            raise ConfigError(f"{where}: missing field 'name'")
        if "member" not in p and "public_key" not in p:
            raise ConfigError(f"{where}: missing field 'member' (or 'public_key' for the allowedips backend)")
        tags = p.get("tags", [])
        if not isinstance(tags, list):
            raise ConfigError(f"{where}.tags: {tags!r} is not a list of addresses")
        peers.append(PeerConfig(
            check_name(p["name"], f"{where}.name"),
            check_ifname(p["member"], f"{where}.member") if "member" in p else None,
            [parse_tag(t, f"{where}.tags[{j}]") for j, t in enumerate(tags)],
            parse_source(p["source"], f"{where}.source") if "source" in p else abi.Source.DEFAULT,
            parse_key(p["public_key"], f"{where}.public_key") if "public_key" in p else None,
            parse_dead_after(p["dead_after"], f"{where}.dead_after", off=True) if "dead_after" in p else None,
            parse_probe(p["probe"], f"{where}.probe") if "probe" in p else None))
    return front, members_only, no_route, peers, settings


def build(front=None, peer_args=(), path=None, members_only=None, no_route=None, **settings):
    """One validated Config from a TOML file and/or the command line.

    The command line wins over the file for front/members_only/no_route;
    peers from both are joined, and a peer named twice is an error.
    """
    f_front = f_members_only = f_no_route = None
    peers = []
    f_settings = {}
    if path:
        f_front, f_members_only, f_no_route, peers, f_settings = load_toml(path)
    peers = peers + [parse_peer_arg(a) for a in peer_args]
    front = front or f_front
    if not front:
        raise ConfigError("no front: name it as FRONT or `front = ...` in the config"
                          " (with --members-only it only names the instance)")
    check_ifname(front, "front")
    cfg = Config(front=front, peers=peers,
                 members_only=bool(members_only if members_only is not None else f_members_only),
                 no_route=no_route if no_route is not None else (f_no_route or abi.Policy.PASS))
    for key, value in {**f_settings, **{k: v for k, v in settings.items() if v is not None}}.items():
        setattr(cfg, key, value)
    validate(cfg)
    return cfg


def _claim(owners, key, name, what, why=""):
    """Peer `name` gives `key` (a public key, member device, tag): refused
    when another peer gave it already."""
    if owners.get(key, name) != name:
        raise ConfigError(f"{what} is given for both {owners[key]!r} and {name!r}{why}")
    owners[key] = name


def validate(cfg):
    if cfg.fib_table and cfg.lookup != abi.Lookup.FIB:
        raise ConfigError(f"fib_table {cfg.fib_table}: set lookup = \"fib\" to look in a kernel table")
    if not cfg.peers:
        raise ConfigError("no peers: give --peer NAME=MEMBER_DEV[,TAG...] or [[peer]] in --config")
    if len(cfg.peers) > abi.MAX_PEERS - 1:
        raise ConfigError(f"{len(cfg.peers)} peers: wgbpf holds at most {abi.MAX_PEERS - 1}")
    names, members, tags, keys = {}, {}, {}, {}
    for p in cfg.peers:
        if p.name in names:
            raise ConfigError(f"peer {p.name!r} is given twice")
        names[p.name] = p
        if cfg.backend == "allowedips":
            if p.public_key is None:
                raise ConfigError(f"peer {p.name!r}: the allowedips backend names peers by public key "
                                  f"(--peer {p.name}=PUBLIC_KEY,TAG...), not by device ({p.member!r})")
            _claim(keys, p.public_key, p.name, f"public key {base64.b64encode(p.public_key).decode()}")
        elif p.member is None:
            raise ConfigError(f"peer {p.name!r}: a public key names a peer only for "
                              f"--backend allowedips; the maps backend needs its member device")
        else:
            _claim(members, p.member, p.name, f"member device {p.member!r}", ": one device per peer")
        if not cfg.members_only and p.member == cfg.front:
            raise ConfigError(f"peer {p.name!r}: member {p.member!r} is the front device itself")
        for i, t in enumerate(p.tags):
            if t in p.tags[:i]:
                raise ConfigError(f"peer {p.name!r}: tag {t} is given twice")
            _claim(tags, t, p.name, f"tag {t}")
        if probe_interval(cfg, p) and not p.tags:
            raise ConfigError(f"peer {p.name!r}: probes ask its tag address, and it has none")
        # the maps backend holds every peer's tags in one map of MAX_TAGS
        # entries: refuse here, before attach writes the first of them
        if cfg.backend == "maps" and len(tags) > abi.MAX_TAGS:
            mine = len(set(p.tags))
            raise ConfigError(f"peer {p.name!r}: {mine} tags" + (
                f" bring the instance to {len(tags)}" if mine != len(tags) else "")
                + f"; the tags map holds at most {abi.MAX_TAGS} for all peers together")
    return cfg


# -- the config a daemon or an attach resolves to ---------------------------
def attached_config(front):
    """The Config the instance `front` of this namespace runs with, read
    back from its pinned maps (peers, tags, settings), or None when none is
    attached: what `wgbpf daemon FRONT` adopts without --peer or a config."""
    directory = maps.pin_dir(front)
    if not os.path.isdir(directory):
        return None
    with maps.Maps.open(directory, readonly=True) as m:
        return from_attached(front, m.config(), m.peers(), m.tags())


def config_builder(front, peer_args, config_path, members_only, no_route, settings=None, log=None):
    """() -> Config, called at start and on SIGHUP. The peers come from
    --peer and/or --config, else from <config dir>/<front>.toml, else (no
    such file) from the instance as attached: `wgbpf daemon wg0` adopts
    what `wgbpf attach` was given. Where a file is read, what the attached
    instance says otherwise is logged: the daemon's attach makes it the
    file's. `builder.config` names where the config came from (status)."""
    settings = settings or {}

    def builder(quiet=False):
        path = resolve_path(front, peer_args, config_path)
        if path is None and not peer_args and settings.get("backend") != "allowedips" and front:
            builder.config = "attached"
            return adopt(front, members_only, no_route, settings)
        cfg = build(front, peer_args, path, members_only, no_route, **settings)
        builder.config = path or "command line"
        if log and not quiet and path and cfg.backend == "maps":
            diffs = attached_differences(cfg)
            if diffs:
                log(f"the attached instance differs from {path}: {'; '.join(diffs)}; "
                    f"attaching the config")
        return cfg
    builder.config = None
    return builder


def adopt(front, members_only=None, no_route=None, settings=None):
    """The attached instance's Config, with what the command line sets."""
    try:
        cfg = attached_config(front)
    except MapError as e:
        raise ConfigError(f"adopting the attached instance {front}: {e}") from None
    if cfg is None:
        raise ConfigError(
            f"no peers: give --peer NAME=MEMBER_DEV[,TAG...] or --config FILE, write "
            f"{default_path(front)}, or attach {front} first (the daemon adopts it)")
    if members_only is not None:
        cfg.members_only = members_only
    if no_route is not None:
        cfg.no_route = no_route
    for key, value in (settings or {}).items():
        if value is not None:
            setattr(cfg, key, value)
    return validate(cfg)


def attached_differences(cfg):
    """How the instance attached as cfg.front differs from cfg ([] when
    none is attached, or it cannot be read: attach reports that)."""
    try:
        attached = attached_config(cfg.front)
    except MapError:
        return []
    return differences(attached, cfg) if attached is not None else []

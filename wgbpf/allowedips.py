"""The single-device backend: routes drive one WireGuard device's AllowedIPs.

    wgbpf daemon --backend allowedips wg0 --peer alice=PUBLIC_KEY,10.255.0.1

No BPF: WireGuard's own AllowedIPs table steers and checks sources. The
routes are read and followed by the same engine as the maps backend (Tags,
Filter, Table from sync.py); what differs is where the result goes. Each
configured peer's AllowedIPs become its tag addresses plus every prefix
whose preferred route names it. Peers not in the config keep theirs, except
for a prefix a route gives to a configured peer (one prefix, one peer).

Adds are incremental, and so are removals, on every kernel (`removal` in
the status):
  flag       WGALLOWEDIP_F_REMOVE_ME (Linux 6.16; `allowed_ip=-P` in newer
             wireguard-go), when the device answers a probe for it;
  throwaway  else the removed prefixes go to a throwaway peer, which takes
             them off their holder (the same one move as an add), and that
             peer is removed with the next status write (within a second),
             with whatever else was removed meanwhile: removing a kernel
             peer waits for RCU and its workqueues, 30x an add in the vm
             tier, so one removal serves a whole storm of deletes. Until
             then it holds the prefixes, which traffic can no more use
             than absent ones (no endpoint: dropped, ICMP unreachable
             either way). One left by a crash is removed at the next start;
  rewrite    only if the device refuses even that probe (one that cannot
             add peers): the peer's whole list is rewritten
             (REPLACE_ALLOWEDIPS, in as many messages as its size needs;
             prefixes later in the list are missing until their message
             lands).

ECMP: AllowedIPs gives a prefix to one peer. Of a multipath route's peers
the one with the highest hash of (prefix, peer name) wins (rendezvous
hashing: deterministic, spread over the peers, and removing one peer moves
only its own prefixes). Logged once, counted in the status.
"""
import hashlib
import ipaddress
import socket
import time

from . import daemon, routes, sync, wireguard
from .sync import AF4, AF6, network_pkey


def pick(pkey, peers, names):
    """One peer of an ECMP set for a prefix: rendezvous hashing."""
    return max(peers, key=lambda p: hashlib.blake2b(pkey + names[p].encode(), digest_size=8).digest())


def absent_prefix(peers):
    """A prefix no peer on the device holds, for the removal probe."""
    owned = {k for ks in peers.values() for k in ks}
    for i in range(256):
        k = bytes((AF4, 32, 255, 255, 255, i))
        if k not in owned:
            return k
    return bytes((AF6, 128)) + bytes(15) + b"\x02"  # 256 /32s taken: an unlikely ::2/128


class Plan:
    """The device's AllowedIPs as wgbpf wants them, kept prefix by prefix."""

    def __init__(self, peers, present):
        self.keys = {i: p.public_key for i, p in enumerate(peers)}  # peer id -> public key
        self.names = {i: p.name for i, p in enumerate(peers)}
        self.present = present      # public keys the device has
        self.tags = {network_pkey(ipaddress.ip_network(t)): i for i, p in enumerate(peers) for t in p.tags}
        self.ecmp = set()           # prefixes whose route named several peers
        self.dead = set()           # public keys of peers judged dead (--dead-after)

    def owner(self, table, k):
        """The public key prefix k should belong to, or None."""
        i = self.tags.get(k)
        if i is not None:
            return self.keys[i] if self.keys[i] in self.present else None
        peers = table.best(k)
        if peers:
            peers = [p for p in peers if self.keys[p] in self.present]
        if not peers:
            self.ecmp.discard(k)
            return None
        if len(peers) == 1:
            self.ecmp.discard(k)
            return self.keys[peers[0]]
        self.ecmp.add(k)
        # a dead peer's share goes to the live ones (if any is left)
        alive = [p for p in peers if self.keys[p] not in self.dead] or peers
        return self.keys[pick(k, alive, self.names)]

    def want(self, table):
        """{prefix: public key} for everything."""
        out = {}
        for k in table.prefixes:
            key = self.owner(table, k)
            if key is not None:
                out[k] = key
        for k in self.tags:
            key = self.owner(table, k)
            if key is not None:
                out[k] = key
        return out


class Device:
    """Our view of the device's AllowedIPs: per peer, and who owns a prefix."""

    def __init__(self, peers):
        self.peers = peers  # {public key: set of prefixes}
        self.owner = {k: key for key, ks in peers.items() for k in ks}

    def apply(self, change):
        """Keep the view in step with a PeerChange written to the device."""
        key = change.key
        mine = self.peers.setdefault(key, set())
        add = set(change.add)
        # set arithmetic first: a rewrite of a 100k list changes a few entries
        gone = (mine - add) if change.replace else mine.intersection(change.remove)
        new = add - mine
        for k in gone:
            if self.owner.get(k) == key:
                del self.owner[k]
        mine -= gone
        for k in new:
            was = self.owner.get(k)
            if was is not None and was != key:
                self.peers[was].discard(k)  # a prefix has one peer: adding moves it
            self.owner[k] = key
        mine |= new


def changes(want, dev, managed, can_remove, keys=None):
    """The PeerChanges that take the Device `dev` to `want` {prefix: key}
    for the managed peers. `keys` limits the work to some prefixes
    (incremental: `want` need only cover them); None compares everything."""
    if keys is None:
        keys = set(want) | {k for key in managed for k in dev.peers.get(key, ())}
    add, remove = {}, {}
    for k in keys:
        to, now = want.get(k), dev.owner.get(k)
        if to == now:
            continue
        if to is not None:
            add.setdefault(to, []).append(k)   # also moves k from its holder
        elif now in managed:
            remove.setdefault(now, []).append(k)
    out = []
    for key in sorted(set(add) | set(remove)):
        if key in remove and not can_remove:
            # rewrite this peer's list: what it keeps, and what it gains;
            # walk the smaller of the keys and its list (many peers at start)
            mine = dev.peers.get(key, set())
            if len(keys) < len(mine):
                lost = {k for k in keys if want.get(k) != key}
            else:
                lost = {k for k in mine if k in keys and want.get(k) != key}
            out.append(wireguard.PeerChange(key, add=list((mine - lost).union(add.get(key, ()))), replace=True))
        else:
            out.append(wireguard.PeerChange(key, add=sorted(add.get(key, ())), remove=sorted(remove.get(key, ()))))
    return out


class AllowedIPsDaemon(daemon.Daemon):
    """The daemon's loop, lock, status and signals; a device instead of maps."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.device = None
        self.plan = None
        self.dev = Device({})    # our view of the device's AllowedIPs
        self.can_remove = None   # does the device know WGALLOWEDIP_F_REMOVE_ME?
        self.removal = None      # "flag", "throwaway" or "rewrite": see the module's doc
        self.sink = None         # public key of the live throwaway peer
        self.bury_at_once = False  # remove it after each batch, not with the status (the bench)
        self.ecmp_warned = False
        self.stats.update(allowedips_changes=0, peer_rewrites=0, ecmp_prefixes=0, missing_peers=[])

    def _attach(self):
        if self.device is None:
            self.device = wireguard.open_device(self.cfg.front)
        self.device.peers()  # fails here, naming the problem, if it is no WireGuard device

    def _tags(self, nl):
        by_addr = {t.packed: i for i, p in enumerate(self.cfg.peers) for t in p.tags}
        try:  # routes into the device naming no peer leave the choice to AllowedIPs
            device = socket.if_nametoindex(self.cfg.front)
        except OSError:
            device = None
        return sync.Tags(by_addr, {}, front=device)

    def _probe(self):
        managed = [p.public_key for p in self.cfg.peers if p.public_key in self.dev.peers]
        if self.can_remove is not None or not managed:
            return
        absent = absent_prefix(self.dev.peers)
        self.can_remove = self.device.probe_remove(managed[0], absent)
        if self.can_remove:
            self.removal = "flag"
            how = "removes single allowed IPs (WGALLOWEDIP_F_REMOVE_ME)"
        else:
            try:
                self.device.drop([absent])
                self.removal = "throwaway"
                how = ("no WGALLOWEDIP_F_REMOVE_ME: removes single allowed IPs through a throwaway peer "
                       "(created holding them, then removed)")
            except wireguard.WireGuardError as e:
                self.removal = "rewrite"
                how = f"cannot remove single allowed IPs ({e}): a removal rewrites that peer's list"
        self.log(f"{self.cfg.front} ({self.device.flavour} WireGuard): {how}")

    def _single(self):
        """Can one allowed IP be removed without rewriting its peer's list?"""
        return self.removal in ("flag", "throwaway")

    def _write(self, todo):
        dropped = []
        for c in todo:
            if c.remove and self.removal == "throwaway":
                # the removals of the whole batch go through one throwaway peer
                dropped += c.remove
                if c.add:
                    self.device.apply([wireguard.PeerChange(c.key, add=c.add)])
            else:
                self.device.apply([c])
            self.dev.apply(c)
            self.stats["allowedips_changes"] += len(c.add) + len(c.remove)
            self.stats["peer_rewrites"] += c.replace
        if dropped:
            self._sink(dropped)
        self.stats["map_writes"] = self.stats["allowedips_changes"]

    def _sink(self, prefixes):
        """Move prefixes to the throwaway peer (created on first use)."""
        create = self.sink is None
        if create:
            self.sink = wireguard.scratch_key()
        try:
            self.device.apply([wireguard.PeerChange(self.sink, add=prefixes, create=create)])
        except BaseException:
            self.bury()  # never left behind, whatever failed
            raise
        if self.bury_at_once:
            self.bury()

    def bury(self):
        """Remove the throwaway peer, and with it what it holds."""
        if self.sink is not None:
            key, self.sink = self.sink, None
            self.device.remove_peers([key])

    def _read_device(self):
        """The device's peers, less throwaway peers a crash left behind
        (removed here: they hold prefixes that were being removed)."""
        peers = self.device.peers()
        left = [k for k in peers if wireguard.is_scratch(k)]
        if left:
            self.device.remove_peers(left)
            self.log(f"removed {len(left)} throwaway peer(s) left on {self.cfg.front} by an interrupted removal")
            for k in left:
                del peers[k]
        return peers

    def _note_ecmp(self):
        n = len(self.plan.ecmp)
        self.stats["ecmp_prefixes"] = n
        if n and not self.ecmp_warned:
            self.ecmp_warned = True
            self.log(f"warning: {n} multipath routes name several peers; AllowedIPs gives a prefix to "
                     f"one peer, so each goes to one of them (rendezvous hash of prefix and peer name); "
                     f"counted as ecmp_prefixes in the status")

    def full_sync(self, why):
        t0 = time.monotonic()
        self.bury()  # the device read next shows no throwaway peer of ours
        nl = routes.Netlink(rcvbuf=self.rcvbuf)
        try:
            table = sync.Table(self._tags(nl), self.filter)
            n, _recheck = self._dump(nl, {"routes": table})
        finally:
            nl.close()
        t_dump = time.monotonic() - t0
        self.dev = Device(self._read_device())
        present = set(self.dev.peers)
        missing = [p.name for p in self.cfg.peers if p.public_key not in present]
        if missing and missing != self.stats["missing_peers"]:
            self.log(f"warning: peers not on {self.cfg.front}: {', '.join(missing)} "
                     f"(their routes wait until they are added and the daemon resyncs)")
        self.stats["missing_peers"] = missing
        self._probe()
        self.plan = Plan(self.cfg.peers, present)
        self.plan.dead = self._dead_keys()
        managed = {p.public_key for p in self.cfg.peers} & present
        todo = changes(self.plan.want(table), self.dev, managed, self._single())
        before = self.stats["allowedips_changes"]
        self._write(todo)
        self.table = table
        self.tables = {"routes": (table, None)}
        self._note_ecmp()
        dt = time.monotonic() - t0
        self.stats["last_sync"] = time.time()
        self.stats["last_sync_seconds"] = round(dt, 3)
        self.log(f"sync ({why}): {n} routes read, {len(table)} prefixes name peers, "
                 f"{table.ignored} ignored, {self.stats['allowedips_changes'] - before} allowed-IP changes "
                 f"({len(todo)} peers touched) in {dt:.2f}s (route dump {t_dump:.2f}s)")
        self.stats["last_sync_dump_seconds"] = round(t_dump, 3)
        self.write_status("running")

    def handle(self, events, t_read=None):
        table = self.table
        changed = set()
        for mtype, buf, off, end in events:
            if mtype in (routes.RTM_NEWROUTE, routes.RTM_DELROUTE):
                self.stats["events"] += 1
                r = routes.parse_route(buf, off, end)
                if r is not None:
                    k = table.update(r, deleted=(mtype == routes.RTM_DELROUTE))
                    if k is not None:
                        changed.add(k)
        if changed:
            want = {}
            for k in changed:
                key = self.plan.owner(table, k)
                if key is not None:
                    want[k] = key
            managed = {p.public_key for p in self.cfg.peers} & self.plan.present
            self._write(changes(want, self.dev, managed, self._single(), keys=changed))
            self._note_ecmp()
        if t_read is not None:
            self.lag.append((time.monotonic() - t_read) * 1000)
        return False

    def _dead_keys(self):
        return {p.public_key for p in self.cfg.peers if not self.liveness.alive(p.name)}

    def peer_counters(self, names):
        """One read of the device for every peer (its allowed IPs come
        along: WireGuard has no query for the counters alone)."""
        keys = {p.name: p.public_key for p in self.cfg.peers}
        try:
            c = self.device.counters()
        except (wireguard.WireGuardError, OSError):
            return {}
        return {n: tuple(c[keys[n]]) for n in names if keys.get(n) in c}

    def liveness_changed(self):
        """A peer died or came back: each ECMP prefix goes to one of its
        live peers again. A dead peer keeps what is routed to it alone:
        AllowedIPs has no "down", and taking a prefix away would also drop
        what the peer sends from it."""
        if self.plan is None or self.table is None:
            return False
        self.plan.dead = self._dead_keys()
        keys = set(self.plan.ecmp)
        want = {k: key for k in keys if (key := self.plan.owner(self.table, k)) is not None}
        managed = {p.public_key for p in self.cfg.peers} & self.plan.present
        self._write(changes(want, self.dev, managed, self._single(), keys=keys))
        return True

    def write_status(self, state):
        self.bury()  # about every second, and when stopping or failing
        self.stats["backend"] = "allowedips"
        self.stats["device_kind"] = self.device.flavour if self.device else None
        self.stats["remove_single"] = self.can_remove
        self.stats["removal"] = self.removal
        super().write_status(state)

    def _peer_names(self):
        return {i: p.name for i, p in enumerate(self.cfg.peers)}

    def backend_metrics(self, metric, series, st):
        metric("allowedips_changes_total", "allowed IPs added or removed", st["allowedips_changes"])
        metric("peer_rewrites_total", "whole AllowedIPs lists rewritten", st["peer_rewrites"])
        metric("ecmp_prefixes", "multipath prefixes given to one of their peers", st["ecmp_prefixes"], "gauge")

# SPDX-License-Identifier: GPL-2.0-or-later
"""The allowedips backend: the routes that name peers become one
WireGuard device's AllowedIPs (wgbpf/allowedips.py: the plan, the device's
view and the changes; its docstring says how removals are made).
"""
import socket
import time

from .. import routes, sync, wireguard
from ..allowedips import ECMP_PICK, Device, Plan, absent_prefix, unhonoured
from ..allowedips import changes as changes_for
from .base import Backend, LazyNetlink, apply_events, dump_tables, with_nexthops


class AllowedIPsBackend(Backend):
    """One WireGuard device's AllowedIPs instead of maps."""
    name = "allowedips"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.table = None
        self.device = None
        self.plan = None
        self.dev = Device({})    # our view of the device's AllowedIPs
        self.can_remove = None   # does the device know WGALLOWEDIP_F_REMOVE_ME?
        self.removal = None      # "flag", "throwaway" or "rewrite": see the module's doc
        self.sink = None         # public key of the live throwaway peer
        self.bury_at_once = False  # remove it after each batch, not with the status (the bench)
        self.ecmp_warned = False
        self.no_peer = set()  # "no peer" prefixes a covering AllowedIP keeps (allowedips.unhonoured)
        self.no_peer_warned = False
        self.stats = {"allowedips_changes": 0, "peer_rewrites": 0, "ecmp_prefixes": 0, "ecmp_pick": ECMP_PICK, "no_peer_unhonoured": 0, "missing_peers": [],
                      "map_writes": 0, "last_sync": None, "last_sync_seconds": None}

    def attach(self, cfg):
        self.cfg = cfg
        if self.device is None:
            self.device = wireguard.open_device(self.cfg.front)
        self.device.peers()  # fails here, naming the problem, if it is no WireGuard device
        return cfg

    def _tags(self, nl):
        by_addr = {t.packed: i for i, p in enumerate(self.cfg.peers) for t in p.tags}
        try:  # routes into the device naming no peer leave the choice to AllowedIPs
            device = socket.if_nametoindex(self.cfg.front)
        except OSError:
            device = None
        return with_nexthops(nl, sync.Tags(by_addr, {}, front=device))

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

    def _note_no_peer(self, keys=None):
        self.no_peer = unhonoured(self.table, keys, self.no_peer)
        n = self.stats["no_peer_unhonoured"] = len(self.no_peer)
        if n and not self.no_peer_warned:
            self.no_peer_warned = True
            self.log(f"warning: {n} prefixes whose best route names no peer (a blackhole, a LAN device) lie "
                     f"inside a peer's prefix; AllowedIPs cannot hide it, so that peer keeps them, for "
                     f"steering and as sources; counted as no_peer_unhonoured in the status "
                     f"(the maps backend honours them)")

    def _note_ecmp(self):
        n = len(self.plan.ecmp)
        self.stats["ecmp_prefixes"] = n
        if n and not self.ecmp_warned:
            self.ecmp_warned = True
            self.log(f"warning: {n} multipath routes name several peers; AllowedIPs gives a prefix to "
                     f"one peer, so each goes to one of them ({ECMP_PICK}); counted as ecmp_prefixes "
                     f"in the status")

    def full_sync(self, why):
        t0 = time.monotonic()
        self.bury()  # the device read next shows no throwaway peer of ours
        nl = routes.Netlink(rcvbuf=self.rcvbuf)
        try:
            table = sync.Table(self._tags(nl), self.filter)
            n, _recheck = dump_tables(nl, {"routes": table}, self.progress)
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
        todo = changes_for(self.plan.want(table), self.dev, managed, self._single())
        before = self.stats["allowedips_changes"]
        self._write(todo)
        self.table = table
        self._note_ecmp()
        self._note_no_peer()
        dt = time.monotonic() - t0
        self.stats["last_sync"] = time.time()
        self.stats["last_sync_seconds"] = round(dt, 3)
        self.log(f"sync ({why}): {n} routes read, {len(table)} prefixes name peers, "
                 f"{table.ignored} ignored, {self.stats['allowedips_changes'] - before} allowed-IP changes "
                 f"({len(todo)} peers touched) in {dt:.2f}s (route dump {t_dump:.2f}s)")
        self.stats["last_sync_dump_seconds"] = round(t_dump, 3)

    def apply(self, changes, t_read):
        """Route changes only: the device is no BPF data plane with hooks
        or martians to follow, and tags are the config's."""
        table = self.table
        with LazyNetlink(self.rcvbuf) as netlink:  # in the kernel's order, and what it removed without a word
            changed = apply_events(table.tags, {"routes": table}, changes, netlink)["routes"]
        if changes.silent & {table.tags.front} or table.unsure:
            # routes through the device may be gone, or a tie of equal-key
            # routes holds one not known (wgbpf/ties.py): read them all again
            return True
        if changed:
            want = {}
            for k in changed:
                key = self.plan.owner(table, k)
                if key is not None:
                    want[k] = key
            managed = {p.public_key for p in self.cfg.peers} & self.plan.present
            self._write(changes_for(want, self.dev, managed, self._single(), keys=changed))
            self._note_ecmp()
            self._note_no_peer(changed)
        if t_read is not None and self.lag is not None:
            self.lag.append((time.monotonic() - t_read) * 1000)
        return False

    def _dead_keys(self):
        return {p.public_key for p in self.cfg.peers if not self.liveness.alive(p.name)}

    def counters(self, names):
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
        self._write(changes_for(want, self.dev, managed, self._single(), keys=keys))
        return True

    def status(self):
        self.bury()  # about every second, and when stopping or failing
        names = {i: p.name for i, p in enumerate(self.cfg.peers)} if self.cfg else {}
        t = self.table
        return dict(self.stats, backend="allowedips", device_kind=self.device.flavour if self.device else None,
                    remove_single=self.can_remove, removal=self.removal,
                    prefixes=len(t) if t is not None else 0, ignored=t.ignored if t is not None else 0,
                    routes_per_peer={names.get(i, f"#{i}"): n for i, n in t.per_peer.items() if n}
                    if t is not None else {})

    def close(self):
        self.bury()

    def metrics(self, metric, series, st):
        metric("allowedips_changes_total", "allowed IPs added or removed", st["allowedips_changes"])
        metric("peer_rewrites_total", "whole AllowedIPs lists rewritten", st["peer_rewrites"])
        metric("ecmp_prefixes", "multipath prefixes given to one of their peers", st["ecmp_prefixes"], "gauge")
        metric("no_peer_unhonoured", "prefixes routed to no peer that a covering peer's AllowedIP keeps",
               st.get("no_peer_unhonoured", 0), "gauge")

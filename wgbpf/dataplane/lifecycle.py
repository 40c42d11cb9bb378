# SPDX-License-Identifier: GPL-2.0-or-later
"""An instance's life: attach (a reconcile, phase by phase: Attach),
detach, and the re-hook of a device re-created under its name (the
daemon's). The top of the package: it imports the others, none of them
imports it, and none imports the daemon, the CLI or a backend.

attach() makes the pinned maps and the tc filters match a Config,
touching only what differs. Maps are created (or reopened) before BCC
compiles, and BCC opens them by pin path, so reloading the programs never
loses a route; filters are swapped with `tc filter replace` on a fixed
priority and handle, which the kernel does atomically, so an upgrade drops
no packet.
"""
import os
import time

from .. import abi, maps
from ..config import ConfigError, check_ifname
from ..maps import Maps, MapError, pin_dir
from ..peersets import weighed
from ..routemaps import network
from .build import (SOURCE, build_key, compile_programs, pinned_prog_tag, prog_tag, record_build, recorded_programs,
                    reusable_programs)
from .errors import AttachError
from .ownership import check_hooks_ours, check_owners, named_filters, orphaned_filters, vet
from .pins import check_pin_dirs, pin_prog, pinned_ids, pinned_programs, reads_maps, restore_pins, stale_pins
from .preflight import (check_fib, check_links, check_pin_root, ensure_bpffs, forwarding_off,
                        forwarding_warning, quiet_redirects)
from .tc import ensure_filter, filter_name, filters, hook_member, iproute, remove_filter, unhook


class Attach:
    """One attach, phase by phase (as katran's KatranLb: sanity checks,
    then maps, programs, attach). check() refuses before anything changes
    (refused means untouched); each later phase makes its part of the
    instance match the Config and returns the changes it made, as lines for
    the summary. What a phase finds that a later one needs stays on the
    object."""

    def __init__(self, ipr, cfg, log=lambda msg: None, debug=False):
        self.ipr, self.cfg, self.log, self.debug = ipr, cfg, log, debug
        self.directory = pin_dir(cfg.front)
        self.name = filter_name(cfg.front)
        self.dir24 = cfg.lookup == abi.Lookup.DIR24
        self.m = self.bpf = self.kept = None
        self.t0 = time.monotonic()

    def check(self, force=False):
        """Devices, the pin root, what other instances hold, what the kernel
        offers (FIB mode)."""
        cfg, ipr = self.cfg, self.ipr
        self.front_idx, self.links = check_links(ipr, cfg)
        ensure_bpffs()
        check_pin_root()
        check_owners(ipr, cfg, self.front_idx, self.links)
        if not force:
            check_hooks_ours(ipr, cfg, self.front_idx, self.links)
        self.fib = check_fib(cfg, self.front_idx, self.links) if cfg.lookup == abi.Lookup.FIB else None
        self.fresh = not os.path.isdir(self.directory)

    def devices(self):
        """The ifindexes of the instance's devices, members first."""
        return [i for i, _ in self.links.values()] + ([self.front_idx] if self.front_idx else [])

    def open_maps(self):
        """The maps, created or reopened and pinned before anything compiles
        (BCC opens them by pin path): reloading the programs never loses a
        route. A map pin removed by hand is pinned again first."""
        changes = []
        check_pin_dirs(self.directory)
        restored = [] if self.fresh else restore_pins(self.directory)
        if restored:
            changes.append(f"pins repaired: {', '.join(restored)} pinned again from the running programs "
                           f"(removed by hand?)")
        self.m = Maps.create(self.directory, dir24=self.dir24)
        return changes

    def programs(self):
        """The pinned programs when built from this very source and flags (a
        compile, ~2 s, ~16 s emulated, would only make them again), else
        compiled; and whether filters and pins take the new ones."""
        m, directory = self.m, self.directory
        changes = []
        self.key = build_key(directory)
        if not (self.fresh or self.debug or m.replaced):
            self.kept = reusable_programs(self.cfg.front, directory, self.key)
        # a pin replaced by another map (or removed, with no program to pin
        # it again from): the programs read a map no one writes, so they are
        # loaded again on the pinned ones
        stale = [] if self.fresh else stale_pins(m, self.devices(), self.name)
        stale = [n for n in stale if n not in m.replaced]  # resized on purpose: said below
        if stale and self.kept:
            self.close_kept()
        self.fds = self.kept
        if not self.kept:
            self.log(f"compiling {SOURCE}")
            self.bpf, self.fds = compile_programs(directory, debug=self.debug)
        self.t_compile = time.monotonic() - self.t0
        old = {name: pinned_prog_tag(directory, name) for name in abi.PROGRAMS}
        new = {name: prog_tag(self.fds[name]) for name in abi.PROGRAMS}
        # same code, but a map was replaced (DIR-24-8 resized): the running
        # programs hold the old one
        self.reload = (old != new or bool(m.replaced)
                       or not os.path.exists(os.path.join(directory, "tail")))
        if not self.fresh and self.reload:
            changes.append("programs upgraded")
        if stale:
            changes.append(f"pins repaired: {', '.join(stale)} pinned is not the map the programs "
                           f"read (pin replaced by hand?); programs reloaded on the pinned maps")
            self.reload = True
        return changes

    def peer_ids(self):
        """Each peer's id: kept, else a free one, else one a departing peer
        frees (that peer is forgotten first: its routes must not reach the
        newcomer)."""
        changes = []
        self.existing = self.m.peers()
        self.ids, reused = assign_ids({i: p.name.decode() for i, p in self.existing.items()},
                                      [pc.name for pc in self.cfg.peers])
        for peer_id in reused:
            peer = self.existing.pop(peer_id)
            forget_peer(self.ipr, self.m, peer_id, peer, self.name)
            changes.append(f"peer {peer.name.decode()} removed")
        return changes

    def reconcile(self):
        """Peers, then tags and their implicit host routes. Peers come
        before any filter, so no filter ever sees a member it cannot
        resolve; a member is made known only once hooked (self.new_members,
        written by hook())."""
        m, cfg, ids = self.m, self.cfg, self.ids
        changes = []
        members_now = m.members()
        self.new_members = {}
        for pc in cfg.peers:
            peer_id = ids[pc.name]
            ifindex, up = self.links[pc.name]
            have = self.existing.get(peer_id)
            want = abi.Peer(ifindex=ifindex, flags=abi.PEER_UP if up else 0,
                            source=int(pc.source), name=pc.name.encode(),
                            member=pc.member.encode(),
                            owned=have.owned if have is not None and have.ifindex == ifindex else 0)
            if have is None or bytes(have) != bytes(want):
                m.set_peer(peer_id, want)
                changes.append(f"peer {pc.name} ({pc.member}, id {peer_id}"
                               f"{'' if up else ', down'}) {'added' if have is None else 'updated'}")
            if members_now.get(ifindex) != peer_id:
                # known only once hooked: until then the guard takes the
                # device for what it is, unchecked (fail closed)
                self.new_members[ifindex] = peer_id
        want_tags = {t: ids[pc.name] for pc in cfg.peers for t in pc.tags}
        have_tags = m.tags()
        for t, peer_id in want_tags.items():
            if have_tags.get(t) != peer_id:
                m.set_tag(t, peer_id)
                changes.append(f"tag {t} -> {next(p.name for p in cfg.peers if ids[p.name] == peer_id)}")
            net = network(f"{t}/{t.max_prefixlen}")
            r = m.tries.get_route(net)
            if r is None or (r.origin == abi.Origin.TAG and m.sets.members(r.set) != (peer_id,)):
                m.tries.set_route(net, [peer_id], abi.Origin.TAG)
        for t in have_tags:
            if t not in want_tags:
                m.del_tag(t)
                net = network(f"{t}/{t.max_prefixlen}")
                r = m.tries.get_route(net)
                if r is not None and r.origin == abi.Origin.TAG:
                    m.tries.del_route(net)
                changes.append(f"tag {t} removed")
        return changes

    def settings(self):
        """The settings (config map): written now into a fresh instance; into
        a running one only once the new programs are in (switch_settings).
        Then what derives from peers and routes: the DIR-24-8 arrays
        (compiled before any program reads them), the flood list, the
        guard's forwarders and martian addresses."""
        m, cfg = self.m, self.cfg
        have = m.config()
        self.want = abi.Config(front_ifindex=self.front_idx, no_route=int(cfg.no_route),
                               flood_count=have.flood_count, lookup=int(cfg.lookup),
                               fib_table=cfg.fib_table, source=int(cfg.source),
                               accept_table=cfg.accept_table,
                               front_owned=have.front_owned if have.front_ifindex == self.front_idx else 0,
                               front=cfg.front.encode() if self.front_idx else b"")
        self.new_settings = bytes(self.want) != bytes(have)
        if self.new_settings and self.fresh:
            m.set_config(self.want)
        if self.dir24:
            m.dir24.rebuild()
        m.rebuild_flood()
        return vet(self.ipr, m, {pc.member for pc in cfg.peers})

    def hook(self):
        """The tc filters: members, then the front; a member is made known
        (members map) once both its hooks hold our programs."""
        ipr, m, name, fds = self.ipr, self.m, self.name, self.fds
        for pc in self.cfg.peers:
            ifindex, _ = self.links[pc.name]
            if (self.reload or name not in filters(ipr, ifindex, "ingress")
                    or name not in filters(ipr, ifindex, "egress")):
                if hook_member(ipr, ifindex, fds, name):
                    peer = m.peers()[self.ids[pc.name]]
                    peer.owned |= abi.OWN_CLSACT
                    m.set_peer(self.ids[pc.name], peer)
        for ifindex, peer_id in self.new_members.items():
            m.set_member(ifindex, peer_id)
        front_idx = self.front_idx
        if front_idx and (self.reload or name not in filters(ipr, front_idx, "egress")):
            if ensure_filter(ipr, front_idx, "egress", fds["front_egress"], name):
                c = m.config()
                c.front_owned |= abi.OWN_CLSACT
                m.set_config(c)
                self.want.front_owned = c.front_owned
        return []

    def switch_settings(self):
        """New settings of a running instance, after the new programs are in:
        a mode switch must not make the old ones read maps they were not
        built with."""
        if not self.new_settings or self.fresh:
            return []
        self.want.flood_count = self.m.config().flood_count
        self.m.set_config(self.want)
        return ["settings updated"]

    def sysctls(self):
        """Warnings about the host's forwarding; ICMP redirects off on the
        front."""
        cfg = self.cfg
        devices = [cfg.front] if self.front_idx else [pc.member for pc in cfg.peers]
        warnings = [w for w in [forwarding_warning(forwarding_off(devices))] if w]
        if self.front_idx:
            w = quiet_redirects(cfg.front)
            if w:
                warnings.append(w)
        return warnings

    def pin(self):
        """The programs that now run, pinned where detach and the daemon's
        re-hooks find them."""
        if self.reload:
            for pname, fd in self.fds.items():
                pin_prog(fd, os.path.join(self.directory, pname))
        return []

    def forget_departed(self):
        """Peers that left: their devices unhooked, then forgotten; members
        entries of devices no peer has any more."""
        ipr, m, name, ids = self.ipr, self.m, self.name, self.ids
        changes = []
        keep = set(ids.values())
        for peer_id, peer in self.existing.items():
            if peer_id in keep:
                continue
            forget_peer(ipr, m, peer_id, peer, name)
            changes.append(f"peer {peer.name.decode()} removed")
            if self.dir24:
                m.dir24.rebuild()
        for ifindex, peer_id in m.members().items():
            if peer_id not in keep or self.links.get(_peer_name(ids, peer_id), (None,))[0] != ifindex:
                m.del_member(ifindex)
                if peer_id in keep:  # the peer moved to another device
                    old = self.existing.get(peer_id)
                    unhook(ipr, ifindex, ("ingress", "egress"), name,
                           old.owned if old is not None and old.ifindex == ifindex else 0,
                           old.member.decode() if old is not None else None)
        m.rebuild_flood()
        return changes

    def record(self):
        """The build key of programs just compiled (the next attach reuses
        them). Returns whether they were compiled."""
        compiled = self.bpf is not None
        if compiled and not self.debug:
            record_build(self.cfg.front, self.directory, self.key)
        self.bpf = None  # pinned or hooked now: BCC's object may go
        return compiled

    def close_kept(self):
        for fd in (self.kept or {}).values():
            os.close(fd)
        self.kept = None

    def close(self):
        if self.m is not None:
            self.m.close()
        self.close_kept()


def attach(cfg, log=lambda msg: None, debug=False, force=False):
    """Make the instance cfg.front match cfg (the phases of Attach).
    `force`: take over hooks that run another instance's programs (one of
    the same front under another pin root). Returns a summary dict."""
    with iproute() as ipr:
        run = Attach(ipr, cfg, log, debug)
        run.check(force)  # refused means untouched: nothing has changed yet
        try:
            changes = run.open_maps()
            changes += run.programs()
            changes += run.peer_ids()
            changes += run.reconcile()
            changes += run.settings()
            changes += run.hook()
            changes += run.switch_settings()
            warnings = run.sysctls()
            changes += run.pin()
            changes += run.forget_departed()
            compiled = run.record()
        finally:
            run.close()
    return {"front": cfg.front, "pin_dir": run.directory, "peers": len(cfg.peers),
            "members_only": cfg.members_only, "created": run.fresh,
            "programs_reloaded": run.reload, "changes": changes, "warnings": warnings,
            "lookup": cfg.lookup.name.lower(), "fib": run.fib, "source": cfg.source.name.lower(),
            "compiled": compiled, "compile_seconds": round(run.t_compile, 3),
            "seconds": round(time.monotonic() - run.t0, 3)}


def _peer_name(ids, peer_id):
    return next((n for n, i in ids.items() if i == peer_id), None)


def assign_ids(existing, names):
    """Peer ids for `names` (the config's peers), given existing {id: name}.

    A peer keeps its id; a new one takes a free id, and only when none is
    left one that a departing peer frees (routes naming that id must not
    reach the newcomer: the caller forgets those peers first). Returns
    ({name: id}, [departing ids reused])."""
    by_name = {n: i for i, n in existing.items()}
    ids = {n: by_name[n] for n in names if n in by_name}
    new = [n for n in names if n not in by_name]
    free = [i for i in range(1, abi.MAX_PEERS) if i not in existing]
    departing = sorted(set(existing) - set(ids.values()))
    pool = free + departing
    if len(new) > len(pool):
        raise AttachError(f"{len(names)} peers: an instance holds at most {abi.MAX_PEERS - 1}")
    ids.update(zip(new, pool))
    return ids, [i for i in pool[:len(new)] if i in existing]


def forget_peer(ipr, m, peer_id, peer, name):
    """Remove one peer: its routes' references, tags, slot, and its member
    entry. Its device stays hooked: with no member entry, what it hands up
    is dropped (unknown member) and nothing is forwarded out of it, until
    the device goes or the peer comes back (fail closed, as for a
    re-created member). Unhooked, a peer the operator removed would go on
    sending into the router unchecked. detach removes those filters too
    (by name: named_filters)."""
    for ifindex, owner in m.members().items():
        if owner == peer_id:
            m.del_member(ifindex)
    for t, owner in m.tags().items():
        if owner == peer_id:
            m.del_tag(t)
    sets = m.sets.peers()
    for version in (4, 6):
        for net, r in list(m.tries.routes(version)):
            peers, weights = sets.get(r.set, ((), None))
            if peer_id not in peers:
                continue
            rest = [(p, w) for p, w in zip(peers, weights or [1] * len(peers)) if p != peer_id]
            if rest:
                m.tries.set_route(net, [p for p, _w in rest], r.origin,
                                  weights=weighed(w for _p, w in rest))
            else:
                m.tries.del_route(net)
    m.clear_peer(peer_id)


def detach(front):
    """Remove filters and pins of one instance; devices stay as they were.
    A device whose filters cannot be listed stops it (TcError) with the
    pins in place: run it again once the kernel answers."""
    try:
        check_ifname(front, "front")  # never let a name like '..' leave the pin root
    except ConfigError as e:
        raise AttachError(str(e)) from None
    directory = pin_dir(front)
    if not os.path.isdir(directory):
        return detach_orphans(front, directory)
    removed = []
    progs, maps_pinned = pinned_ids(directory)

    def ours(prog_id):
        # a filter of our name running another instance's program (one of
        # the same front under another pin root, that took the hooks over
        # with attach --force) is that instance's to remove
        return not (progs or maps_pinned) or prog_id in progs.values() \
            or reads_maps(prog_id, maps_pinned.values())
    name = filter_name(front)
    with iproute() as ipr:
        try:
            m = Maps.open(directory)
        except MapError:
            m = None
        if m is not None:
            with m:
                # ours only: filters in our slot with our name, and the
                # clsact qdisc where we added it and nothing else is left
                cfg = m.config()
                peers = m.peers()
                for p in peers.values():
                    if unhook(ipr, p.ifindex, ("ingress", "egress"), name, p.owned, p.member.decode(), ours):
                        removed.append(p.ifindex)
                for ifindex, peer_id in m.members().items():  # a member a peer no longer records
                    if peer_id not in peers or peers[peer_id].ifindex != ifindex:
                        unhook(ipr, ifindex, ("ingress", "egress"), name, 0, ours=ours)
                if cfg.front_ifindex and unhook(ipr, cfg.front_ifindex, ("egress",), name,
                                                cfg.front_owned, cfg.front.decode(), ours):
                    removed.append(cfg.front_ifindex)
        # the devices of peers that left, hooked to drop (forget_peer)
        for ifindex, _device, hook in named_filters(ipr, front).get(front, ()):
            if remove_filter(ipr, ifindex, hook, name, ours) and ifindex not in removed:
                removed.append(ifindex)
    for entry in os.listdir(directory):
        os.unlink(os.path.join(directory, entry))
    os.rmdir(directory)
    maps.prune(directory)
    return {"front": front, "pin_dir": directory, "devices": len(removed)}


def detach_orphans(front, directory):
    """Detach an instance whose pins were removed under it: its filters
    (by name) still run on frozen maps. Removed where they run one of the
    programs its last attach recorded (the build record); a filter of
    that name running another program may be an instance of the same
    front under another pin root: named, not touched."""
    ours = recorded_programs(front)
    removed, foreign = set(), []
    with iproute() as ipr:
        for ifindex, device, hook in orphaned_filters(ipr, front).get(front, ()):
            if remove_filter(ipr, ifindex, hook, filter_name(front), lambda prog_id: prog_id in ours):
                removed.add(device)
            else:
                foreign.append(f"{device} {hook}")
    if not removed and not foreign:
        raise AttachError(f"no wgbpf instance {front!r} ({directory} does not exist)")
    if foreign:
        raise AttachError(f"{directory} does not exist, and the {filter_name(front)} filters on "
                          f"{', '.join(foreign)} run programs this instance did not record"
                          + (f" (removed those on {', '.join(sorted(removed))})" if removed else "")
                          + ": another pin root's instance? detach it there, or attach --force")
    return {"front": front, "pin_dir": directory, "devices": len(removed), "orphaned": sorted(removed)}


def rehook_member(ipr, m, front, peer_id, ifindex, up):
    """A member device re-created under the same name: hook it, then make
    it known. The hook comes first, so until the members entry exists
    member_ingress drops what it sends (unknown member) and the guard never
    takes it for a hooked member."""
    fds = pinned_programs(m.directory)
    try:
        created = hook_member(ipr, ifindex, fds, filter_name(front))
    finally:
        for fd in fds.values():
            os.close(fd)
    peer = m.peers()[peer_id]
    old = peer.ifindex
    m.set_member(ifindex, peer_id)
    peer.ifindex = ifindex
    peer.flags = (peer.flags | abi.PEER_UP) if up else (peer.flags & ~abi.PEER_UP)
    peer.owned = abi.OWN_CLSACT if created else 0
    m.set_peer(peer_id, peer)
    if old != ifindex:
        m.del_member(old)
        m.guard.del_forwarder(ifindex)
    m.rebuild_flood()
    return old


def rehook_front(ipr, m, front, ifindex):
    """The front re-created under the same name: hook it, then point the
    members' hand-over at it."""
    fds = pinned_programs(m.directory)
    try:
        created = ensure_filter(ipr, ifindex, "egress", fds["front_egress"], filter_name(front))
    finally:
        for fd in fds.values():
            os.close(fd)
    c = m.config()
    old = c.front_ifindex
    c.front_ifindex = ifindex
    c.front_owned = abi.OWN_CLSACT if created else 0
    m.set_config(c)
    quiet_redirects(front)
    return old

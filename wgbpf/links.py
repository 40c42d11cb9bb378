# SPDX-License-Identifier: GPL-2.0-or-later
"""Following the instance's devices by name, for the maps backend.

A member or front re-created under its name (`wg-quick down/up`, a
wireguard-go restart) is hooked again and its new ifindex written; a
member gone or down takes its peer down (so does a peer judged dead by
liveness); every other device is vetted and every host address made a
martian source (dataplane.vet). Level-triggered: run on any link or
address event, and at every full sync (an overrun may have eaten the
events).
"""
from . import abi, dataplane


class Links:
    def __init__(self, front, log, liveness, stats):
        self.front = front
        self.log = log
        self.liveness = liveness  # a dead peer stays down while its member is up
        self.stats = stats        # counts rehooks and members_gone
        self.front_gone = False
        self.foreign_hooks = set()  # hooks another instance took: logged once each

    def follow(self, maps, check_hooks=False):
        """Returns True when a device was re-hooked (routes by member
        device must be re-resolved). `check_hooks`: a tc qdisc or filter
        was deleted somewhere; look for ours on every device (two dumps a
        device: only then)."""
        with dataplane.iproute() as ipr:
            dump = ipr.get_links()
            now = {l.get_attr("IFLA_IFNAME"): (l["index"], bool(l["flags"] & dataplane.IFF_UP))
                   for l in dump
                   # what attach would refuse is no member: only WireGuard/TUN
                   if l["ifi_type"] == dataplane.ARPHRD_NONE}
            peers = maps.peers()
            members = maps.members()  # each peer below changes only its own entries
            rehooked = False
            for peer_id, p in peers.items():
                rehooked |= self._member(ipr, maps, peer_id, p, now, members, check_hooks)
            c = maps.config()
            if c.front_ifindex:
                rehooked |= self._front(ipr, maps, now.get(self.front), c, check_hooks)
            if check_hooks:
                self._report_foreign_hooks(peers, now, c)
            dataplane.vet(ipr, maps, {p.member.decode() for p in peers.values()}
                          | dataplane.other_members(self.front),
                          {l["index"]: l.get_attr("IFLA_IFNAME") for l in dump})
        return rehooked

    def _member(self, ipr, maps, peer_id, p, now, members, check_hooks):
        dev, name = p.member.decode(), p.name.decode()
        link = now.get(dev)
        if link is None:
            if p.flags & abi.PEER_UP or p.ifindex in members:
                # the ifindex may be reused by an unrelated device
                maps.del_member(p.ifindex)
                p.flags &= ~abi.PEER_UP
                maps.set_peer(peer_id, p)
                maps.rebuild_flood()
                self.stats["members_gone"] += 1
                self.log(f"peer {name}: member {dev} gone; peer down until it returns")
            return False
        index, up = link
        up = up and self.liveness.alive(name)  # a dead peer stays down
        if index != p.ifindex or index not in members:
            old = dataplane.rehook_member(ipr, maps, self.front, peer_id, index, up)
            self.stats["rehooks"] += 1
            self.log(f"peer {name}: member {dev} re-created (ifindex {old} -> "
                     f"{index}), hooked again{'' if up else ', down'}")
            return True
        if check_hooks and not self._hooked(ipr, index, dev, ("ingress", "egress")):
            dataplane.rehook_member(ipr, maps, self.front, peer_id, index, up)
            self.stats["rehooks"] += 1
            self.log(f"peer {name}: member {dev} lost wgbpf's filter "
                     f"(tc qdisc or filter deleted), hooked again")
        elif bool(p.flags & abi.PEER_UP) != up:
            p.flags = (p.flags | abi.PEER_UP) if up else (p.flags & ~abi.PEER_UP)
            maps.set_peer(peer_id, p)
            maps.rebuild_flood()
            dead = not self.liveness.alive(name)
            self.log(f"peer {name}: {'dead' if dead else 'member'} {'up' if up else 'down'}")
        return False

    def _front(self, ipr, maps, link, c, check_hooks):
        front = self.front
        if link is None:
            if not self.front_gone:
                self.front_gone = True
                self.log(f"front {front} gone: peers' traffic is dropped until it returns")
            return False
        self.front_gone = False
        if link[0] != c.front_ifindex:
            old = dataplane.rehook_front(ipr, maps, front, link[0])
            self.stats["rehooks"] += 1
            self.log(f"front {front} re-created (ifindex {old} -> {link[0]}), hooked again")
            return True
        if check_hooks and not self._hooked(ipr, link[0], front, ("egress",)):
            dataplane.rehook_front(ipr, maps, front, link[0])
            self.stats["rehooks"] += 1
            self.log(f"front {front} lost wgbpf's filter (tc qdisc or filter deleted), hooked again")
        return False

    def _hooked(self, ipr, index, dev, hooks):
        """Whether our filter is on each hook of a device. A listing the
        kernel refuses (dataplane.TcError) tells nothing: taken as not
        hooked, so the device is hooked again (our own filter, by handle
        and priority: nothing else on it is touched)."""
        fname = dataplane.filter_name(self.front)
        try:
            return all(fname in dataplane.filters(ipr, index, hook) for hook in hooks)
        except dataplane.TcError as e:
            self.log(f"{dev}: cannot list its filters ({e}): hooking it again")
            return False

    def _report_foreign_hooks(self, peers, now, c):
        """Hooks whose filter of our name runs another instance's programs
        (the same front under another pin root: a container sharing this
        network namespace) are logged once each, not taken back: two
        daemons would take them from each other for ever. `wgbpf status
        --check` reports them until an attach (--force) or a detach there."""
        devices = [(p.member.decode(), now[p.member.decode()][0], "member")
                   for p in peers.values() if p.member.decode() in now]
        if c.front_ifindex and self.front in now:
            devices.append((self.front, now[self.front][0], "front"))
        found = set(dataplane.foreign_hooks(self.front, devices))
        for problem in sorted(found - self.foreign_hooks):
            self.log(f"{problem}: another wgbpf instance (another pin root?) took the hook; "
                     f"not taken back")
        self.foreign_hooks = found


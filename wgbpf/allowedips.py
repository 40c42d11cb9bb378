# SPDX-License-Identifier: GPL-2.0-or-later
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

"No peer": a prefix whose best route names no peer (a blackhole, a LAN
device) inside one that names a peer cannot be honoured. AllowedIPs has no
entry that hides a shorter one, so the covering peer keeps the addresses,
for steering and as sources, where the kernel (and the maps backend) would
use the better route. Such prefixes are counted (`no_peer_unhonoured` in
the status) and warned about once; see docs/allowedips.md.
"""
import ipaddress

from . import wireguard
from .sync import AF4, AF6, network_pkey


ECMP_PICK = "the heaviest peer, then the lowest tag"  # said in the status and the log


def pick(peers, weight, lowest_tag):
    """The one peer of an ECMP set a prefix goes to (AllowedIPs gives a
    prefix to one peer, so nothing is split): the heaviest (the route's
    weights, `weight`: {peer: weight}), then the one with the lowest tag
    (`lowest_tag`: {peer: its lowest tag as a prefix key}, IPv4 before
    IPv6, then by address): predictable from `ip route` and `wg show`
    alone."""
    return min(peers, key=lambda p: (-weight.get(p, 1), lowest_tag.get(p, b"\xff")))


def covered_by_peer(table, k):
    """Whether a prefix shorter than k, and holding it, names peers: the
    AllowedIP that would keep k's addresses. One probe per length."""
    fam, plen = k[0], k[1]
    bits = 32 if fam == AF4 else 128
    addr = int.from_bytes(k[2:], "big")
    for n in range(plen - 1, -1, -1):
        net = (addr >> (bits - n) << (bits - n)) if n else 0
        if table.best(bytes((fam, n)) + net.to_bytes(bits // 8, "big")):
            return True
    return False


def unhonoured(table, keys=None, have=None):
    """The "no peer" prefixes (best route names none) that a covering
    peer's AllowedIP keeps. `keys`: recheck only those, updating `have`
    (a covering route that comes or goes is seen at the next full sync)."""
    out = set() if keys is None else set(have or ())
    for k in (table.prefixes if keys is None else keys):
        out.discard(k)
        if k in table.prefixes and not table.best_id(k) and covered_by_peer(table, k):
            out.add(k)
    return out


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
        self.lowest_tag = {}        # peer id -> its lowest tag (pick's tie-break)
        for k, i in self.tags.items():
            self.lowest_tag[i] = min(k, self.lowest_tag.get(i, k))
        self.ecmp = set()           # prefixes whose route named several peers
        self.dead = set()           # public keys of peers judged dead (--dead-after)

    def owner(self, table, k):
        """The public key prefix k should belong to, or None."""
        i = self.tags.get(k)
        if i is not None:
            return self.keys[i] if self.keys[i] in self.present else None
        named = table.best(k)
        peers = [p for p in named if self.keys[p] in self.present] if named else None
        if not peers:
            self.ecmp.discard(k)
            return None
        if len(peers) == 1:
            self.ecmp.discard(k)
            return self.keys[peers[0]]
        self.ecmp.add(k)
        # a dead peer's share goes to the live ones (if any is left)
        alive = [p for p in peers if self.keys[p] not in self.dead] or peers
        weight = dict(zip(named, table.best_weights(k) or ()))
        return self.keys[pick(alive, weight, self.lowest_tag)]

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

# SPDX-License-Identifier: GPL-2.0-or-later
"""A WireGuard device's peers and AllowedIPs, read and written directly.

Two ways in, chosen as `wg` chooses: a userspace implementation
(wireguard-go) listens on /var/run/wireguard/DEV.sock and speaks the
cross-platform text protocol; otherwise the device is the kernel's, reached
over generic netlink ("wireguard" family, include/uapi/linux/wireguard.h).

Allowed IPs are the sync engine's prefix keys, `bytes([family, len]) + addr`.
Removing one allowed IP from its peer needs WGALLOWEDIP_F_REMOVE_ME (Linux
6.16) or `allowed_ip=-PREFIX` (newer wireguard-go); `probe_remove()` asks the
device itself whether it understands that, with a request that changes
nothing. `drop()` removes allowed IPs on any kernel and costs the same:
allowed IPs are exclusive across peers, so giving them to a throwaway peer
takes them off their holder, and removing that peer removes them (as Cilium
does, cilium/cilium#34612). Both go in one request.
"""
import errno
import ipaddress
import os
import socket
import struct

from .netlink import NETLINK_GENERIC, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, Netlink, attrs
from .sync import network_pkey

UAPI_DIR = "/var/run/wireguard"
AF4, AF6 = socket.AF_INET, socket.AF_INET6

# include/uapi/linux/wireguard.h
WG_CMD_GET_DEVICE, WG_CMD_SET_DEVICE = 0, 1
WGDEVICE_A_IFNAME, WGDEVICE_A_PEERS = 2, 8
WGPEER_A_PUBLIC_KEY, WGPEER_A_FLAGS, WGPEER_A_ALLOWEDIPS = 1, 3, 9
WGPEER_F_REMOVE_ME, WGPEER_F_REPLACE_ALLOWEDIPS, WGPEER_F_UPDATE_ONLY = 1, 2, 4
WGALLOWEDIP_A_FAMILY, WGALLOWEDIP_A_IPADDR, WGALLOWEDIP_A_CIDR_MASK, WGALLOWEDIP_A_FLAGS = 1, 2, 3, 4
WGALLOWEDIP_F_REMOVE_ME = 1

GENL_ID_CTRL, CTRL_CMD_GETFAMILY = 0x10, 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2
NLA_F_NESTED = 0x8000
# An attribute's length is 16 bits: the peers nest of one message must stay
# under 64 KiB, so long lists go out as several messages (as `wg` does).
NEST_MAX = 0xFFFF - 512

_NLA = struct.Struct("=HH")

# A throwaway peer's public key: this marker, then 16 random bytes. No one
# else uses such a key, and one left behind by a crash (between its creation
# and removal) is known by the marker and removed at the next start.
SCRATCH_MARK = b"wgbpf throwaway\0"


def scratch_key():
    return SCRATCH_MARK + os.urandom(32 - len(SCRATCH_MARK))


def is_scratch(key):
    return key.startswith(SCRATCH_MARK)


class WireGuardError(Exception):
    pass


def prefix_text(k):
    # inet_ntop: a tenth of ipaddress's cost, which shows at 100k prefixes
    return f"{socket.inet_ntop(k[0], k[2:])}/{k[1]}"


def text_prefix(text):
    return network_pkey(ipaddress.ip_network(text, strict=False))


def open_device(name):
    """The device named, by whichever way reaches it."""
    sock = os.path.join(UAPI_DIR, f"{name}.sock")
    if os.path.exists(sock):
        return UapiDevice(name, sock)
    return GenlDevice(name)


class PeerChange:
    """For one peer: allowed IPs to add, to remove, or (replace=True) the
    whole list, which `add` then holds. Only a change with create=True
    adds a peer the device does not have."""

    def __init__(self, key, add=(), remove=(), replace=False, create=False):
        self.key = key
        self.add = list(add)
        self.remove = list(remove)
        self.replace = replace
        self.create = create

    def __repr__(self):
        return f"PeerChange({self.key.hex()[:8]}, +{len(self.add)}, -{len(self.remove)}, replace={self.replace})"


# -- generic netlink (kernel WireGuard) ------------------------------------

def _attr(attr_type, payload):
    n = _NLA.size + len(payload)
    return _NLA.pack(n, attr_type) + payload + bytes((-n) & 3)


def _nest(attr_type, parts):
    body = b"".join(parts)
    if len(body) + 4 > 0xFFFF:
        raise WireGuardError(f"netlink attribute {attr_type} too long ({len(body)} bytes)")
    return _attr(attr_type | NLA_F_NESTED, body)


def _allowedip_head(family, addr_len):
    """Everything of one allowed-IP nest before its address, and the
    cidr attribute's header: the nest is built by concatenation, which
    matters at 100k prefixes."""
    size = 4 + 8 + _pad4(4 + addr_len) + 8
    head = (_NLA.pack(size, NLA_F_NESTED) + _attr(WGALLOWEDIP_A_FAMILY, struct.pack("=H", family))
            + _NLA.pack(4 + addr_len, WGALLOWEDIP_A_IPADDR))
    return head, size


def _pad4(n):
    return (n + 3) & ~3


_HEADS = {AF4: _allowedip_head(AF4, 4), AF6: _allowedip_head(AF6, 16)}
_CIDR = _NLA.pack(5, WGALLOWEDIP_A_CIDR_MASK)
_REMOVE = _attr(WGALLOWEDIP_A_FLAGS, struct.pack("=I", WGALLOWEDIP_F_REMOVE_ME))


def _allowedip(k, remove=False):
    head, size = _HEADS[k[0]]
    if remove:
        head = _NLA.pack(size + len(_REMOVE), NLA_F_NESTED) + head[4:]
        return head + k[2:] + _CIDR + bytes((k[1], 0, 0, 0)) + _REMOVE
    return head + k[2:] + _CIDR + bytes((k[1], 0, 0, 0))


def encode_peer_chunks(change):
    """A PeerChange as a list of peer nests, each small enough for one
    message. Only the first carries REPLACE_ALLOWEDIPS: the rest append."""
    items = [(k, False) for k in change.add] + [(k, True) for k in change.remove]
    head = _attr(WGPEER_A_PUBLIC_KEY, change.key)
    out = []
    i = 0
    first = True
    while first or i < len(items):
        flags = ((0 if change.create else WGPEER_F_UPDATE_ONLY)
                 | (WGPEER_F_REPLACE_ALLOWEDIPS if first and change.replace else 0))
        ips, size = [], 0
        while i < len(items):
            a = _allowedip(*items[i])
            if size + len(a) > NEST_MAX:
                break
            ips.append(a)
            size += len(a)
            i += 1
        parts = [head, _attr(WGPEER_A_FLAGS, struct.pack("=I", flags))]
        if ips or first and change.replace:
            parts.append(_nest(WGPEER_A_ALLOWEDIPS, ips))
        out.append(_nest(0, parts))
        first = False
    return out


def encode_peer_removal(key):
    return _nest(0, [_attr(WGPEER_A_PUBLIC_KEY, key), _attr(WGPEER_A_FLAGS, struct.pack("=I", WGPEER_F_REMOVE_ME))])


def parse_device(buf, off, end, peers):
    """One WG_CMD_GET_DEVICE reply into peers {public key: set of pkeys}.
    A peer with many allowed IPs continues in the next message."""
    for attr_type, a, b in attrs(buf, off, end):
        if attr_type != WGDEVICE_A_PEERS:
            continue
        for _i, pa, pb in attrs(buf, a, b):
            key, ips = None, []
            for pk, x, y in attrs(buf, pa, pb):
                if pk == WGPEER_A_PUBLIC_KEY:
                    key = bytes(buf[x:y])
                elif pk == WGPEER_A_ALLOWEDIPS:
                    for _j, ia, ib in attrs(buf, x, y):
                        fam = cidr = addr = None
                        for ak, u, v in attrs(buf, ia, ib):
                            if ak == WGALLOWEDIP_A_FAMILY:
                                fam = struct.unpack_from("=H", buf, u)[0]
                            elif ak == WGALLOWEDIP_A_IPADDR:
                                addr = bytes(buf[u:v])
                            elif ak == WGALLOWEDIP_A_CIDR_MASK:
                                cidr = buf[u]
                        if fam in (AF4, AF6) and addr is not None and cidr is not None:
                            ips.append(bytes((fam, cidr)) + addr)
            if key is not None:
                peers.setdefault(key, set()).update(ips)
    return peers


# -- counters and handshakes (liveness) -------------------------------------

WGPEER_A_LAST_HANDSHAKE_TIME, WGPEER_A_RX_BYTES, WGPEER_A_TX_BYTES = 6, 7, 8


def parse_counters(buf, off, end, out):
    """One WG_CMD_GET_DEVICE reply into out {public key: [rx, tx,
    handshake]}: bytes received and sent, the last handshake's wall-clock
    time (0: never). A peer continued in the next message (its allowed
    IPs) repeats only its key."""
    for attr_type, a, b in attrs(buf, off, end):
        if attr_type != WGDEVICE_A_PEERS:
            continue
        for _i, pa, pb in attrs(buf, a, b):
            key, got = None, {}
            for pk, x, y in attrs(buf, pa, pb):
                if pk == WGPEER_A_PUBLIC_KEY:
                    key = bytes(buf[x:y])
                elif pk == WGPEER_A_LAST_HANDSHAKE_TIME and y - x >= 16:
                    sec, nsec = struct.unpack_from("=qq", buf, x)
                    got["handshake"] = sec + nsec / 1e9
                elif pk in (WGPEER_A_RX_BYTES, WGPEER_A_TX_BYTES) and y - x >= 8:
                    got["rx" if pk == WGPEER_A_RX_BYTES else "tx"] = struct.unpack_from("=Q", buf, x)[0]
            if key is not None and got:
                c = out.setdefault(key, [0, 0, 0.0])
                c[0], c[1], c[2] = got.get("rx", c[0]), got.get("tx", c[1]), got.get("handshake", c[2])
    return out


def parse_uapi_counters(lines):
    """`get=1` lines into {public key: [rx, tx, handshake]}."""
    out, c = {}, None
    for line in lines:
        k, _, v = line.partition("=")
        if k == "public_key":
            c = out.setdefault(bytes.fromhex(v), [0, 0, 0.0])
        elif c is None:
            continue
        elif k == "rx_bytes":
            c[0] = int(v)
        elif k == "tx_bytes":
            c[1] = int(v)
        elif k == "last_handshake_time_sec":
            c[2] += int(v)
        elif k == "last_handshake_time_nsec":
            c[2] += int(v) / 1e9
    return out


class GenlDevice:
    flavour = "kernel"  # which WireGuard: the kernel module

    def __init__(self, name):
        self.name = name
        self.nl = Netlink(rcvbuf=4 << 20, protocol=NETLINK_GENERIC)
        try:
            self.nl.sock.setsockopt(socket.SOL_SOCKET, 32, 4 << 20)  # SO_SNDBUFFORCE
        except OSError:
            pass
        self.family = self._family_id()

    def close(self):
        self.nl.close()

    def _send(self, mtype, flags, cmd, attrs):
        self.nl.send(mtype, flags, struct.pack("=BBH", cmd, 1, 0) + attrs)  # genlmsghdr first

    def _replies(self):
        """Yield (buf, attributes offset, end) of each reply until DONE or
        the ack; an error reply raises OSError."""
        while True:
            for mtype, buf, off, end in self.nl.messages():
                if mtype in (NLMSG_DONE, NLMSG_ERROR):
                    return
                yield buf, off + 4, end  # past genlmsghdr

    def _family_id(self):
        self._send(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, CTRL_CMD_GETFAMILY,
                   _attr(CTRL_ATTR_FAMILY_NAME, b"wireguard\0"))
        fid = None
        try:
            for buf, off, end in self._replies():
                for attr_type, a, _b in attrs(buf, off, end):
                    if attr_type == CTRL_ATTR_FAMILY_ID:
                        fid = struct.unpack_from("=H", buf, a)[0]
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise WireGuardError(f"{self.name}: no kernel WireGuard here (the wireguard module is not "
                                     f"loaded) and no userspace socket {UAPI_DIR}/{self.name}.sock") from None
            raise
        if fid is None:
            raise WireGuardError("the kernel's generic netlink did not name the wireguard family")
        return fid

    def _get_device(self, parse):
        """One WG_CMD_GET_DEVICE dump of the device, every reply parsed by
        `parse` into one dict; an error reply raises OSError."""
        self._send(self.family, NLM_F_REQUEST | NLM_F_DUMP, WG_CMD_GET_DEVICE,
                   _attr(WGDEVICE_A_IFNAME, self.name.encode() + b"\0"))
        out = {}
        for buf, off, end in self._replies():
            parse(buf, off, end, out)
        return out

    def peers(self):
        try:
            return self._get_device(parse_device)
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.EOPNOTSUPP):
                raise WireGuardError(f"{self.name}: not a WireGuard device ({e.strerror})") from None
            raise

    def counters(self):
        """Each peer's [rx_bytes, tx_bytes, last handshake (wall clock, 0:
        never)], as `wg show DEV dump` prints them."""
        try:
            return self._get_device(parse_counters)
        except OSError as e:
            raise WireGuardError(f"{self.name}: cannot read its peers: {e.strerror}") from None

    def _set(self, peer_nests):
        ifname = _attr(WGDEVICE_A_IFNAME, self.name.encode() + b"\0")
        # pack peer nests into as few messages as the 64 KiB nest allows
        batch, size = [], 0
        for p in peer_nests + [None]:
            if p is None or (batch and size + len(p) > NEST_MAX):
                if batch:
                    self._send(self.family, NLM_F_REQUEST | NLM_F_ACK, WG_CMD_SET_DEVICE,
                               ifname + _nest(WGDEVICE_A_PEERS, batch))
                    for _ in self._replies():
                        pass
                batch, size = [], 0
            if p is not None:
                batch.append(p)
                size += len(p)

    def apply(self, changes):
        """Write PeerChanges in order; each peer's chunks stay in order, so a
        replacement is whole once its last message is acknowledged."""
        nests = []
        for c in changes:
            nests.extend(encode_peer_chunks(c))
        try:
            self._set(nests)
        except OSError as e:
            raise WireGuardError(f"{self.name}: the kernel refused an AllowedIPs change: {e.strerror}") from None

    def probe_remove(self, key, absent):
        """Does this kernel know WGALLOWEDIP_F_REMOVE_ME? Asks it to remove
        `absent` (a prefix peer `key` does not hold) from that peer: 6.16+
        does nothing and says so; older kernels reject the unknown attribute
        (strict nested parsing) before touching anything."""
        try:
            self._set(encode_peer_chunks(PeerChange(key, remove=[absent])))
        except OSError as e:
            if e.errno == errno.EINVAL:
                return False
            raise
        return True

    def drop(self, prefixes):
        """Remove allowed IPs from whichever peer holds them: in one request
        (one message up to ~2,500 prefixes) a throwaway peer is created
        holding them, which moves them off their holder, then removed."""
        key = scratch_key()
        nests = encode_peer_chunks(PeerChange(key, add=prefixes, create=True)) + [encode_peer_removal(key)]
        try:
            self._set(nests)
        except BaseException as e:
            self.remove_peers([key])  # never left behind, whatever failed
            if isinstance(e, OSError):
                raise WireGuardError(f"{self.name}: the kernel refused an AllowedIPs removal: {e.strerror}") from None
            raise

    def remove_peers(self, keys):
        """Remove peers (throwaway ones); best effort: an absent peer or an
        error is no reason to fail the caller."""
        try:
            self._set([encode_peer_removal(k) for k in keys])
        except OSError:
            pass


# -- the text protocol (wireguard-go and other userspace implementations) ---

class UapiDevice:
    flavour = "userspace"  # which WireGuard: wireguard-go or another

    def __init__(self, name, path):
        self.name = name
        self.path = path

    def close(self):
        pass

    def _talk(self, request):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(self.path)
            except OSError as e:
                raise WireGuardError(f"{self.name}: cannot reach {self.path}: {e.strerror}") from None
            s.sendall(request.encode())
            data = b""
            while not data.endswith(b"\n\n"):
                got = s.recv(1 << 20)
                if not got:
                    break
                data += got
        lines = data.decode().splitlines()
        err = next((int(x[6:]) for x in lines if x.startswith("errno=")), None)
        if err is None:
            raise WireGuardError(f"{self.name}: no answer on {self.path}")
        return err, lines

    def peers(self):
        err, lines = self._talk("get=1\n\n")
        if err:
            raise WireGuardError(f"{self.name}: get failed: errno {err}")
        out, key = {}, None
        for line in lines:
            k, _, v = line.partition("=")
            if k == "public_key":
                key = bytes.fromhex(v)
                out[key] = set()
            elif k == "allowed_ip" and key is not None:
                out[key].add(text_prefix(v))
        return out

    def counters(self):
        """As GenlDevice.counters."""
        err, lines = self._talk("get=1\n\n")
        if err:
            raise WireGuardError(f"{self.name}: get failed: errno {err}")
        return parse_uapi_counters(lines)

    @staticmethod
    def _request(changes, remove_peers=()):
        lines = ["set=1"]
        for c in changes:
            lines.append(f"public_key={c.key.hex()}")
            if not c.create:
                lines.append("update_only=true")
            if c.replace:
                lines.append("replace_allowed_ips=true")
            lines += [f"allowed_ip={prefix_text(k)}" for k in c.add]
            lines += [f"allowed_ip=-{prefix_text(k)}" for k in c.remove]
        for key in remove_peers:
            lines += [f"public_key={key.hex()}", "remove=true"]
        return "\n".join(lines) + "\n\n"

    def apply(self, changes):
        err, _ = self._talk(self._request(changes))
        if err:  # wireguard-go answers -errno
            raise WireGuardError(f"{self.name}: the device refused an AllowedIPs change: "
                                 f"{os.strerror(abs(err))}")

    def probe_remove(self, key, absent):
        """Does it know `allowed_ip=-PREFIX`? Older implementations answer
        the unknown form with an error before changing anything."""
        err, _ = self._talk(self._request([PeerChange(key, remove=[absent])]))
        return err == 0

    def drop(self, prefixes):
        """As GenlDevice.drop: one request creates a throwaway peer holding
        the prefixes (taking them off their holder) and removes it."""
        key = scratch_key()
        try:
            err, _ = self._talk(self._request([PeerChange(key, add=prefixes, create=True)], remove_peers=[key]))
        except BaseException:
            self.remove_peers([key])
            raise
        if err:
            self.remove_peers([key])  # it stopped part way: never left behind
            raise WireGuardError(f"{self.name}: the device refused an AllowedIPs removal: {os.strerror(abs(err))}")

    def remove_peers(self, keys):
        """Remove peers (throwaway ones); best effort."""
        try:
            self._talk(self._request([], remove_peers=keys))
        except WireGuardError:
            pass

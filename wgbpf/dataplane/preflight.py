# SPDX-License-Identifier: GPL-2.0-or-later
"""What attach checks before it changes anything (refused means untouched):
bpffs and the pin root, the devices (layer 3, MTUs), what FIB mode needs
from the kernel; and the host's sysctls it warns about or sets (forwarding,
ICMP redirects)."""
import ctypes
import errno
import os

from .. import abi, bpfsys, maps, nsenter
from .errors import AttachError

ARPHRD_NONE = 0xFFFE
IFF_UP = 1


def enter_netns(name):
    """Join network namespace `name` for good (nsenter.enter), with an
    AttachError that names it."""
    try:
        nsenter.enter(name)
    except OSError as e:
        raise AttachError(f"network namespace {name!r}: {e.strerror}") from None


def ensure_bpffs():
    """Mount bpffs at /sys/fs/bpf when missing."""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[1] == "/sys/fs/bpf" and parts[2] == "bpf":
                return
    if own_mount_namespace():
        raise AttachError("bpffs is not mounted at /sys/fs/bpf in this mount namespace, which is this "
                          "command's own (`ip netns exec`?): pins made here would vanish when it "
                          "exits; run `wgbpf --netns NAME ...` instead")
    os.makedirs("/sys/fs/bpf", exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", b"/sys/fs/bpf", b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise AttachError(f"mounting bpffs at /sys/fs/bpf: {os.strerror(err)}")


def own_mount_namespace():
    """Whether we run in a mount namespace our parent is not in: made for
    this command alone (`ip netns exec`, `unshare -m`), gone when it ends."""
    try:
        here, parent = os.stat("/proc/self/ns/mnt"), os.stat(f"/proc/{os.getppid()}/ns/mnt")
    except OSError:
        return False
    return (here.st_dev, here.st_ino) != (parent.st_dev, parent.st_ino)


def check_pin_root(root=None):
    """The pin root must be on a bpffs mount: elsewhere pinning fails with a
    bare EPERM (WGBPF_PIN_ROOT pointed at a plain directory, bpffs gone)."""
    root = os.path.realpath(root or maps.PIN_ROOT)
    best, fstype = "", None
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and len(parts[1]) >= len(best) and \
                    (root == parts[1] or root.startswith(parts[1].rstrip("/") + "/")):
                best, fstype = parts[1], parts[2]
    if fstype != "bpf":
        raise AttachError(f"pin root {root} is not on a bpffs mount ({fstype} at {best}); "
                          f"pins must be under a bpffs mount such as /sys/fs/bpf")


def link_info(ipr, name):
    """(ifindex, mtu, is_layer3, link_kind, up) of a device, or None if absent."""
    links = ipr.link("get", ifname=name) if name else []
    if not links:
        return None
    link = links[0]
    link_kind = None
    linkinfo = link.get_attr("IFLA_LINKINFO")
    if linkinfo is not None:
        link_kind = linkinfo.get_attr("IFLA_INFO_KIND")
    return (link["index"], link.get_attr("IFLA_MTU"), link["ifi_type"] == ARPHRD_NONE,
            link_kind, bool(link["flags"] & IFF_UP))


def _get_link(ipr, name):
    try:
        return link_info(ipr, name)
    except Exception as e:  # pyroute2 raises NetlinkError(19) for a missing device
        if getattr(e, "code", None) == errno.ENODEV:
            return None
        raise


def check_links(ipr, cfg):
    """Resolve and check every device before anything is changed.

    Returns (front ifindex or 0, {peer name: (ifindex, up)}).
    """
    front_idx = 0
    front_mtu = None
    if not cfg.members_only:
        front = _get_link(ipr, cfg.front)
        if front is None:
            raise AttachError(f"front device {cfg.front!r} does not exist "
                              f"(with --members-only, FRONT only names the instance)")
        front_idx, front_mtu, l3, link_kind, _ = front
        if not l3:
            raise AttachError(f"front {cfg.front!r} is not a layer-3 device (kind {link_kind or 'unknown'}): "
                              f"the front must be a WireGuard or TUN device")
    members = {}
    for p in cfg.peers:
        m = _get_link(ipr, p.member)
        if m is None:
            raise AttachError(f"peer {p.name!r}: member device {p.member!r} does not exist")
        idx, mtu, l3, link_kind, up = m
        if not l3:
            raise AttachError(f"peer {p.name!r}: member {p.member!r} is not a layer-3 device "
                              f"(kind {link_kind or 'unknown'}): members must be WireGuard or TUN devices")
        if front_mtu is not None and front_mtu > mtu:
            raise AttachError(f"front {cfg.front!r} MTU {front_mtu} exceeds member {p.member!r} "
                              f"MTU {mtu}: packets over {mtu} bytes would be dropped silently; "
                              f"lower the front's MTU or raise the member's")
        if idx == front_idx:
            raise AttachError(f"peer {p.name!r}: member {p.member!r} is the front device")
        members[p.name] = (idx, up)
    return front_idx, members


def _sysctl(path):
    try:
        with open(f"/proc/sys/net/{path}") as f:
            return f.read().strip()
    except OSError:
        return None


def check_fib(cfg, front_idx, links):
    """FIB mode: what the kernel offers, found by asking it.

    bpf_fib_lookup answers only where forwarding is on (it checks the device
    it looks up from: the front, or each member without one), and a table
    other than main needs BPF_FIB_LOOKUP_TBID (Linux 6.7). Both are probed
    with a 20-instruction program run through BPF_PROG_TEST_RUN."""
    devices = [cfg.front] if front_idx else [p.member for p in cfg.peers]
    for dev in devices:
        for fam, key in (("ipv4", f"ipv4/conf/{dev}/forwarding"), ("ipv6", f"ipv6/conf/{dev}/forwarding")):
            if _sysctl(key) != "1":
                raise AttachError(f"--lookup fib: forwarding is off on {dev} ({fam}): bpf_fib_lookup "
                                  f"would refuse every lookup; sysctl -w net.{key.replace('/', '.')}=1")
    ifindex = front_idx or links[cfg.peers[0].name][0]
    tables = {t for t in (cfg.fib_table, cfg.accept_table) if t}
    found = {"forwarding": "on", "tbid": None, "table": cfg.fib_table or 254,
             "accept_table": cfg.accept_table or None}
    if tables:
        rc = bpfsys.fib_probe(ifindex, next(iter(tables)),
                              abi.FIB_LOOKUP_DIRECT | abi.FIB_LOOKUP_SKIP_NEIGH | abi.FIB_LOOKUP_TBID)
        found["tbid"] = rc >= 0
        if rc < 0:
            raise AttachError(f"--fib-table/--accept-table: this kernel's bpf_fib_lookup has no "
                              f"BPF_FIB_LOOKUP_TBID flag ({os.strerror(-rc)}): only the main table "
                              f"can be used (Linux 6.7 added it)")
    return found


def forwarding_off(devices):
    """The forwarding sysctls that are off, for traffic between peers in
    any lookup mode: it enters by one device (the front, where
    member_ingress hands it over; each member without one) and the kernel
    forwards it. IPv4 asks the device it entered by, IPv6 conf/all."""
    keys = [f"ipv4/conf/{dev}/forwarding" for dev in devices] + ["ipv6/conf/all/forwarding"]
    # a device gone has no sysctl (status says it is gone), nor IPv6 when disabled
    return [f"net.{k.replace('/', '.')}" for k in keys if _sysctl(k) not in ("1", None)]


def forwarding_warning(off):
    if not off:
        return None
    return (f"forwarding is off ({', '.join(k + '=0' for k in off)}): the kernel drops every "
            f"packet between peers; sysctl -w {' '.join(k + '=1' for k in off)}")


def quiet_redirects(front):
    """Turn off ICMP redirects on the front; returns a warning or None.

    Traffic between two peers enters and leaves the host through the front,
    which the kernel takes as a detour and answers with ICMP redirects to
    the sender. The kernel sends them if conf/all OR conf/<front> says so,
    and conf/all is the whole host's: wgbpf only warns about it."""
    base = "/proc/sys/net/ipv4/conf"
    try:
        with open(f"{base}/{front}/send_redirects", "w") as f:
            f.write("0")
        with open(f"{base}/all/send_redirects") as f:
            if f.read().strip() != "0":
                return ("net.ipv4.conf.all.send_redirects is 1: the host will send ICMP redirects "
                        "for traffic between peers; set it to 0")
    except OSError as e:
        return f"could not turn off ICMP redirects on {front}: {e.strerror}"
    return None

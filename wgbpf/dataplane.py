"""Compile and load the data plane with BCC, pin it, and hook it into tc.

attach() is a reconcile: it makes the pinned maps and the tc filters match a
Config, touching only what differs. Maps are created (or reopened) before BCC
compiles, and BCC opens them by pin path, so reloading the programs never
loses a route; filters are swapped with `tc filter replace` on a fixed
priority and handle, which the kernel does atomically, so an upgrade drops
no packet.
"""
import ctypes
import errno
import hashlib
import json
import os
import struct
import time

from . import abi, bpfsys, instance, maps, netlink, nsenter
from .maps import Maps, MapError, network, pin_dir, route_peers

# The data plane's C: bpf/ beside the package in a checkout, else where the
# .deb puts it (architecture-independent data: /usr/share).
BPF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bpf")
if not os.path.exists(os.path.join(BPF_DIR, "wgbpf.c")):
    BPF_DIR = "/usr/share/wgbpf/bpf"
SOURCE = os.path.join(BPF_DIR, "wgbpf.c")

# Our tc filter: a fixed (priority, handle) so replace hits the same slot.
TC_PRIO = 0x5747
TC_HANDLE = 1
HOOK_PARENT = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}
HOOK_PARENT_ID = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}
ARPHRD_NONE = 0xFFFE
IFF_UP = 1


class AttachError(Exception):
    """Attach refused: the message says what would break."""


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


def iproute():
    """An IPRoute socket (pyroute2), for the link and tc work; a function so
    tests can swap it."""
    from pyroute2 import IPRoute
    return IPRoute()


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


def cflags(directory):
    return [f"-I{BPF_DIR}", f'-DWGBPF_PIN_DIR="{directory}"', "-w"]


def source_text(name="wgbpf.c", seen=None):
    """wgbpf.c with its own headers (bpf/*.h) in place of their #include
    lines, each once: BCC turns map operations (routes4.lookup(...)) into
    map calls only in the text it is handed, not in the files it includes.
    #line markers keep compiler messages naming the real file and line."""
    seen = {name} if seen is None else seen
    path = os.path.join(BPF_DIR, name)
    out = [f'#line 1 "{path}"']
    with open(path) as f:
        for n, line in enumerate(f, 1):
            header = line.split('"')[1] if line.startswith('#include "') else None
            if header is None:
                out.append(line.rstrip("\n"))
            elif header in seen:
                out.append("")  # included already (the headers have guards)
            else:
                seen.add(header)
                out += [source_text(header, seen), f'#line {n + 1} "{path}"']
    return "\n".join(out) + "\n"


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


def compile_programs(directory, debug=False, prefix="", suffix=""):
    """BCC compile + load against the maps pinned in `directory`.

    Returns (bpf object, {program name: fd}); keep the object alive until the
    programs are pinned or attached. `prefix`/`suffix` are C text put around
    wgbpf.c (benchmarks add their programs and WGBPF_BENCH_* hooks so).
    """
    from bcc import BPF  # imported here: a second of import, only attach needs it
    text = prefix + source_text() + suffix
    b = BPF(text=text.encode(), cflags=cflags(directory), debug=0x8 if debug else 0)
    fds = {name: b.load_func(name.encode(), BPF.SCHED_CLS).fd for name in abi.PROGRAMS}
    flood = b.load_func(abi.FLOOD_PROG.encode(), BPF.SCHED_CLS)
    tail = b.get_table(b"tail")
    tail[ctypes.c_int(abi.TAIL_FLOOD)] = ctypes.c_int(flood.fd)
    # A prog array is emptied when its last user-space reference goes, so
    # it is pinned with the programs; it is not a map of the ABI.
    fds["tail"] = tail.map_fd
    return b, fds


def prog_tag(fd):
    return bytes(bpfsys.prog_info(fd).tag).hex()


def pinned_prog_tag(directory, name):
    try:
        fd = bpfsys.obj_get(os.path.join(directory, name))
    except OSError:
        return None
    try:
        return prog_tag(fd)
    finally:
        os.close(fd)


def build_key(directory):
    """What the compiled programs depend on: the C sources, the compile
    flags (they name the pin directory) and the kernel (its headers)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(BPF_DIR)):
        if name.endswith((".c", ".h")):
            with open(os.path.join(BPF_DIR, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read() + b"\0")
    u = os.uname()
    h.update("\0".join(cflags(directory) + [u.release, u.version]).encode())
    return h.hexdigest()


def _pinned_ids(directory):
    fds = pinned_programs(directory)
    try:
        return {n: bpfsys.prog_info(fd).id for n, fd in fds.items()}
    finally:
        for fd in fds.values():
            os.close(fd)


def record_build(front, directory, key):
    from . import files
    try:
        os.makedirs(os.path.dirname(instance.build_path(front)), mode=0o755, exist_ok=True)
        files.write_atomic(instance.build_path(front), json.dumps({"key": key, "programs": _pinned_ids(directory)}),
                           mode=0o600)
    except OSError:
        pass  # only costs a compile at the next attach


def reusable_programs(front, directory, key):
    """{program name: fd} of the pinned programs when they were built from
    exactly this source and flags (no compile needed), else None."""
    try:
        with open(instance.build_path(front)) as f:
            rec = json.load(f)
        if rec.get("key") != key or not os.path.exists(os.path.join(directory, "tail")):
            return None
        if _pinned_ids(directory) != rec.get("programs"):
            return None
        return pinned_programs(directory)
    except (OSError, ValueError, AttributeError):
        return None


def _pin_prog(fd, path):
    # bpffs refuses names with a dot
    tmp = os.path.join(os.path.dirname(path), "new_" + os.path.basename(path))
    if os.path.exists(tmp):
        os.unlink(tmp)
    bpfsys.obj_pin(fd, tmp)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def filter_name(front):
    return f"wgbpf-{front}"


def ensure_filter(ipr, ifindex, hook, fd, name):
    """Our filter on one hook; True when the clsact qdisc was added for it."""
    created = True
    try:
        ipr.tc("add", "clsact", ifindex)
    except Exception as e:
        if getattr(e, "code", None) != errno.EEXIST:
            raise
        created = False
    ipr.tc("replace-filter", "bpf", ifindex, TC_HANDLE, fd=fd, name=name,
           parent=HOOK_PARENT[hook], classid=1, direct_action=True, prio=TC_PRIO)
    return created


def hook_member(ipr, ifindex, fds, name):
    """Both member programs on one device: ingress checks sources, egress
    guards routes that leave by the member itself. True if clsact was
    added."""
    created = ensure_filter(ipr, ifindex, "ingress", fds["member_ingress"], name)
    ensure_filter(ipr, ifindex, "egress", fds["member_egress"], name)
    return created


def links(ipr):
    """{ifindex: name} of every device in this namespace."""
    return {l["index"]: l.get_attr("IFLA_IFNAME") for l in ipr.get_links()}


def host_addresses(ipr):
    """{ip_address: ifindex} of every address of this namespace."""
    import ipaddress
    out = {}
    for a in ipr.get_addr():
        text = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
        if text:
            out[ipaddress.ip_address(text.split("%")[0])] = a["index"]
    return out


def vet(ipr, m, member_names, devices=None):
    """The guard's state from what the namespace holds now: every device
    that is not one of our members may forward to peers (a member's own
    traffic goes through member_ingress and arrives by the front), and every
    host address is a martian source. `devices`: {ifindex: name}, if the
    caller has dumped them already. Returns the changes made."""
    changes = []
    devices = links(ipr) if devices is None else devices
    want = {i for i, n in devices.items() if n not in member_names}
    have = m.forwarders()
    for i in want - have:
        m.set_forwarder(i)
    for i in have - want:
        m.del_forwarder(i)
    if want != have:
        changes.append(f"forwarders: {len(want)} devices vetted")
    want_local = host_addresses(ipr)
    have_local = m.locals()
    for a, i in want_local.items():
        if have_local.get(a) != i:
            m.set_local(a, i)
    for a in set(have_local) - set(want_local):
        m.del_local(a)
    return changes


def other_devices(front):
    """({member device: instance}, {front device: instance}) recorded by
    the other instances of this namespace."""
    members, fronts = {}, {}
    for other in maps.instances():
        if other == front:
            continue
        try:
            with Maps.open(pin_dir(other), readonly=True) as m:
                members.update({p.member.decode(): other for p in m.peers().values()})
                c = m.config()
                if c.front:
                    fronts[c.front.decode()] = other
        except (MapError, OSError):
            continue
    return members, fronts


def other_members(front):
    """Member device names of the other instances in this namespace: never
    vetted by ours (a re-created one is theirs to hook)."""
    return set(other_devices(front)[0])


def pinned_programs(directory):
    """{program name: fd} of an instance's pinned programs (caller closes)."""
    fds = {}
    try:
        for pname in abi.PROGRAMS:
            fds[pname] = bpfsys.obj_get(os.path.join(directory, pname))
    except OSError:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


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
        m.del_forwarder(ifindex)
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


def filters(ipr, ifindex, hook):
    """Names of the bpf filters on one hook of a device."""
    out = []
    try:
        msgs = ipr.get_filters(index=ifindex, parent=HOOK_PARENT_ID[hook])
    except Exception:
        return out
    for msg in msgs:
        opts = msg.get_attr("TCA_OPTIONS")
        if msg.get_attr("TCA_KIND") == "bpf" and opts is not None:
            name = opts.get_attr("TCA_BPF_NAME")
            if name:
                out.append(name)
    return out


# rtnetlink's tc filter dump, read raw: pyroute2 (0.7 to 0.9) does not
# decode TCA_BPF_ID, the id of the program a bpf filter runs
RTM_GETTFILTER = 46
TCMSG = struct.Struct("=B3xiIII")  # struct tcmsg: family, ifindex, handle, parent, info
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_NAME, TCA_BPF_ID = 7, 11


def filter_programs(ifindex, hook, nl=None):
    """{name: program id} of the bpf filters on one hook of a device (over
    `nl`, a netlink.Netlink, else a socket of its own)."""
    own = nl is None
    nl = netlink.Netlink(rcvbuf=1 << 20) if own else nl
    out = {}
    try:
        for _, buf, off, end in nl.dump(RTM_GETTFILTER, 0, TCMSG.pack(0, ifindex, 0, HOOK_PARENT_ID[hook], 0)):
            tc_kind = name = prog_id = None
            for attr_type, a, b in netlink.attrs(buf, off + TCMSG.size, end):
                if attr_type == TCA_KIND:
                    tc_kind = bytes(buf[a:b]).rstrip(b"\0").decode()
                elif attr_type == TCA_OPTIONS:
                    for opt, x, y in netlink.attrs(buf, a, b):
                        if opt == TCA_BPF_NAME:
                            name = bytes(buf[x:y]).rstrip(b"\0").decode()
                        elif opt == TCA_BPF_ID:
                            prog_id = struct.unpack_from("=I", buf, x)[0]
            if tc_kind == "bpf" and name:
                out.setdefault(name, prog_id)
    except OSError:
        return {}  # the device is gone: nothing hooked
    finally:
        if own:
            nl.close()
    return out


# The program each hook of a device runs, by the device's role.
HOOK_PROGRAMS = {"front": {"egress": "front_egress"},
                 "member": {"ingress": "member_ingress", "egress": "member_egress"}}


def pinned_ids(directory):
    """({program name: id}, {map name: id}) of what is pinned in an
    instance's directory; a pin missing is left out."""
    progs, map_ids = {}, {}
    for names, out, info, readonly in ((abi.PROGRAMS, progs, bpfsys.prog_info, False),
                                       (abi.MAPS, map_ids, bpfsys.map_info, True)):
        for n in names:
            try:
                fd = bpfsys.obj_get(os.path.join(directory, n), readonly=readonly)
            except OSError:
                continue
            try:
                out[n] = info(fd).id
            finally:
                os.close(fd)
    return progs, map_ids


def reads_maps(prog_id, map_ids):
    """Whether the program reads any of the maps (ids): it belongs to the
    instance that pinned them (an older build of it, say). A program gone
    meanwhile holds nothing: True."""
    try:
        fd = bpfsys.prog_fd_by_id(prog_id)
    except (OSError, TypeError):
        return True
    try:
        return bool(set(bpfsys.prog_map_ids(fd)) & set(map_ids))
    finally:
        os.close(fd)


def hook_programs(ifindex, role, name):
    """{hook: program id of our filter (by name) there, or None} of one
    device in its role ("front", "member")."""
    return {hook: filter_programs(ifindex, hook).get(name) for hook in HOOK_PROGRAMS[role]}


def program_problem(device, role, programs, pinned):
    """Our filter on a hook of the device running another program than the
    one this instance pinned, or None: an instance of the same front under
    another pin root (a container sharing this network namespace with a
    bpffs of its own) took the hook. `programs`: {hook: program id or None}
    (hook_programs); `pinned`: {program name: id} (pinned_ids)."""
    for hook, prog in HOOK_PROGRAMS[role].items():
        found = programs.get(hook)
        if found is not None and prog in pinned and found != pinned[prog]:
            return f"tc {hook} hook on {device} runs program id {found}, not this instance's {pinned[prog]}"
    return None


def foreign_hooks(front, devices):
    """program_problem of each of the instance's devices [(name, ifindex,
    role)] whose hooks run another instance's programs."""
    pinned, _ = pinned_ids(pin_dir(front))
    name = filter_name(front)
    found = (program_problem(dev, role, hook_programs(ifindex, role, name), pinned)
             for dev, ifindex, role in devices)
    return [problem for problem in found if problem]


def check_hooks_ours(ipr, cfg, front_idx, links):
    """Refuse hooks where our filter (by name) runs another instance's
    program: one of the same front under another pin root (a container
    sharing this network namespace with a bpffs of its own). Its program
    reads none of our pinned maps; taking the hook would leave that
    instance steering nothing while it reports itself hooked. `attach
    --force` takes it over (the other instance's status then says so)."""
    directory = pin_dir(cfg.front)
    progs, map_ids = pinned_ids(directory)
    name = filter_name(cfg.front)
    devices = [(pc.member, links[pc.name][0], "member") for pc in cfg.peers]
    if front_idx:
        devices.append((cfg.front, front_idx, "front"))
    for device, ifindex, role in devices:
        for hook, prog in HOOK_PROGRAMS[role].items():
            prog_id = filter_programs(ifindex, hook).get(name)
            if prog_id is None or prog_id in progs.values() or reads_maps(prog_id, map_ids.values()):
                continue
            raise AttachError(
                f"tc {hook} hook on {device} runs program id {prog_id}, not this instance's "
                f"({progs[prog] if prog in progs else 'none'} pinned under {directory}): another wgbpf "
                f"instance {cfg.front!r} with another pin root (a container sharing this network "
                f"namespace?) holds it; detach it there, or attach --force to take the hooks over")


def bpf_filters(hooks):
    """{(ifindex, hook): {name: program id} of the bpf filters there} for
    each (ifindex, hook) asked, over one netlink socket: what `wgbpf status`
    checks."""
    nl = netlink.Netlink(rcvbuf=1 << 20)
    try:
        return {(ifindex, hook): filter_programs(ifindex, hook, nl) for ifindex, hook in set(hooks)}
    finally:
        nl.close()


def hook_filters(ipr, ifindex, hook):
    """[(tc_kind, bpf name or None, priority, handle)] of every tc filter on
    one hook of a device, whoever added it."""
    try:
        msgs = ipr.get_filters(index=ifindex, parent=HOOK_PARENT_ID[hook])
    except Exception:
        return []
    out = []
    for m in msgs:
        if not m["handle"]:  # the head of a priority (u32's), not a filter
            continue
        tc_kind = m.get_attr("TCA_KIND")
        opts = m.get_attr("TCA_OPTIONS")
        name = opts.get_attr("TCA_BPF_NAME") if tc_kind == "bpf" and opts is not None else None
        out.append((tc_kind, name, m["info"] >> 16, m["handle"]))
    return out


def hook_owner(ipr, ifindex):
    """The wgbpf instance (front name) whose filter is on a device, or None.
    Ours are found by name (wgbpf-<front>); a bpf filter of another name in
    our slot (priority, handle) is named as found."""
    for hook in HOOK_PARENT:
        for tc_kind, name, prio, handle in hook_filters(ipr, ifindex, hook):
            if tc_kind != "bpf":
                continue
            if name and name.startswith("wgbpf-"):
                return name[len("wgbpf-"):]
            if (prio, handle) == (TC_PRIO, TC_HANDLE):
                return f"{name or 'unnamed'} (not a wgbpf filter)"
    return None


def check_owners(ipr, cfg, front_idx, links):
    """Refuse devices another instance holds, before anything changes: its
    filter on them, or its peers naming them (hooked or not yet)."""
    devices = [(f"peer {pc.name!r}: member {pc.member!r}", pc.member, links[pc.name][0])
               for pc in cfg.peers]
    if front_idx:
        devices.append((f"front {cfg.front!r}", cfg.front, front_idx))
    members, fronts = other_devices(cfg.front)
    recorded = {**members, **fronts}
    for what, dev, ifindex in devices:
        owner = hook_owner(ipr, ifindex)
        if owner is None or owner == cfg.front:
            owner = recorded.get(dev)
        if owner is not None and owner != cfg.front:
            raise AttachError(f"{what} belongs to wgbpf instance {owner!r}: detach it there "
                              f"(wgbpf detach {owner.split()[0]}) or name another device")


def remove_filter(ipr, ifindex, hook, name, ours=None):
    """Delete our filter: the one in our slot, if it bears our name (and,
    given `ours`, a predicate on program ids, runs one of our programs)."""
    if ("bpf", name, TC_PRIO, TC_HANDLE) not in hook_filters(ipr, ifindex, hook):
        return False
    if ours is not None and not ours(filter_programs(ifindex, hook).get(name)):
        return False
    try:
        ipr.tc("del-filter", "bpf", ifindex, TC_HANDLE, parent=HOOK_PARENT[hook], prio=TC_PRIO)
    except Exception as e:
        if getattr(e, "code", None) not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            raise
    return True


def unhook(ipr, ifindex, hooks, name, owned, device=None, ours=None):
    """Our filters off one device; its clsact qdisc too, but only when we
    added it (owned) and nothing else is left on it: an operator's filters
    and qdisc are theirs. `device`: the name recorded for ifindex, checked
    first (an ifindex is reused by the next device created). `ours`: see
    remove_filter."""
    if device and links(ipr).get(ifindex) != device:
        return False
    for hook in hooks:
        remove_filter(ipr, ifindex, hook, name, ours)
    if owned & abi.OWN_CLSACT and not any(hook_filters(ipr, ifindex, h) for h in HOOK_PARENT):
        try:
            ipr.tc("del", "clsact", ifindex)
        except Exception as e:
            if getattr(e, "code", None) not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                raise
    return True


def _program_maps(prog_fds):
    """{map name: map id} of the maps the given programs use."""
    out = {}
    for pfd in prog_fds:
        for map_id in bpfsys.prog_map_ids(pfd):
            try:
                mfd = bpfsys.map_fd_by_id(map_id)
            except OSError:
                continue
            try:
                out[bpfsys.map_info(mfd).name.decode()] = map_id
            finally:
                os.close(mfd)
    return out


def restore_pins(directory):
    """Pin again, from the pinned programs, a map whose pin was removed by
    hand: the programs keep reading it, so its entries (routes written by
    `wgbpf route`, counters) are kept. Returns the names restored."""
    missing = [n for n in abi.MAPS if not os.path.exists(os.path.join(directory, n))]
    if not missing:
        return []
    try:
        fds = pinned_programs(directory)
    except OSError:
        return []  # no programs to take the maps from: made anew
    try:
        used = _program_maps(fds.values())
    finally:
        for fd in fds.values():
            os.close(fd)
    restored = []
    for name in missing:
        if name in used:
            mfd = bpfsys.map_fd_by_id(used[name])
            try:
                bpfsys.obj_pin(mfd, os.path.join(directory, name))
            finally:
                os.close(mfd)
            os.chmod(os.path.join(directory, name), 0o600)
            restored.append(name)
    return restored


def unpinned(m):
    """Names of m's maps that are no longer the pinned ones: the pin gone
    (detach) or replaced by another map (detach + attach, a pin removed by
    hand and made anew)."""
    out = []
    for name, fd in m.fds.items():
        try:
            pfd = bpfsys.obj_get(os.path.join(m.directory, name), readonly=True)
        except OSError:
            out.append(name)
            continue
        try:
            if bpfsys.map_info(pfd).id != bpfsys.map_info(fd).id:
                out.append(name)
        finally:
            os.close(pfd)
    return out


def stale_pins(ipr, m, devices, name):
    """Names of pinned maps that are not the ones the instance's programs
    (pinned, and in its filters on `devices`) read: a pin removed by hand
    gets a new map at the next attach, which those programs never see.
    A filter's program that reads none of them is another instance's
    (attach --force takes its hooks), not a reason to repair."""
    pinned = {bpfsys.map_info(fd).name.decode(): bpfsys.map_info(fd).id for fd in m.fds.values()}
    prog_fds = []
    for pname in list(abi.PROGRAMS):
        try:
            prog_fds.append(bpfsys.obj_get(os.path.join(m.directory, pname)))
        except OSError:
            pass
    for ifindex in devices:
        for hook in HOOK_PARENT:
            prog_id = filter_programs(ifindex, hook).get(name)
            if prog_id is not None and reads_maps(prog_id, pinned.values()):
                try:
                    prog_fds.append(bpfsys.prog_fd_by_id(prog_id))
                except OSError:
                    pass
    try:
        used = _program_maps(prog_fds)
    finally:
        for pfd in prog_fds:
            os.close(pfd)
    return sorted(n for n, i in used.items() if n in pinned and pinned[n] != i)


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
        stale = [] if self.fresh else stale_pins(self.ipr, m, self.devices(), self.name)
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
            _forget_peer(self.ipr, self.m, peer_id, peer, self.name)
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
            r = m.get_route(net)
            if r is None or (r.origin == abi.Origin.TAG and route_peers(r) != [peer_id]):
                m.set_route(net, [peer_id], abi.Origin.TAG)
        for t in have_tags:
            if t not in want_tags:
                m.del_tag(t)
                net = network(f"{t}/{t.max_prefixlen}")
                r = m.get_route(net)
                if r is not None and r.origin == abi.Origin.TAG:
                    m.del_route(net)
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
            m.rebuild_dir24()
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
                _pin_prog(fd, os.path.join(self.directory, pname))
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
            _forget_peer(ipr, m, peer_id, peer, name)
            changes.append(f"peer {peer.name.decode()} removed")
            if self.dir24:
                m.rebuild_dir24()
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


def _forget_peer(ipr, m, peer_id, peer, name):
    """Remove one peer: its filters (and the clsact we added), its routes'
    references, tags, slot."""
    for ifindex, owner in m.members().items():
        if owner == peer_id:
            unhook(ipr, ifindex, ("ingress", "egress"), name,
                   peer.owned if peer.ifindex == ifindex else 0, peer.member.decode() or None)
            m.del_member(ifindex)
    for t, owner in m.tags().items():
        if owner == peer_id:
            m.del_tag(t)
    for version in (4, 6):
        for net, r in list(m.routes(version)):
            peers = route_peers(r)
            if peer_id not in peers:
                continue
            rest = [p for p in peers if p != peer_id]
            if rest:
                m.set_route(net, rest, r.origin)
            else:
                m.del_route(net)
    m.clear_peer(peer_id)


def detach(front):
    """Remove filters and pins of one instance; devices stay as they were."""
    from .config import ConfigError, check_ifname
    try:
        check_ifname(front, "front")  # never let a name like '..' leave the pin root
    except ConfigError as e:
        raise AttachError(str(e)) from None
    directory = pin_dir(front)
    if not os.path.isdir(directory):
        raise AttachError(f"no wgbpf instance {front!r} ({directory} does not exist)")
    removed = []
    progs, maps_pinned = pinned_ids(directory)

    def ours(prog_id):
        # a filter of our name running another instance's program (one of
        # the same front under another pin root, that took the hooks over
        # with attach --force) is that instance's to remove
        return not (progs or maps_pinned) or prog_id in progs.values() \
            or reads_maps(prog_id, maps_pinned.values())
    with iproute() as ipr:
        try:
            m = Maps.open(directory)
        except MapError:
            m = None
        if m is not None:
            with m:
                # ours only: filters in our slot with our name, and the
                # clsact qdisc where we added it and nothing else is left
                name = filter_name(front)
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
    for entry in os.listdir(directory):
        os.unlink(os.path.join(directory, entry))
    os.rmdir(directory)
    maps.prune(directory)
    return {"front": front, "pin_dir": directory, "devices": len(removed)}


__all__ = ["attach", "detach", "AttachError", "MapError", "enter_netns"]

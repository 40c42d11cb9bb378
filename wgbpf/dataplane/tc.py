# SPDX-License-Identifier: GPL-2.0-or-later
"""tc primitives: the clsact qdisc and our bpf filter on a device's hooks,
listing what filters a hook holds (pyroute2's dump, and rtnetlink's read
raw for the program ids), and removing only what is ours.

A listing that fails raises TcError: only "no such device" and "no such
filter or qdisc" mean that there is nothing. An error taken for "nothing
there" would let unhook() delete a clsact qdisc that still holds an
operator's filters (own only what you created)."""
import errno
import os
import struct

from .. import abi, netlink
from .errors import TcError

# Our tc filter: a fixed (priority, handle) so replace hits the same slot.
TC_PRIO = 0x5747
TC_HANDLE = 1
HOOK_PARENT = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}
HOOK_PARENT_ID = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}

# What a listing may answer when there is nothing to list. Linux (6.1 to
# 6.18, tried) answers a filter dump with no message at all for a device
# without clsact, and for an ifindex no device has; a request on a missing
# device, filter or clsact is answered ENODEV, ENOENT, or EINVAL (a clsact
# that is not there).
NONE = (errno.ENODEV, errno.ENOENT, errno.EINVAL)


def iproute():
    """An IPRoute socket (pyroute2), for the link and tc work; a function so
    tests can swap it."""
    from pyroute2 import IPRoute
    return IPRoute()


def error_code(e):
    """The errno of a netlink error: pyroute2's NetlinkError.code, an
    OSError's errno; None for anything else (a bug, not an answer)."""
    return e.errno if isinstance(e, OSError) else getattr(e, "code", None)


def _listing_failed(ifindex, hook, e):
    """Nothing there ([]) for the NONE answers, else TcError; an exception
    that is no netlink answer propagates as it is."""
    code = error_code(e)
    if code in NONE:
        return []
    if code is None:
        raise e
    raise TcError(f"listing the tc filters on the {hook} hook of ifindex {ifindex} failed: "
                  f"{os.strerror(code)}") from e


def filter_dump(ipr, ifindex, hook):
    """pyroute2's messages of the filters on one hook of a device."""
    try:
        return list(ipr.get_filters(index=ifindex, parent=HOOK_PARENT_ID[hook]))
    except Exception as e:
        return _listing_failed(ifindex, hook, e)


def links(ipr):
    """{ifindex: name} of every device in this namespace."""
    return {l["index"]: l.get_attr("IFLA_IFNAME") for l in ipr.get_links()}


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


def filters(ipr, ifindex, hook):
    """Names of the bpf filters on one hook of a device (TcError when they
    cannot be listed)."""
    out = []
    for msg in filter_dump(ipr, ifindex, hook):
        opts = msg.get_attr("TCA_OPTIONS")
        if msg.get_attr("TCA_KIND") == "bpf" and opts is not None:
            name = opts.get_attr("TCA_BPF_NAME")
            if name:
                out.append(name)
    return out


def hook_filters(ipr, ifindex, hook):
    """[(tc_kind, bpf name or None, priority, handle)] of every tc filter on
    one hook of a device, whoever added it (TcError when they cannot be
    listed)."""
    out = []
    for m in filter_dump(ipr, ifindex, hook):
        if not m["handle"]:  # the head of a priority (u32's), not a filter
            continue
        tc_kind = m.get_attr("TCA_KIND")
        opts = m.get_attr("TCA_OPTIONS")
        name = opts.get_attr("TCA_BPF_NAME") if tc_kind == "bpf" and opts is not None else None
        out.append((tc_kind, name, m["info"] >> 16, m["handle"]))
    return out


# rtnetlink's tc filter dump, read raw: pyroute2 (0.7 to 0.9) does not
# decode TCA_BPF_ID, the id of the program a bpf filter runs
RTM_GETTFILTER = 46
TCMSG = struct.Struct("=B3xiIII")  # struct tcmsg: family, ifindex, handle, parent, info
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_NAME, TCA_BPF_ID = 7, 11


def filter_programs(ifindex, hook, nl=None):
    """{name: program id} of the bpf filters on one hook of a device (over
    `nl`, a netlink.Netlink, else a socket of its own). TcError when they
    cannot be listed."""
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
    except OSError as e:
        return dict(_listing_failed(ifindex, hook, e))  # the device gone: nothing hooked
    finally:
        if own:
            nl.close()
    return out


def bpf_filters(hooks, errors=None):
    """{(ifindex, hook): {name: program id} of the bpf filters there} for
    each (ifindex, hook) asked, over one netlink socket: what `wgbpf status`
    checks. `errors`: a dict that takes {(ifindex, hook): message} of the
    hooks that could not be listed (left out of the answer); without it
    the first such error is raised (TcError)."""
    nl = netlink.Netlink(rcvbuf=1 << 20)
    out = {}
    try:
        for ifindex, hook in set(hooks):
            try:
                out[(ifindex, hook)] = filter_programs(ifindex, hook, nl)
            except TcError as e:
                if errors is None:
                    raise
                errors[(ifindex, hook)] = str(e)
    finally:
        nl.close()
    return out


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
        if getattr(e, "code", None) not in NONE:
            raise
    return True


def unhook(ipr, ifindex, hooks, name, owned, device=None, ours=None):
    """Our filters off one device; its clsact qdisc too, but only when we
    added it (owned) and nothing else is left on it: an operator's filters
    and qdisc are theirs. `device`: the name recorded for ifindex, checked
    first (an ifindex is reused by the next device created). `ours`: see
    remove_filter. A listing that fails raises (TcError) before anything
    more is removed: "cannot tell" is never "nothing left"."""
    if device and links(ipr).get(ifindex) != device:
        return False
    for hook in hooks:
        remove_filter(ipr, ifindex, hook, name, ours)
    if owned & abi.OWN_CLSACT and not any(hook_filters(ipr, ifindex, h) for h in HOOK_PARENT):
        try:
            ipr.tc("del", "clsact", ifindex)
        except Exception as e:
            if getattr(e, "code", None) not in NONE:
                raise
    return True

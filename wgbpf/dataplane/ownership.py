# SPDX-License-Identifier: GPL-2.0-or-later
"""Who holds a device: our filter by name, another instance's by its
name or by its peers and front, another instance's programs in our slot
(the same front under another pin root); the checks attach refuses with;
and the guard's view of the namespace (vet: every other device may forward
to peers, every host address is a martian source)."""
import ipaddress
import os

from .. import maps
from ..maps import Maps, MapError, pin_dir
from .errors import AttachError
from .build import recorded_programs
from .errors import TcError
from .pins import pinned_ids, reads_maps
from . import tc
from .tc import HOOK_PARENT, TC_HANDLE, TC_PRIO, filter_name, filter_programs, hook_filters, links

# The program each hook of a device runs, by the device's role.
HOOK_PROGRAMS = {"front": {"egress": "front_egress"},
                 "member": {"ingress": "member_ingress", "egress": "member_egress"}}


def host_addresses(ipr):
    """{ip_address: ifindex} of every address of this namespace."""
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
    devices = tc.links(ipr) if devices is None else devices
    want = {i for i, n in devices.items() if n not in member_names}
    have = m.guard.forwarders()
    for i in want - have:
        m.guard.set_forwarder(i)
    for i in have - want:
        m.guard.del_forwarder(i)
    if want != have:
        changes.append(f"forwarders: {len(want)} devices vetted")
    want_local = host_addresses(ipr)
    have_local = m.guard.locals()
    for a, i in want_local.items():
        if have_local.get(a) != i:
            m.guard.set_local(a, i)
    for a in set(have_local) - set(want_local):
        m.guard.del_local(a)
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
    orphans = recorded_programs(cfg.front)  # ours, left running when our pins were removed
    for device, ifindex, role in devices:
        for hook, prog in HOOK_PROGRAMS[role].items():
            prog_id = filter_programs(ifindex, hook).get(name)
            if prog_id is None or prog_id in progs.values() or reads_maps(prog_id, map_ids.values()) \
                    or prog_id in orphans:
                continue
            raise AttachError(
                f"tc {hook} hook on {device} runs program id {prog_id}, not this instance's "
                f"({progs[prog] if prog in progs else 'none'} pinned under {directory}): another wgbpf "
                f"instance {cfg.front!r} with another pin root (a container sharing this network "
                f"namespace?) holds it; detach it there, or attach --force to take the hooks over")


def named_filters(ipr, front=None):
    """{front: [(ifindex, device, hook)]} of the wgbpf-<front> filters on
    this namespace's devices (only `front`'s, if given), wherever they are:
    on a member, the front, or the device of a peer that left."""
    out = {}
    for ifindex, device in links(ipr).items():
        for hook in HOOK_PARENT:
            try:
                found = hook_filters(ipr, ifindex, hook)
            except TcError:
                continue  # gone meanwhile, or not listable: its status says so
            for tc_kind, name, _prio, _handle in found:
                f = name[len("wgbpf-"):] if tc_kind == "bpf" and name and name.startswith("wgbpf-") else None
                if f and (front is None or f == front):
                    out.setdefault(f, []).append((ifindex, device, hook))
    return out


def orphaned_filters(ipr, front=None):
    """named_filters of the instances that have no pins (the pin directory
    removed under them): they go on steering on maps nobody can write any
    more."""
    return {f: found for f, found in named_filters(ipr, front).items() if not os.path.isdir(pin_dir(f))}


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

# SPDX-License-Identifier: GPL-2.0-or-later
"""An instance's pins (/sys/fs/bpf/wgbpf/<netns>/<front>/): its pinned
programs and their ids, which maps a program reads, and repairs: a map pin
removed by hand pinned again from the running programs, pins that are no
longer the maps the programs read."""
import os

from .. import abi, bpfsys, maps
from ..files import unsafe_dir
from .errors import AttachError
from .tc import HOOK_PARENT, filter_programs


def check_pin_dirs(directory):
    """Refuse an instance's pin directory, its namespace's or the pin root
    when another user could plant or swap pins in them (owned by another,
    writable by group or others, a symlink: sshd's StrictModes): whoever
    swaps a pin swaps the maps the programs read. Missing ones are made
    0700 by Maps.create."""
    for d in (maps.PIN_ROOT, os.path.dirname(directory), directory):
        why = unsafe_dir(d)
        if why:
            raise AttachError(f"refused: pin directory {why}")


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


def pin_prog(fd, path):
    """Pin a program (or the tail prog array) at `path`, replacing what is
    pinned there in one rename."""
    # bpffs refuses names with a dot
    tmp = os.path.join(os.path.dirname(path), "new_" + os.path.basename(path))
    if os.path.exists(tmp):
        os.unlink(tmp)
    bpfsys.obj_pin(fd, tmp)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


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


def program_maps(prog_fds):
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
        used = program_maps(fds.values())
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


def stale_pins(m, devices, name):
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
    try:
        for ifindex in devices:
            for hook in HOOK_PARENT:
                prog_id = filter_programs(ifindex, hook).get(name)
                if prog_id is not None and reads_maps(prog_id, pinned.values()):
                    try:
                        prog_fds.append(bpfsys.prog_fd_by_id(prog_id))
                    except OSError:
                        pass
        used = program_maps(prog_fds)
    finally:
        for pfd in prog_fds:
            os.close(pfd)
    return sorted(n for n, i in used.items() if n in pinned and pinned[n] != i)

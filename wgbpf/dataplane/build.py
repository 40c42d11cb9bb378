# SPDX-License-Identifier: GPL-2.0-or-later
"""The programs' build: BCC's compile of bpf/wgbpf.c against an instance's
pinned maps, program tags, and the build record (<front>.build, written
through wgbpf.instance) that lets the next attach reuse the pinned
programs instead of compiling them again."""
import ctypes
import hashlib
import json
import os

from .. import abi, bpfsys, files, instance
from .pins import pinned_programs

# The data plane's C: bpf/ beside the package in a checkout, else where the
# .deb puts it (architecture-independent data: /usr/share).
BPF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bpf")
if not os.path.exists(os.path.join(BPF_DIR, "wgbpf.c")):
    BPF_DIR = "/usr/share/wgbpf/bpf"
SOURCE = os.path.join(BPF_DIR, "wgbpf.c")


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


def _program_ids(directory):
    fds = pinned_programs(directory)
    try:
        return {n: bpfsys.prog_info(fd).id for n, fd in fds.items()}
    finally:
        for fd in fds.values():
            os.close(fd)


def record_build(front, directory, key):
    try:
        os.makedirs(os.path.dirname(instance.build_path(front)), mode=0o755, exist_ok=True)
        files.write_atomic(instance.build_path(front), json.dumps({"key": key, "programs": _program_ids(directory)}),
                           mode=0o600)
    except OSError:
        pass  # only costs a compile at the next attach


def recorded_programs(front):
    """The ids of the programs the last attach of `front` compiled and
    pinned (its build record), or an empty set: how a filter of ours left
    running after its pins were removed is known to be ours."""
    try:
        with instance.open_run_read(instance.build_path(front)) as f:
            return set(json.load(f).get("programs", {}).values())
    except (OSError, ValueError, AttributeError):
        return set()


def reusable_programs(front, directory, key):
    """{program name: fd} of the pinned programs when they were built from
    exactly this source and flags (no compile needed), else None."""
    try:
        with instance.open_run_read(instance.build_path(front)) as f:
            rec = json.load(f)
        if rec.get("key") != key or not os.path.exists(os.path.join(directory, "tail")):
            return None
        if _program_ids(directory) != rec.get("programs"):
            return None
        return pinned_programs(directory)
    except (OSError, ValueError, AttributeError):
        return None

# SPDX-License-Identifier: GPL-2.0-or-later
"""Entering a network namespace, as nsenter(1) does: setns(2) on a name in
/run/netns or a path.

setns() moves only the calling thread and keeps this mount namespace, so
/sys/fs/bpf stays visible (`ip netns exec` would hide it). Three ways in:
enter() for good (a command run with --netns), entered() for a block
(tests and benches), run() on a thread of its own (the caller stays put).
"""
import contextlib
import ctypes
import os
import threading

CLONE_NEWNET = 0x40000000


def path(name):
    """A name in /run/netns, or a path as it is."""
    return name if "/" in name else f"/run/netns/{name}"


def _setns(fd, where):
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), where)


def enter(name):
    """Move this thread into network namespace `name` for good. Raises
    OSError (FileNotFoundError when there is no such namespace)."""
    fd = os.open(path(name), os.O_RDONLY)
    try:
        _setns(fd, path(name))
    finally:
        os.close(fd)


@contextlib.contextmanager
def entered(name):
    """This thread in network namespace `name` for the block, then back."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        enter(name)
        try:
            yield
        finally:
            _setns(home, "/proc/self/ns/net")
    finally:
        os.close(home)


def run(name, fn):
    """fn() run in network namespace `name` by a thread of its own, so the
    caller stays where it is. Returns what fn returns, raises what it raises
    (FileNotFoundError, before any thread, when there is no such namespace)."""
    fd = os.open(path(name), os.O_RDONLY)
    out = {}

    def body():
        try:
            _setns(fd, path(name))
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e
    try:
        t = threading.Thread(target=body)
        t.start()
        t.join()
    finally:
        os.close(fd)
    if "error" in out:
        raise out["error"]
    return out["value"]

# SPDX-License-Identifier: GPL-2.0-or-later
"""The instance protocol: what the processes working on one instance (a
front in a network namespace) share outside the kernel, and how they tell
each other.

    run dir     /run/wgbpf/<netns cookie>/ (WGBPF_RUN_DIR moves it)
    <front>.lock     the daemon's lock: one daemon per instance
    <front>.writer   the writer lock: attach, detach, `wgbpf route` and the
                     daemon take turns; its generation moves with each writer
    <front>.json     the daemon's status
    <front>.build    the build key of the pinned programs (dataplane)
    notify      SIGUSR1 (maps written) and SIGUSR2 (attached) to the daemon

The run dir and each namespace's directory in it are root's alone (0755,
checked as sshd's StrictModes does: see ensure_run_dir), and every file in
them is opened O_NOFOLLOW, made O_EXCL: with WGBPF_RUN_DIR under /tmp,
another user must not be able to plant a symlink root writes through, or
hold or remove a lock.

cli, inspect, top and dataplane read and write an instance through this
module; none of them imports the daemon.
"""
import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import stat
import time

from .files import unsafe_dir
from .maps import netns_id

# WGBPF_RUN_DIR moves the locks and status files (tests use a temp dir)
RUN_DIR = os.environ.get("WGBPF_RUN_DIR") or "/run/wgbpf"
# the run files are opened, never followed: a symlink there is refused.
# O_NONBLOCK: a FIFO planted there cannot hang a reader (regular files
# ignore it)
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

class InstanceError(Exception):
    pass


def run_dir(netns=None):
    """/run/wgbpf/<netns cookie>: locks and status files of one namespace's
    instances (the same front name in two namespaces is two instances)."""
    return os.path.join(RUN_DIR, str(netns if isinstance(netns, int) else netns_id(netns)))


def run_namespaces():
    """Cookies of the namespaces with a daemon's status file."""
    try:
        names = [n for n in os.listdir(RUN_DIR) if n.isdigit()]
    except OSError:
        return set()
    out = set()
    for n in names:
        try:
            if any(f.endswith(".json") for f in os.listdir(os.path.join(RUN_DIR, n))):
                out.add(int(n))
        except OSError:
            continue  # removed meanwhile
    return out


def status_path(front, netns=None):
    return os.path.join(run_dir(netns), f"{front}.json")


def lock_path(front, netns=None):
    return os.path.join(run_dir(netns), f"{front}.lock")


def daemon_lock(front):
    """Take the one-daemon lock of `front` in this namespace (flock, held
    for the daemon's life, released when it dies) and write our pid in
    it; returns its fd. Another daemon holding it is an InstanceError."""
    ensure_run_dir()
    path = lock_path(front)
    fd = open_run_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode().strip() or "?"
        os.close(fd)
        raise InstanceError(f"another wgbpf daemon (pid {other}) is already running for {front!r}") from None
    # written over the old pid, then cut: a full filesystem then fails the
    # write, not the truncate, and the file goes rather than stay empty
    try:
        _write_or_drop(fd, path, f"{os.getpid()}\n".encode(), truncate=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_run_dir():
    """Make the run dir and this namespace's directory in it (0755, ours)
    if missing, and refuse either when another user could plant files in
    it (owned by another, writable by group or others, a symlink)."""
    for d in (RUN_DIR, run_dir()):
        try:
            os.makedirs(d, mode=0o755, exist_ok=True)
        except OSError as e:
            if unsafe_dir(d) is None:  # else the check below says why
                raise InstanceError(f"cannot make the run directory {d}: {e.strerror}") from None
        why = unsafe_dir(d)
        if why:
            raise InstanceError(f"refused: run directory {why}")


def open_run_file(path):
    """An fd (O_RDWR) on the regular file `path` in a checked run dir:
    opened without following a symlink, created O_EXCL when new."""
    while True:
        try:
            try:
                fd = os.open(path, os.O_RDWR | NOFOLLOW)
            except FileNotFoundError:
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600)
                except FileExistsError:
                    continue  # made meanwhile: open that one
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise InstanceError(f"refused: {path} is a symlink, never followed: remove it") from None
            raise InstanceError(f"cannot open {path}: {e.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InstanceError(f"refused: {path} is not a regular file: remove it")
        return fd


def open_run_read(path):
    """A run file open for reading (text), never through a symlink or
    hung on a FIFO: OSError (ELOOP) instead."""
    return os.fdopen(os.open(path, os.O_RDONLY | NOFOLLOW))


def _write_or_drop(fd, path, data, truncate=False):
    """pwrite `data` at 0 in a lock file we hold; on failure (ENOSPC: the
    run dir's filesystem full) the file is removed, not left empty or
    half written, and the error is one line. The caller closes `fd`."""
    try:
        os.pwrite(fd, data, 0)
        if truncate:
            os.ftruncate(fd, len(data))
    except OSError as e:
        with contextlib.suppress(OSError):
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)  # ours: we hold its lock
        full = " (the run directory's filesystem is full: free space there)" if e.errno == errno.ENOSPC else ""
        raise InstanceError(f"cannot write {path}: {e.strerror}{full}; nothing was written") from None


def read_status(front, netns=None):
    """The running daemon's last status for `front`, or None."""
    try:
        with open_run_read(status_path(front, netns)) as f:
            st = json.load(f)
    except (OSError, ValueError):
        return None
    if st.get("state") in ("running", "detached") and not daemon_alive(front, netns, st.get("pid")):
        st["state"] = "not running"  # died without a word (SIGKILL): "failed" and "stopped" stay
    return st


def daemon_alive(front, netns=None, pid=None):
    """Whether a daemon holds `front`'s lock: a pid alone may have been
    reused since, the lock dies with its holder."""
    if pid is not None and not _alive(pid):
        return False
    try:
        fd = os.open(lock_path(front, netns), os.O_RDONLY | NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False  # nobody holds it
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def notify_maps_written(front):
    """Tell the daemon running for `front` that `wgbpf route` wrote its maps
    (SIGUSR1: it re-reads them). Only a process that catches SIGUSR1 is
    signalled: to any other (a pid reused, an older daemon) its default
    action is death. Returns whether one was told."""
    st = read_status(front)
    if not st or st.get("state") != "running" or st.get("backend") == "allowedips":
        return False
    try:
        pid = int(st["pid"])
        with open(f"/proc/{pid}/status") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        if not caught & (1 << (signal.SIGUSR1 - 1)):
            return False
        os.kill(pid, signal.SIGUSR1)
    except (OSError, KeyError, TypeError, ValueError, StopIteration):
        return False
    return True


def build_path(front, netns=None):
    """The build key of the pinned programs (their ids too, so programs
    pinned by anyone else since, an older wgbpf say, are never taken for
    ours); dataplane writes and reads it."""
    return os.path.join(run_dir(netns), f"{front}.build")


def writer_lock_path(front, netns=None):
    """Beside the daemon's lock: held by whoever writes the instance as a
    whole (attach, detach, the daemon's attach and full syncs)."""
    return lock_path(front, netns)[:-len(".lock")] + ".writer"


@contextlib.contextmanager
def writer_lock(front, waiting=lambda holder: None, wait=True, bump=True, timeout=None):
    """One writer per instance: attach, detach, `wgbpf route` and the
    daemon take turns (flock, released when the process dies).
    `waiting(holder)` is called once if someone else holds it (holder: who,
    as lock_holder says). Yields the lock's fd, or None when `wait` is
    False and it is held elsewhere. With a `timeout` (seconds), a holder
    that keeps it longer (a stopped process) is an InstanceError.

    A writer bumps the file's generation as it takes the lock (`bump`):
    the daemon follows route events without reading back each prefix as
    long as the generation it holds says nobody else wrote the maps since
    it last read them."""
    path, waited = writer_lock_path(front), False
    while True:
        ensure_run_dir()
        fd = open_run_file(path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    os.close(fd)
                    yield None
                    return
                if not waited:
                    waiting(lock_holder(path))
                    waited = True
                _wait_flock(fd, path, front, timeout)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # a detach removed the file we waited on: take the one there now
    try:
        if bump:
            # before any write: a writer killed halfway has moved it too.
            # A clock, not a count from 0: a file removed and made anew
            # (often with the same inode) never repeats a generation
            _write_or_drop(fd, path, b"%020d\n" % max(generation(fd)[1] + 1, time.time_ns()))
        yield fd
    finally:
        os.close(fd)


class Instance:
    """What a command does to an instance, in one place: take the writer
    lock (waiting at most WAIT seconds for another writer, saying who it
    waits for), write, then tell the daemon what was written."""
    # a daemon's full sync of a million routes takes seconds; a stopped
    # process holds the lock for ever
    WAIT = 60.0

    def __init__(self, front, log=lambda msg: None):
        self.front = front
        self.log = log
        self.told = False  # whether a daemon was told, after writing()

    @contextlib.contextmanager
    def writing(self, tell=None):
        """lock -> the body writes -> notify. `tell`: "maps written"
        (the daemon re-reads the maps), "attached" (it reopens them and
        resyncs) or None. A body that raises tells nobody."""
        with writer_lock(self.front, lambda holder: self.log(f"waiting for {holder}, writing {self.front}"),
                         timeout=self.WAIT) as fd:
            yield fd
        if tell == "maps written":
            self.told = notify_maps_written(self.front)
        elif tell == "attached":
            self.told = notify_attached(self.front)


def _wait_flock(fd, path, front, timeout):
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise InstanceError(f"{lock_holder(path)} has held the writer lock of {front} for "
                                  f"{timeout:g}s: stopped or stuck? Nothing was written") from None
            time.sleep(0.02)


def lock_holder(path):
    """Who holds the flock on `path`, from /proc/locks: "pid N (command)",
    or "another writer" when it cannot tell."""
    try:
        st = os.stat(path)
        dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()  # "1: FLOCK ADVISORY WRITE 1234 00:1a:5678 0 EOF"
                if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == dev:
                    pid = int(parts[4])
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as c:
                            cmd = c.read().replace(b"\0", b" ").decode(errors="replace").strip()
                    except OSError:
                        cmd = ""
                    if len(cmd) > 120:
                        cmd = cmd[:117] + "..."
                    return f"pid {pid}" + (f" ({cmd})" if cmd else "")
    except (OSError, ValueError):
        pass
    return "another writer"


def generation(fd):
    """(inode, count) of a held writer lock: moves whenever another writer
    held it."""
    head = os.pread(fd, 32, 0)
    return os.fstat(fd).st_ino, int(head) if head.strip().isdigit() else 0


def remove_run_files(front):
    """After a detach: the instance's files under the run directory go
    (status, daemon lock, build record, writer lock), unless a daemon still
    holds its lock: then only the build record (it says "detached" and
    follows the next attach). Returns the paths removed."""
    paths = [build_path(front)]
    try:
        fd = os.open(lock_path(front), os.O_RDONLY | NOFOLLOW)
    except OSError:  # gone, or a symlink planted there (unlinked below, never followed)
        fd = None
    try:
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            paths += [status_path(front), lock_path(front), writer_lock_path(front)]
        except BlockingIOError:
            pass  # a daemon runs
        removed = []
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
                removed.append(p)
    finally:
        if fd is not None:
            os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(run_dir())  # the namespace's last instance
    return removed


def notify_attached(front):
    """After an attach: the daemon holding `front`'s lock (its pid is in
    the lock file, and it has the file open) gets SIGUSR2, and reopens the
    maps (they may be new ones) and resyncs at once. Only a process that
    catches SIGUSR2 is signalled. Returns whether one was told."""
    path = lock_path(front)
    try:
        with open_run_read(path) as f:
            pid = int(f.read(32).strip())
        if not _holds_open(pid, path):
            return False  # the pid of a daemon gone, maybe reused since
        with open(f"/proc/{pid}/status") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        if not caught & (1 << (signal.SIGUSR2 - 1)):
            return False
        os.kill(pid, signal.SIGUSR2)
    except (OSError, ValueError, StopIteration):
        return False
    return True


def _holds_open(pid, path):
    fd_dir = f"/proc/{pid}/fd"
    for n in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, n)) == path:
                return True
        except OSError:
            continue  # closed meanwhile
    return False


def _statuses(netns=None):
    """(front, status) of every daemon of one namespace that left a status
    and whose device is there or which runs (daemon and device both gone:
    nothing left to list)."""
    try:
        names = os.listdir(run_dir(netns))
    except OSError:
        return
    for name in sorted(names):
        if name.endswith(".json"):
            st = read_status(name[:-5], netns)
            if st and (st["state"] == "running" or _device_exists(name[:-5], netns)):
                yield name[:-5], st


def allowedips_daemons(netns=None):
    """{device: status} of one namespace's allowedips-backend daemons."""
    return {f: st for f, st in _statuses(netns) if st.get("backend") == "allowedips"}


def failed_daemons(netns=None):
    """{front: status} of one namespace's daemons that failed, at start too
    (an attach refused: then no instance may be there to list)."""
    return {f: st for f, st in _statuses(netns) if st["state"] == "failed"}


def detached_daemons(netns=None):
    """{front: status} of one namespace's live daemons whose instance was
    detached under them (they wait for an attach, steering nothing)."""
    return {f: st for f, st in _statuses(netns) if st["state"] == "detached"}


def _device_exists(name, netns=None):
    if netns is not None and netns != netns_id():
        return True  # another namespace's device: not checked from here
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def _alive(pid):
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False


def sd_notify(msg):
    """systemd Type=notify readiness, without libsystemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(msg.encode(), addr)

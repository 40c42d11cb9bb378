# SPDX-License-Identifier: GPL-2.0-or-later
"""Files wgbpf reads and writes as root, done safely.

Writes (the status file, --metrics-file) are atomic and never follow a link
someone planted: the new text goes to a fresh temp file created with
O_CREAT|O_EXCL|O_NOFOLLOW under a random name in the target's directory,
then is renamed over the target. rename(2) replaces a symlink at the target
itself, it never writes through it. Both steps are relative to one open
directory fd, so a directory swapped in the path meanwhile cannot redirect
the rename.

Directories that hold root's run files (the run dir, the pin root) are
checked as sshd's StrictModes checks a home: owned by root (or the user
running us) and writable by nobody else, or someone else could plant a
symlink or hold a lock file in them.

Reads of config files are bounded: regular files only (opened O_NONBLOCK so
a FIFO cannot hang us before the check), at most MAX_READ bytes.
"""
import contextlib
import errno
import os
import secrets
import stat

MAX_READ = 1 << 20  # 1 MiB: a config of 1023 peers with 8192 tags is ~300 KiB


class FileError(ValueError):
    """A file refused for what it is (not a regular file, too large)."""


def write_atomic(path, text, mode=0o644):
    """Replace `path` with `text`; readers see the old file or the new one."""
    directory, name = os.path.split(os.path.abspath(path))
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        while True:
            tmp = f".{name}.{secrets.token_hex(8)}.tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             mode, dir_fd=dfd)
                break
            except FileExistsError:
                continue  # someone holds that name; draw another
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    finally:
        os.close(dfd)


def unsafe_dir(path):
    """Why the directory `path` may not hold our files (one line, with the
    fix), or None: it is fine or not there yet (we make it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    who = "root" if os.geteuid() == 0 else str(os.geteuid())
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symlink, not followed for root's files: remove it (wgbpf makes the directory)"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory: remove it (wgbpf makes the directory)"
    if st.st_uid not in (0, os.geteuid()):
        return (f"{path} is owned by uid {st.st_uid}, not {who}: another user could plant files in it "
                f"(chown {who}: {path}; chmod go-w {path})")
    if st.st_mode & 0o022:
        return (f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): another user "
                f"could plant files in it (chown {who}: {path}; chmod go-w {path})")
    return None


def read_bounded(path, limit=MAX_READ, nofollow=False):
    """The bytes of the regular file `path` (a symlink to one is fine,
    unless nofollow). FileError for anything else or for more than `limit`
    bytes; OSError as open(2) reports it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0))
    except OSError as e:
        if nofollow and e.errno == errno.ELOOP:
            raise FileError("is a symlink, not followed in the config dir: put the file itself there") from None
        raise
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FileError("is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise FileError("not a regular file (a FIFO, socket or device is not read)")
        chunks, size = [], 0
        while size <= limit:
            b = os.read(fd, min(1 << 16, limit + 1 - size))
            if not b:
                break
            chunks.append(b)
            size += len(b)
        if size > limit:
            raise FileError(f"larger than {limit // 1024} KiB, the limit for a config file")
        return b"".join(chunks)
    finally:
        os.close(fd)


def child_env():
    """The environment of a `python -m wgbpf...` child: this package first
    on its path, wherever it was imported from (a checkout, the venv)."""
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (pkg, os.environ.get("PYTHONPATH")))))

# SPDX-License-Identifier: GPL-2.0-or-later
"""DIR-24-8 over one instance's maps: the compile of dir24.py (which knows
no map) given the dir24/dir8 arrays (ArrayBytes: read and written by
bpf(2), never mmap, so their 48 MiB stay out of the daemon's RSS), and
routes4, the source of truth it is compiled from (its set ids are the
entries).

Its own room, beside dir24.py, because it is the one part of the map
access that spawns a process: the daemon compiles in a child
(`python -m wgbpf.maps --compile-dir24 DIR`) whose transient arrays
go with it. A Maps reaches this as `m.dir24`; it is handed a Maps (the
fds) and never imports maps.py and routemaps.py (routes4, the Route value bytes).
"""
import os
import pickle
import struct
import subprocess
import sys

from . import abi, bpfsys
from .bpfsys import MapError
from .files import child_env
from .routemaps import PLEN, PLEN_AT, ROUTE_SIZE, value_set


class Dir24Maps:
    """The DIR-24-8 arrays of one Maps (m.dir24)."""

    def __init__(self, maps):
        self.maps = maps

    def view(self):
        """A Dir24 over the dir24/dir8 maps, read and written by bpf(2)
        (ArrayBytes, not mmap: their 48 MiB stay out of the daemon's RSS),
        finding what covers a removed prefix by an LPM lookup in routes4."""
        from .dir24 import Dir24
        fds = self.maps.fds

        def array(name):
            info = bpfsys.map_info(fds[name])
            if info.max_entries <= 1:
                raise MapError(f"{self.maps.directory}/{name}: not sized for DIR-24-8 (attach --lookup dir24)")
            return ArrayBytes(fds[name], info.value_size, info.max_entries)

        reader = bpfsys.Reader(self.maps.tries.fd(4), 8, ROUTE_SIZE)

        def route(addr, bound):
            # an LPM lookup is bounded by the key's prefix length
            v = reader.get(PLEN[bound] + addr.to_bytes(4, "big"))
            return None if v is None else (v[PLEN_AT], value_set(v))
        return Dir24(array("dir24"), array("dir8"), route)

    def ipv4_prefixes(self):
        """{(network int, plen): set id} of routes4, as Dir24.rebuild takes them."""
        out = {}
        rsize = ROUTE_SIZE
        for keys, values, n in bpfsys.lookup_batch_raw(self.maps.tries.fd(4), 8, rsize):
            for i in range(n):
                out[(int.from_bytes(keys[8 * i + 4:8 * i + 8], "big"), keys[8 * i])] = \
                    value_set(values[i * rsize:(i + 1) * rsize])
        return out

    def rebuild(self, d=None):
        """Recompile the DIR-24-8 arrays (of `d`, else a new Dir24 over the
        maps) from routes4 read in batches: no object per prefix (1M: ~1 s,
        where ipv4_prefixes() + rebuild() took ~12 s through ipaddress)."""
        d = d or self.view()
        d.rebuild_raw(bpfsys.lookup_batch_raw(self.maps.tries.fd(4), 8, ROUTE_SIZE), ROUTE_SIZE)
        return d

    def compile_apart(self):
        """rebuild in a child process (`python -m wgbpf.maps
        --compile-dir24 DIR`), for the daemon: the compile's transient
        arrays (about 100 MiB at a full table: a private tbl24 to compare
        with the map, the prefixes by length) are the child's and gone with
        it. The daemon gets back what change() needs: the depth bytes (16
        MiB, read straight into place) and the few groups."""
        return self.start_apart().result()

    def start_apart(self):
        """compile_apart started, not waited for: the child compiles
        routes4 as it is now while the caller goes on (on another CPU)."""
        return _Dir24Child(self.maps)

    def compile(self):
        """Recompile the DIR-24-8 arrays from routes4 (when in that mode)."""
        if self.maps.config().lookup == abi.Lookup.DIR24:
            return self.rebuild()
        return None


class ArrayBytes:
    """An array map seen as one byte buffer, for slices: read by batch
    lookups, written by batch updates (a partly covered element is read
    first). The data plane reads every element whole, before or after."""

    CHUNK = 4096  # elements a syscall

    def __init__(self, fd, value_size, max_entries):
        self.fd, self.size, self.count = fd, value_size, max_entries

    def __len__(self):
        return self.size * self.count

    def _span(self, s):
        a, b, _ = s.indices(len(self))
        return a, b, a // self.size, -(-b // self.size)

    def __getitem__(self, s):
        a, b, e0, e1 = self._span(s)
        data = b"".join(bpfsys.read_array(self.fd, e, min(self.CHUNK, e1 - e), self.size)
                        for e in range(e0, e1, self.CHUNK))
        return data[a - e0 * self.size:b - e0 * self.size]

    def __setitem__(self, s, data):
        a, b, e0, e1 = self._span(s)
        if len(data) != b - a:
            raise ValueError("ArrayBytes: a slice keeps its length")
        if a % self.size or b % self.size:
            whole = bytearray(self[e0 * self.size:e1 * self.size])
            whole[a - e0 * self.size:b - e0 * self.size] = data
            data = whole
        data = bytes(data)
        for e in range(e0, e1, self.CHUNK):
            n = min(self.CHUNK, e1 - e)
            off = (e - e0) * self.size
            bpfsys.update_batch_raw(self.fd, struct.pack(f"={n}I", *range(e, e + n)),
                                    data[off:off + n * self.size], n)


class _Dir24Child:
    """A DIR-24-8 compile running in a child process (Dir24Maps.start_apart)."""

    def __init__(self, maps):
        self.maps = maps
        self.p = subprocess.Popen([sys.executable, "-m", "wgbpf.maps", "--compile-dir24", maps.directory],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())

    def result(self):
        """Wait for the compile; the Dir24 the child's arrays describe (its
        16 MiB of depth bytes taken only now: the caller may have freed
        more meanwhile)."""
        d, p, got = self.maps.dir24.view(), self.p, 0
        try:
            state = pickle.load(p.stdout)
            view = memoryview(d.depth)
            while got < len(d.depth):
                n = p.stdout.readinto(view[got:])
                if not n:
                    break
                got += n
        except (EOFError, pickle.UnpicklingError):
            state = None
        err = p.stderr.read().decode(errors="replace").strip()
        _pid, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        d.child_peak_mib = usage.ru_maxrss / 1024  # the memory the compile took, for the log and bench
        if p.returncode != 0 or state is None or got != len(d.depth):
            raise MapError(f"DIR-24-8 compile failed (exit {p.returncode}): "
                           f"{err.splitlines()[-1] if err else 'no output'}")
        d.restore(state)
        return d

    def cancel(self):
        """Not wanted after all (the sync failed): the child is stopped."""
        self.p.kill()
        self.p.communicate()

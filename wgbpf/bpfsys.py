# SPDX-License-Identifier: GPL-2.0-or-later
"""The bpf(2) system call through ctypes: pinned objects, map elements, test runs.

Reading and writing pinned maps needs no compiler, so `wgbpf dump`, `lookup`,
`route` and `status` use this instead of importing BCC (which costs a second
and a compile). Debian's BCC 0.26 also has no Python wrapper for
BPF_PROG_TEST_RUN, which the verdict tests and benchmarks use.
"""
import ctypes
import errno
import os
import struct
import sys


class MapError(Exception):
    """A pinned map is missing, or not the layout this wgbpf expects."""


from .abi import u32, u64

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_NR_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]

# enum bpf_cmd
MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
OBJ_PIN = 6
OBJ_GET = 7
PROG_TEST_RUN = 10
PROG_GET_FD_BY_ID = 13
MAP_GET_FD_BY_ID = 14
OBJ_GET_INFO_BY_FD = 15
MAP_LOOKUP_BATCH = 24
MAP_UPDATE_BATCH = 26
MAP_DELETE_BATCH = 27

# map types and flags are abi's (HASH, NO_PREALLOC, ...); these are the
# syscall's own (tests/unit/test_abi.py checks them against linux/bpf.h)
ANY, NOEXIST, EXIST = 0, 1, 2
F_RDONLY = 1 << 3


class BPFError(OSError):
    pass


def _bpf(cmd, attr):
    ret = _libc.syscall(_NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise BPFError(err, os.strerror(err))
    return ret


# The parts of union bpf_attr and of the info structs this module uses, as
# runs of the kernel's declarations.
class _MapCreate(ctypes.Structure):
    _fields_ = (u32("map_type", "key_size", "value_size", "max_entries", "map_flags",
                    "inner_map_fd", "numa_node")
                + [("map_name", ctypes.c_char * 16), ("pad", ctypes.c_uint8 * 64)])


class _Elem(ctypes.Structure):
    _fields_ = u32("map_fd", "pad") + u64("key", "value", "flags")


class _Batch(ctypes.Structure):
    _fields_ = u64("in_batch", "out_batch", "keys", "values") + u32("count", "map_fd") \
        + u64("elem_flags", "flags")


class _Obj(ctypes.Structure):
    _fields_ = u64("pathname") + u32("bpf_fd", "file_flags") + [("path_fd", ctypes.c_int32)]


class _Info(ctypes.Structure):
    _fields_ = u32("bpf_fd", "info_len") + u64("info")


class _ById(ctypes.Structure):
    _fields_ = u32("id", "next_id", "open_flags")


class _TestRun(ctypes.Structure):
    _fields_ = (u32("prog_fd", "retval", "data_size_in", "data_size_out") + u64("data_in", "data_out")
                + u32("repeat", "duration", "ctx_size_in", "ctx_size_out") + u64("ctx_in", "ctx_out")
                + u32("flags", "cpu", "batch_size", "pad"))


class MapInfo(ctypes.Structure):
    _fields_ = (u32("type", "id", "key_size", "value_size", "max_entries", "map_flags")
                + [("name", ctypes.c_char * 16)] + u32("ifindex", "btf_vmlinux_value_type_id")
                + u64("netns_dev", "netns_ino")
                + u32("btf_id", "btf_key_type_id", "btf_value_type_id", "pad") + u64("map_extra"))


class ProgInfo(ctypes.Structure):
    _fields_ = (u32("type", "id") + [("tag", ctypes.c_uint8 * 8)]
                + u32("jited_prog_len", "xlated_prog_len")
                + u64("jited_prog_insns", "xlated_prog_insns", "load_time")
                + u32("created_by_uid", "nr_map_ids") + u64("map_ids") + [("name", ctypes.c_char * 16)]
                + u32("ifindex", "gpl_compatible") + u64("netns_dev", "netns_ino")
                + u32("nr_jited_ksyms", "nr_jited_func_lens") + u64("jited_ksyms", "jited_func_lens")
                + u32("btf_id", "func_info_rec_size") + u64("func_info")
                + u32("nr_func_info", "nr_line_info") + u64("line_info", "jited_line_info")
                + u32("nr_jited_line_info", "line_info_rec_size", "jited_line_info_rec_size",
                      "nr_prog_tags") + u64("prog_tags", "run_time_ns", "run_cnt"))


def map_create(map_type, key_size, value_size, max_entries, flags=0, name=""):
    attr = _MapCreate(map_type=map_type, key_size=key_size, value_size=value_size,
                      max_entries=max_entries, map_flags=flags,
                      map_name=name.encode()[:15])
    return _bpf(MAP_CREATE, attr)


def obj_pin(fd, path):
    p = ctypes.create_string_buffer(os.fsencode(path))
    _bpf(OBJ_PIN, _Obj(pathname=ctypes.addressof(p), bpf_fd=fd))


def obj_get(path, readonly=False):
    p = ctypes.create_string_buffer(os.fsencode(path))
    # BPF_F_RDONLY lets read-only listings open maps they cannot change
    return _bpf(OBJ_GET, _Obj(pathname=ctypes.addressof(p), file_flags=F_RDONLY if readonly else 0))


def map_info(fd):
    info = MapInfo()
    _bpf(OBJ_GET_INFO_BY_FD, _Info(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                   info=ctypes.addressof(info)))
    return info


def prog_info(fd):
    info = ProgInfo()
    _bpf(OBJ_GET_INFO_BY_FD, _Info(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                   info=ctypes.addressof(info)))
    return info


def prog_fd_by_id(prog_id):
    return _bpf(PROG_GET_FD_BY_ID, _ById(id=prog_id))


def map_fd_by_id(map_id):
    return _bpf(MAP_GET_FD_BY_ID, _ById(id=map_id))


def prog_map_ids(fd):
    """Ids of the maps a loaded program uses (as the verifier bound them)."""
    n = prog_info(fd).nr_map_ids
    ids = (ctypes.c_uint32 * max(n, 1))()
    info = ProgInfo(nr_map_ids=n, map_ids=ctypes.addressof(ids))
    _bpf(OBJ_GET_INFO_BY_FD, _Info(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                   info=ctypes.addressof(info)))
    return list(ids[:min(n, info.nr_map_ids)])


def _found(cmd, attr):
    """_bpf for an element call: False when there is no such element (ENOENT)."""
    try:
        _bpf(cmd, attr)
    except BPFError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def lookup(fd, key, value):
    """Fill ctypes `value` from `key`; False when there is no such element."""
    return _found(MAP_LOOKUP_ELEM, _Elem(map_fd=fd, key=ctypes.addressof(key),
                                         value=ctypes.addressof(value)))


def update(fd, key, value, flags=ANY):
    _bpf(MAP_UPDATE_ELEM, _Elem(map_fd=fd, key=ctypes.addressof(key),
                                value=ctypes.addressof(value), flags=flags))


def delete(fd, key):
    return _found(MAP_DELETE_ELEM, _Elem(map_fd=fd, key=ctypes.addressof(key)))


def next_key(fd, key, out):
    """Write the key after `key` (None: the first) into `out`; False at the end."""
    return _found(MAP_GET_NEXT_KEY, _Elem(map_fd=fd, key=ctypes.addressof(key) if key is not None else 0,
                                          value=ctypes.addressof(out)))


def lookup_batch(fd, key_type, value_type, chunk=4096):
    """Yield (key, value) copies of every element, `chunk` per syscall."""
    ks, vs = ctypes.sizeof(key_type), ctypes.sizeof(value_type)
    for keys, values, n in lookup_batch_raw(fd, ks, vs, chunk):
        for i in range(n):
            yield key_type.from_buffer_copy(keys, i * ks), value_type.from_buffer_copy(values, i * vs)


def update_batch(fd, keys, values):
    """Write arrays of keys and values in one call each `len(keys)`."""
    n = len(keys)
    if n == 0:
        return
    attr = _Batch(keys=ctypes.addressof(keys), values=ctypes.addressof(values),
                  count=n, map_fd=fd)
    _bpf(MAP_UPDATE_BATCH, attr)


def delete_batch(fd, keys):
    n = len(keys)
    if n == 0:
        return
    _bpf(MAP_DELETE_BATCH, _Batch(keys=ctypes.addressof(keys), count=n, map_fd=fd))


def _address(buf):
    """Where a bytes or bytearray's contents live (no copy; keep `buf` alive
    across the call that uses it)."""
    if isinstance(buf, bytes):
        return ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def update_batch_raw(fd, keys, values, count):
    """update_batch from packed bytes: `count` keys and values back to back."""
    if count:
        _bpf(MAP_UPDATE_BATCH, _Batch(keys=_address(keys), values=_address(values),
                                      count=count, map_fd=fd))


def delete_batch_raw(fd, keys, count):
    """delete_batch from packed bytes; returns how many were deleted before
    the first key that was not there (ENOENT), `count` when all were."""
    if not count:
        return 0
    attr = _Batch(keys=_address(keys), count=count, map_fd=fd)
    try:
        _bpf(MAP_DELETE_BATCH, attr)
    except BPFError as e:
        if e.errno != errno.ENOENT:
            raise
        return attr.count
    return count


def lookup_batch_raw(fd, key_size, value_size, chunk=8192, after=None):
    """Yield (keys bytes, values bytes, count) per syscall over every
    element (from the one after key `after`, bytes, when given): no object
    per element, for maps of a million."""
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    # The batch cursor is a u32 for hash maps but a whole key for the generic
    # batch code (arrays, LPM tries): size it for either.
    in_batch = ctypes.create_string_buffer(max(key_size, 8))
    out_batch = ctypes.create_string_buffer(max(key_size, 8))
    first = after is None
    if after is not None:
        ctypes.memmove(in_batch, after, len(after))
    while True:
        attr = _Batch(in_batch=0 if first else ctypes.addressof(in_batch),
                      out_batch=ctypes.addressof(out_batch), keys=ctypes.addressof(keys),
                      values=ctypes.addressof(values), count=chunk, map_fd=fd)
        done = False
        try:
            _bpf(MAP_LOOKUP_BATCH, attr)
        except BPFError as e:
            if e.errno != errno.ENOENT:
                raise
            done = True
        n = attr.count
        if n:
            yield keys.raw[:n * key_size], values.raw[:n * value_size], n
        if done:
            return
        ctypes.memmove(in_batch, out_batch, len(in_batch))
        first = False


def read_array(fd, first, count, value_size):
    """Elements first .. first + count - 1 of an array map, their values
    back to back (the batch cursor is the index before the first)."""
    out, left = [], count
    after = (first - 1).to_bytes(4, sys.byteorder) if first else None
    for _keys, values, n in lookup_batch_raw(fd, 4, value_size, chunk=count, after=after):
        out.append(values[:min(n, left) * value_size])
        left -= n
        if left <= 0:
            break
    if left > 0:
        raise BPFError(errno.ENOENT, f"array map: elements {first}..{first + count - 1} past its end")
    return b"".join(out)


class Reader:
    """Exact lookups of many keys in one map, one syscall each with no
    allocation: the attr and buffers are made once."""

    def __init__(self, fd, key_size, value_size):
        self.key = ctypes.create_string_buffer(key_size)
        self.value = ctypes.create_string_buffer(value_size)
        self.key_size = key_size
        self._key = memoryview(self.key).cast("B")  # a slice assignment: 0.5 us less than memmove
        self.attr = _Elem(map_fd=fd, key=ctypes.addressof(self.key), value=ctypes.addressof(self.value))
        self._ref = ctypes.byref(self.attr)
        self._size = ctypes.sizeof(self.attr)

    def get(self, key):
        """The value bytes stored under `key` (bytes of key_size), or None."""
        self._key[:] = key
        if _libc.syscall(_NR_BPF, MAP_LOOKUP_ELEM, self._ref, self._size) < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return None
            raise BPFError(err, os.strerror(err))
        return self.value.raw


def test_run(prog_fd, data, repeat=1, ctx=None):
    """BPF_PROG_TEST_RUN: returns (retval, duration_ns, data_out)."""
    data_in = ctypes.create_string_buffer(bytes(data), len(data))
    out = ctypes.create_string_buffer(len(data) + 256)
    attr = _TestRun(prog_fd=prog_fd, data_size_in=len(data), data_size_out=len(out),
                    data_in=ctypes.addressof(data_in), data_out=ctypes.addressof(out),
                    repeat=repeat)
    if ctx is not None:
        ctx_buf = ctypes.create_string_buffer(bytes(ctx), len(ctx))
        attr.ctx_in = ctypes.addressof(ctx_buf)
        attr.ctx_size_in = len(ctx)
    _bpf(PROG_TEST_RUN, attr)
    return attr.retval, attr.duration, out.raw[:attr.data_size_out]


PROG_LOAD = 5
PROG_TYPE_SCHED_CLS = 3


class _ProgLoad(ctypes.Structure):
    _fields_ = (u32("prog_type", "insn_cnt") + u64("insns", "license") + u32("log_level", "log_size")
                + u64("log_buf") + u32("kern_version", "prog_flags")
                + [("prog_name", ctypes.c_char * 16), ("pad", ctypes.c_uint8 * 64)])


def insn(code, dst=0, src=0, off=0, imm=0):
    """One eBPF instruction. imm is 32 bits either way: -1 or 0xffffffff
    (a routing table number up to 4294967295 is stored as its bit pattern)."""
    if not -2 ** 31 <= imm < 2 ** 32:
        raise ValueError(f"eBPF immediate {imm} does not fit in 32 bits")
    return struct.pack("<BBhI", code, (src << 4) | dst, off, imm & 0xffffffff)


def prog_load(prog_type, code, license=b"GPL", name="wgbpf_probe"):
    buf = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license)
    attr = _ProgLoad(prog_type=prog_type, insn_cnt=len(code) // 8, insns=ctypes.addressof(buf),
                     license=ctypes.addressof(lic), prog_name=name.encode()[:15])
    return _bpf(PROG_LOAD, attr)


def fib_probe(ifindex, table, flags):
    """Run bpf_fib_lookup(skb, {AF_INET, ifindex, 127.0.0.1, tbid=table},
    flags) once; returns its result (negative: an errno, e.g. -EINVAL for a
    flag this kernel does not know). No compiler: the program is 16 insns."""
    fp = 10
    code = b"".join([
        insn(0xbf, 6, 1),                                   # r6 = ctx
        *[insn(0x7a, fp, off=-64 + 8 * i) for i in range(8)],  # struct bpf_fib_lookup = {}
        insn(0x72, fp, off=-64, imm=2),                     # .family = AF_INET
        insn(0x62, fp, off=-64 + 8, imm=ifindex),           # .ifindex
        insn(0x62, fp, off=-64 + 32, imm=0x0100007F),       # .ipv4_dst = 127.0.0.1
        insn(0x62, fp, off=-64 + 48, imm=table),            # .tbid
        insn(0xbf, 1, 6),                                   # r1 = ctx
        insn(0xbf, 2, fp), insn(0x07, 2, imm=-64),          # r2 = &params
        insn(0xb7, 3, imm=64),                              # r3 = sizeof(params)
        insn(0xb7, 4, imm=flags),                           # r4 = flags
        insn(0x85, imm=69),                                 # call bpf_fib_lookup
        insn(0x95),                                         # exit
    ])
    fd = prog_load(PROG_TYPE_SCHED_CLS, code)
    try:
        ret, _, _ = test_run(fd, bytes(14) + bytes([0x45]) + bytes(19))
    finally:
        os.close(fd)
    return ctypes.c_int32(ret).value


def possible_cpus():
    """Number of per-CPU slots the kernel gives a per-CPU map value."""
    with open("/sys/devices/system/cpu/possible") as f:
        n = 0
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            n = max(n, int(hi or lo) + 1)
    return n

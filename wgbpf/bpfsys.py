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

# enum bpf_map_type
MAP_TYPE_HASH = 1
MAP_TYPE_ARRAY = 2
MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_LPM_TRIE = 11

F_NO_PREALLOC = 1
ANY, NOEXIST, EXIST = 0, 1, 2


class BPFError(OSError):
    pass


def _bpf(cmd, attr):
    ret = _libc.syscall(_NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise BPFError(err, os.strerror(err))
    return ret


class _MapCreate(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("numa_node", ctypes.c_uint32), ("map_name", ctypes.c_char * 16),
                ("pad", ctypes.c_uint8 * 64)]


class _Elem(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64),
                ("flags", ctypes.c_uint64)]


class _Batch(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _Obj(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32), ("path_fd", ctypes.c_int32)]


class _Info(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


class _ById(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32),
                ("open_flags", ctypes.c_uint32)]


class _TestRun(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class MapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
                ("btf_vmlinux_value_type_id", ctypes.c_uint32),
                ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
                ("btf_id", ctypes.c_uint32), ("btf_key_type_id", ctypes.c_uint32),
                ("btf_value_type_id", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("map_extra", ctypes.c_uint64)]


class ProgInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("tag", ctypes.c_uint8 * 8), ("jited_prog_len", ctypes.c_uint32),
                ("xlated_prog_len", ctypes.c_uint32), ("jited_prog_insns", ctypes.c_uint64),
                ("xlated_prog_insns", ctypes.c_uint64), ("load_time", ctypes.c_uint64),
                ("created_by_uid", ctypes.c_uint32), ("nr_map_ids", ctypes.c_uint32),
                ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16),
                ("ifindex", ctypes.c_uint32), ("gpl_compatible", ctypes.c_uint32),
                ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
                ("nr_jited_ksyms", ctypes.c_uint32), ("nr_jited_func_lens", ctypes.c_uint32),
                ("jited_ksyms", ctypes.c_uint64), ("jited_func_lens", ctypes.c_uint64),
                ("btf_id", ctypes.c_uint32), ("func_info_rec_size", ctypes.c_uint32),
                ("func_info", ctypes.c_uint64), ("nr_func_info", ctypes.c_uint32),
                ("nr_line_info", ctypes.c_uint32), ("line_info", ctypes.c_uint64),
                ("jited_line_info", ctypes.c_uint64), ("nr_jited_line_info", ctypes.c_uint32),
                ("line_info_rec_size", ctypes.c_uint32),
                ("jited_line_info_rec_size", ctypes.c_uint32),
                ("nr_prog_tags", ctypes.c_uint32), ("prog_tags", ctypes.c_uint64),
                ("run_time_ns", ctypes.c_uint64), ("run_cnt", ctypes.c_uint64)]


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
    # BPF_F_RDONLY (1 << 3) lets read-only listings open maps they cannot change
    return _bpf(OBJ_GET, _Obj(pathname=ctypes.addressof(p), file_flags=(1 << 3) if readonly else 0))


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


def lookup(fd, key, value):
    """Fill ctypes `value` from `key`; False when there is no such element."""
    try:
        _bpf(MAP_LOOKUP_ELEM, _Elem(map_fd=fd, key=ctypes.addressof(key),
                                    value=ctypes.addressof(value)))
    except BPFError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def update(fd, key, value, flags=ANY):
    _bpf(MAP_UPDATE_ELEM, _Elem(map_fd=fd, key=ctypes.addressof(key),
                                value=ctypes.addressof(value), flags=flags))


def delete(fd, key):
    try:
        _bpf(MAP_DELETE_ELEM, _Elem(map_fd=fd, key=ctypes.addressof(key)))
    except BPFError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def next_key(fd, key, out):
    """Write the key after `key` (None: the first) into `out`; False at the end."""
    try:
        _bpf(MAP_GET_NEXT_KEY, _Elem(map_fd=fd, key=ctypes.addressof(key) if key is not None else 0,
                                     value=ctypes.addressof(out)))
    except BPFError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


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


def lookup_batch_raw(fd, key_size, value_size, chunk=8192):
    """Yield (keys bytes, values bytes, count) per syscall over every
    element: no object per element, for maps of a million."""
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    # The batch cursor is a u32 for hash maps but a whole key for the generic
    # batch code (arrays, LPM tries): size it for either.
    in_batch = ctypes.create_string_buffer(max(key_size, 8))
    out_batch = ctypes.create_string_buffer(max(key_size, 8))
    first = True
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
    back to back (batch lookups: the cursor is the index before the first)."""
    out = []
    keys = ctypes.create_string_buffer(4 * count)
    values = ctypes.create_string_buffer(value_size * count)
    cursor = ctypes.c_uint32(first - 1)
    out_batch = ctypes.c_uint32()
    while count:
        attr = _Batch(in_batch=ctypes.addressof(cursor) if cursor.value != 0xFFFFFFFF else 0,
                      out_batch=ctypes.addressof(out_batch), keys=ctypes.addressof(keys),
                      values=ctypes.addressof(values), count=count, map_fd=fd)
        try:
            _bpf(MAP_LOOKUP_BATCH, attr)
        except BPFError as e:
            if e.errno != errno.ENOENT or attr.count == 0:
                raise
        out.append(values.raw[:attr.count * value_size])
        count -= attr.count
        cursor.value = out_batch.value
    return b"".join(out)


class Reader:
    """Exact lookups of many keys in one map, one syscall each with no
    allocation: the attr and buffers are made once."""

    def __init__(self, fd, key_size, value_size):
        self.key = ctypes.create_string_buffer(key_size)
        self.value = ctypes.create_string_buffer(value_size)
        self.key_size = key_size
        self.attr = _Elem(map_fd=fd, key=ctypes.addressof(self.key), value=ctypes.addressof(self.value))
        self._ref = ctypes.byref(self.attr)
        self._size = ctypes.sizeof(self.attr)

    def get(self, key):
        """The value bytes stored under `key` (bytes), or None."""
        ctypes.memmove(self.key, key, self.key_size)
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
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16),
                ("pad", ctypes.c_uint8 * 64)]


def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


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

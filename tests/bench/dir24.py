"""DIR-24-8 IPv4 longest-prefix match tables (as DPDK's rte_lpm), built in
Python for tests/bench/bench_dataplane.py.

    tbl24  2^24 little-endian u16 entries, indexed by addr >> 8 (32 MiB)
    tbl8   groups of 256 u16 entries, indexed by addr & 0xff (512 B a group)

An entry is 0 (no route), GROUP_FLAG | g (look in tbl8 group g), or a set
index (1 .. 0x7fff) into a small array of peer sets. Prefixes up to /24 are
painted into tbl24 shortest first, so a longer one overwrites the shorter
ones it sits in; a /25../32 gets its /24 a group, first filled with what the
tbl24 entry held (the covering route), then painted shortest first too.

The BPF side (bench_dataplane.py's BENCH_SUFFIX) keeps tbl24 as an array of
2^19 elements of 32 entries (64 bytes) and tbl8 as an array of groups:
array elements are rounded up to 8 bytes, so one u16 per element would
take four times the memory. Both are BPF_F_MMAPABLE: the flat bytes built
here are the maps' memory, byte for byte.
"""
import struct

TBL24_ENTRIES = 1 << 24
TBL24_BYTES = TBL24_ENTRIES * 2
PER_BLOCK = 32              # u16 entries per tbl24 array element
BLOCKS = TBL24_ENTRIES // PER_BLOCK
GROUP_ENTRIES = 256
GROUP_BYTES = GROUP_ENTRIES * 2
GROUP_FLAG = 0x8000
MAX_GROUPS = 0x8000         # 15 bits of group number
MAX_SETS = 0x8000           # set indexes 1 .. 0x7fff


class Dir24Error(ValueError):
    pass


def build(routes):
    """routes: iterable of (IPv4 address as int, prefix length, set index).

    Returns (tbl24 bytearray of TBL24_BYTES, tbl8 bytearray of
    groups * GROUP_BYTES, number of groups)."""
    short, long_ = [], []
    for r in routes:
        a, plen, s = r
        if not 0 < s < MAX_SETS:
            raise Dir24Error(f"set index {s} out of 1..{MAX_SETS - 1}")
        (short if plen <= 24 else long_).append(r)
    tbl24 = bytearray(TBL24_BYTES)
    packed = {}

    def entry(s):
        e = packed.get(s)
        if e is None:
            e = packed[s] = struct.pack("<H", s)
        return e

    short.sort(key=lambda r: r[1])
    for a, plen, s in short:
        start = (a >> 8) * 2
        if plen == 24:
            tbl24[start:start + 2] = entry(s)
        else:
            n = 1 << (24 - plen)
            tbl24[start:start + 2 * n] = entry(s) * n

    long_.sort(key=lambda r: r[1])
    groups = {}
    tbl8 = bytearray()
    for a, plen, s in long_:
        i24 = a >> 8
        g = groups.get(i24)
        if g is None:
            g = len(groups)
            if g >= MAX_GROUPS:
                raise Dir24Error(f"more than {MAX_GROUPS} /24s hold longer prefixes")
            groups[i24] = g
            tbl8 += bytes(tbl24[2 * i24:2 * i24 + 2]) * GROUP_ENTRIES  # the covering route
            tbl24[2 * i24:2 * i24 + 2] = struct.pack("<H", GROUP_FLAG | g)
        start = g * GROUP_BYTES + (a & 0xFF) * 2
        n = 1 << (32 - plen)
        tbl8[start:start + 2 * n] = entry(s) * n
    return tbl24, tbl8, len(groups)


def lookup(tbl24, tbl8, addr):
    """The set index for an IPv4 address (int), 0 if no route."""
    i24 = addr >> 8
    e = tbl24[2 * i24] | (tbl24[2 * i24 + 1] << 8)
    if e & GROUP_FLAG:
        off = (e & (GROUP_FLAG - 1)) * GROUP_BYTES + (addr & 0xFF) * 2
        e = tbl8[off] | (tbl8[off + 1] << 8)
    return e


def reference_lookup(routes, addr):
    """Longest match by brute force (for self-checks on small tables)."""
    best, best_len = 0, -1
    for a, plen, s in routes:
        mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0
        if addr & mask == a and plen > best_len:
            best, best_len = s, plen
    return best

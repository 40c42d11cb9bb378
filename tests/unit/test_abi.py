# SPDX-License-Identifier: GPL-2.0-or-later
"""wgbpf/abi.py must agree with bpf/wgbpf.h, and abi.MAPS with bpf/maps.h.

The header is parsed for its structs, #defines and enums, then a small C
program that #includes it is compiled with the host compiler and prints
sizeof/offsetof/alignof of every field and the value of every constant, as
the C compiler sees them. Python's ctypes mirror is compared against that.
"""
import ctypes
import os
import re
import shutil
import subprocess

import pytest

from wgbpf import abi, bpfsys
from wgbtest import require  # tests/wgbtest.py: pytest puts tests/ on the path (tests/conftest.py)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BPF_DIR = os.path.join(REPO, "bpf")
HEADER = os.path.join(BPF_DIR, "wgbpf.h")
SOURCE = os.path.join(BPF_DIR, "wgbpf.c")     # the programs
MAPS_H = os.path.join(BPF_DIR, "maps.h")      # their maps

# C struct -> ctypes mirror
STRUCTS = {
    "wgbpf_key4": abi.Key4,
    "wgbpf_key6": abi.Key6,
    "wgbpf_route": abi.Route,
    "wgbpf_set": abi.Set,
    "wgbpf_peer": abi.Peer,
    "wgbpf_tag": abi.Tag,
    "wgbpf_config": abi.Config,
    "wgbpf_peer_stats": abi.PeerStats,
    "wgbpf_flood": abi.Flood,
    "wgbpf_dir_elem": abi.DirElem,
    "wgbpf_monitor": abi.Monitor,
    "wgbpf_monitor_cpu": abi.MonitorCpu,
    "wgbpf_event": abi.Event,
}

# C scalar type -> ctypes type
SCALARS = {
    "__u8": ctypes.c_uint8,
    "__u16": ctypes.c_uint16,
    "__u32": ctypes.c_uint32,
    "__u64": ctypes.c_uint64,
    "char": ctypes.c_char,
}

# #defines -> abi module constants
DEFINES = {
    "WGBPF_MAX_ECMP": "MAX_ECMP",
    "WGBPF_MAX_PEERS": "MAX_PEERS",
    "WGBPF_MAX_ROUTES4": "MAX_ROUTES4",
    "WGBPF_MAX_ROUTES6": "MAX_ROUTES6",
    "WGBPF_MAX_TAGS": "MAX_TAGS",
    "WGBPF_MAX_LOCALS": "MAX_LOCALS",
    "WGBPF_MAX_FORWARDERS": "MAX_FORWARDERS",
    "WGBPF_NAME_LEN": "NAME_LEN",
    "WGBPF_IFNAME_LEN": "IFNAME_LEN",
    "WGBPF_PEER_UP": "PEER_UP",
    "WGBPF_OWN_CLSACT": "OWN_CLSACT",
    "WGBPF_CHECKED": "CHECKED",
    "WGBPF_FIB_LOOKUP_DIRECT": "FIB_LOOKUP_DIRECT",
    "WGBPF_FIB_LOOKUP_SKIP_NEIGH": "FIB_LOOKUP_SKIP_NEIGH",
    "WGBPF_FIB_LOOKUP_TBID": "FIB_LOOKUP_TBID",
    "WGBPF_DIR_PER_ELEM": "DIR_PER_ELEM",
    "WGBPF_DIR24_ELEMS": "DIR24_ELEMS",
    "WGBPF_DIR_GROUP": "DIR_GROUP",
    "WGBPF_DIR8_GROUPS": "DIR8_GROUPS",
    "WGBPF_DIR8_ELEMS": "DIR8_ELEMS",
    "WGBPF_MAX_SETS": "MAX_SETS",
    "WGBPF_OPERATOR_SETS": "OPERATOR_SETS",
    "WGBPF_SET_BUCKETS": "SET_BUCKETS",
    "WGBPF_MONITOR_RATE": "MONITOR_RATE",
    "WGBPF_MONITOR_BURST": "MONITOR_BURST",
    "WGBPF_EVENTS_SIZE": "EVENTS_SIZE",
    "WGBPF_FLOOD_PROG": "FLOOD_PROG",
    "WGBPF_TAIL_FLOOD": "TAIL_FLOOD",
}

# enum in the header -> (IntEnum in abi, prefix stripped from the C names)
ENUMS = {
    "wgbpf_origin": (abi.Origin, "WGBPF_ORIGIN_"),
    "wgbpf_policy": (abi.Policy, "WGBPF_POLICY_"),
    "wgbpf_source": (abi.Source, "WGBPF_SOURCE_"),
    "wgbpf_lookup": (abi.Lookup, "WGBPF_LOOKUP_"),
    "wgbpf_reason": (abi.Reason, "WGBPF_"),
    "wgbpf_watch": (abi.Watch, "WGBPF_WATCH_"),
    "wgbpf_hook": (abi.Hook, "WGBPF_HOOK_"),
    "wgbpf_set_kind": (abi.SetKind, "WGBPF_SET_"),
}

# BCC's map type strings -> abi's bpf_map_type numbers (and linux/bpf.h names)
MAP_TYPES = {
    "hash": ("HASH", "BPF_MAP_TYPE_HASH"),
    "array": ("ARRAY", "BPF_MAP_TYPE_ARRAY"),
    "percpu_array": ("PERCPU_ARRAY", "BPF_MAP_TYPE_PERCPU_ARRAY"),
    "lpm_trie": ("LPM_TRIE", "BPF_MAP_TYPE_LPM_TRIE"),
    "ringbuf": ("RINGBUF", "BPF_MAP_TYPE_RINGBUF"),
}

# The constants of other headers abi.py hardcodes.
SYSTEM = {
    "BPF_MAP_TYPE_HASH": abi.HASH,
    "BPF_MAP_TYPE_ARRAY": abi.ARRAY,
    "BPF_MAP_TYPE_PERCPU_ARRAY": abi.PERCPU_ARRAY,
    "BPF_MAP_TYPE_LPM_TRIE": abi.LPM_TRIE,
    "BPF_MAP_TYPE_RINGBUF": abi.RINGBUF,
    "BPF_F_NO_PREALLOC": abi.NO_PREALLOC,
    "BPF_F_MMAPABLE": abi.MMAPABLE,
    # bpfsys's own: the syscall's commands and flags
    "BPF_F_RDONLY": bpfsys.F_RDONLY,
    "BPF_ANY": bpfsys.ANY,
    "BPF_NOEXIST": bpfsys.NOEXIST,
    "BPF_EXIST": bpfsys.EXIST,
    "BPF_MAP_CREATE": bpfsys.MAP_CREATE,
    "BPF_MAP_LOOKUP_ELEM": bpfsys.MAP_LOOKUP_ELEM,
    "BPF_MAP_UPDATE_ELEM": bpfsys.MAP_UPDATE_ELEM,
    "BPF_MAP_DELETE_ELEM": bpfsys.MAP_DELETE_ELEM,
    "BPF_MAP_GET_NEXT_KEY": bpfsys.MAP_GET_NEXT_KEY,
    "BPF_PROG_LOAD": bpfsys.PROG_LOAD,
    "BPF_OBJ_PIN": bpfsys.OBJ_PIN,
    "BPF_OBJ_GET": bpfsys.OBJ_GET,
    "BPF_PROG_TEST_RUN": bpfsys.PROG_TEST_RUN,
    "BPF_PROG_GET_FD_BY_ID": bpfsys.PROG_GET_FD_BY_ID,
    "BPF_MAP_GET_FD_BY_ID": bpfsys.MAP_GET_FD_BY_ID,
    "BPF_OBJ_GET_INFO_BY_FD": bpfsys.OBJ_GET_INFO_BY_FD,
    "BPF_MAP_LOOKUP_BATCH": bpfsys.MAP_LOOKUP_BATCH,
    "BPF_MAP_UPDATE_BATCH": bpfsys.MAP_UPDATE_BATCH,
    "BPF_MAP_DELETE_BATCH": bpfsys.MAP_DELETE_BATCH,
    "BPF_PROG_TYPE_SCHED_CLS": bpfsys.PROG_TYPE_SCHED_CLS,
    "AF_INET": abi.AF_INET,
    "AF_INET6": abi.AF_INET6,
    # wgbpf.h defines these itself (BCC's headers may predate TBID): they
    # must equal the system's uapi values
    "BPF_FIB_LOOKUP_DIRECT": abi.FIB_LOOKUP_DIRECT,
    "BPF_FIB_LOOKUP_SKIP_NEIGH": abi.FIB_LOOKUP_SKIP_NEIGH,
    "BPF_FIB_LOOKUP_TBID": abi.FIB_LOOKUP_TBID,
}


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def read(path):
    with open(path) as f:
        return strip_comments(f.read())


# -- parsing the C side ------------------------------------------------------

DECL_RE = re.compile(r"(__u8|__u16|__u32|__u64|char)\s+(\w+)\s*(?:\[\s*(\w+)\s*\])?")


def header_structs(unparsed=None):
    """{struct name: [(type, field, array length expr or None)]}; declarations
    this test cannot read go to `unparsed` (a list) when given."""
    out = {}
    for name, body in re.findall(r"\bstruct\s+(\w+)\s*\{(.*?)\}\s*;", read(HEADER), re.S):
        fields = []
        for decl in body.split(";"):
            if not decl.strip():
                continue
            m = DECL_RE.fullmatch(decl.strip())
            if m:
                t, f, n = m.groups()
                fields.append((t, f, n))
            elif unparsed is not None:
                unparsed.append(f"struct {name}: {decl.strip()!r}")
        out[name] = fields
    return out


def header_defines():
    """Names of the #defines with a value (the include guard has none)."""
    return re.findall(r"^\s*#\s*define\s+(WGBPF_\w+)[ \t]+\S", read(HEADER), re.M)


def string_defines():
    """Names of the #defines whose value is a C string."""
    return re.findall(r'^\s*#\s*define\s+(WGBPF_\w+)[ \t]+"', read(HEADER), re.M)


def header_enums():
    """{enum name: [constant names]}"""
    return {name: re.findall(r"\b(WGBPF_\w+)\s*=", body)
            for name, body in re.findall(r"\benum\s+(\w+)\s*\{(.*?)\}\s*;", read(HEADER), re.S)}


PIN_RE = re.compile(
    r'BPF_TABLE_PINNED\(\s*"(\w+)"\s*,\s*([^,]+?)\s*,\s*([^,]+?)\s*,\s*(\w+)\s*,'
    r'\s*([^,]+?)\s*,\s*WGBPF_PIN_DIR\s*"/([^"]*)"\s*\)\s*;')


RINGBUF_RE = re.compile(
    r'WGBPF_RINGBUF_PINNED\(\s*(\w+)\s*,\s*([^,]+?)\s*,\s*WGBPF_PIN_DIR\s*"/([^"]*)"\s*\)\s*;')


def all_sources():
    """Every file of bpf/ but wgbpf.h, as one text."""
    return "".join(read(os.path.join(BPF_DIR, n)) for n in sorted(os.listdir(BPF_DIR))
                   if n.endswith((".c", ".h")) and n != "wgbpf.h")


def source_maps():
    """[(type string, key type, value type, name, max_entries expr, pin name)];
    a ring buffer has no key or value type ("")."""
    src = read(MAPS_H)
    return PIN_RE.findall(src) + [("ringbuf", "", "", n, size, pin)
                                  for n, size, pin in RINGBUF_RE.findall(src)]


def c_type(t):
    """A map key/value type of wgbpf.c as plain C (BCC's u32 is __u32)."""
    return {"u32": "__u32", "u64": "__u64", "u16": "__u16", "u8": "__u8"}.get(t.strip(), t.strip())


# -- the compiled probe ------------------------------------------------------

def probe_source():
    lines = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        "#include <sys/socket.h>",
        "#include <linux/bpf.h>",
        '#include "wgbpf.h"',
        "#define FIELD_SIZE(s, f) sizeof(((struct s *)0)->f)",
        "#define ELEM_SIZE(s, f) sizeof(((struct s *)0)->f[0])",
        "int main(void) {",
    ]
    for s, fields in header_structs().items():
        lines.append(f'printf("struct {s} %zu %zu\\n", sizeof(struct {s}), _Alignof(struct {s}));')
        for t, f, n in fields:
            elem = f"ELEM_SIZE({s}, {f})" if n else f"FIELD_SIZE({s}, {f})"
            lines.append(f'printf("field {s} {f} %zu %zu %zu\\n", offsetof(struct {s}, {f}), '
                         f"FIELD_SIZE({s}, {f}), {elem});")
    consts = header_defines() + [c for names in header_enums().values() for c in names]
    for c in consts:
        if c in string_defines():
            lines.append(f'printf("str {c} %s\\n", {c});')
        else:
            lines.append(f'printf("const {c} %lld\\n", (long long)({c}));')
    for c in SYSTEM:
        lines.append(f'printf("sys {c} %lld\\n", (long long)({c}));')
    for _, key, value, name, max_entries, _ in source_maps():
        ksize = f"sizeof({c_type(key)})" if key else "(size_t)0"
        vsize = f"sizeof({c_type(value)})" if value else "(size_t)0"
        lines.append(f'printf("map {name} %zu %zu %lld\\n", {ksize}, '
                     f"{vsize}, (long long)({max_entries}));")
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_side(tmp_path_factory):
    """What the C compiler says: {"struct": {...}, "field": {...}, "const": {...}, ...}"""
    cc = shutil.which("cc") or shutil.which("gcc")
    require(cc is not None, "needs a C compiler (cc) to compile bpf/wgbpf.h")
    d = tmp_path_factory.mktemp("abi")
    src, exe = d / "probe.c", d / "probe"
    src.write_text(probe_source())
    r = subprocess.run([cc, "-std=gnu11", "-Wall", "-Werror", f"-I{BPF_DIR}", "-o", str(exe), str(src)],
                       capture_output=True, text=True)
    if r.returncode != 0 and "linux/types.h" in r.stderr:
        require(False, f"needs kernel uapi headers (linux-libc-dev): {r.stderr.strip()}")
    assert r.returncode == 0, f"compiling the probe failed:\n{r.stderr}\n--- {src}:\n{src.read_text()}"
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    res = {"struct": {}, "field": {}, "const": {}, "sys": {}, "map": {}}
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind == "struct":
            res["struct"][rest[0]] = tuple(map(int, rest[1:]))
        elif kind == "field":
            res["field"][(rest[0], rest[1])] = tuple(map(int, rest[2:]))
        elif kind == "map":
            res["map"][rest[0]] = tuple(map(int, rest[1:]))
        elif kind == "str":
            res["const"][rest[0]] = rest[1]
        else:
            res[kind][rest[0]] = int(rest[1])
    return res


# -- the parse itself must see what the brief names ------------------------

def test_header_parse_sees_every_struct_and_constant():
    unparsed = []
    assert set(header_structs(unparsed)) == set(STRUCTS)
    assert not unparsed, f"declarations this test cannot read: {unparsed}"
    assert set(DEFINES) <= set(header_defines())
    assert set(header_enums()) == set(ENUMS)
    assert {"WGBPF_STEERED", "WGBPF_NO_ROUTE", "WGBPF_REASON_MAX"} <= set(header_enums()["wgbpf_reason"])


# -- structs -------------------------------------------------------------------

@pytest.mark.parametrize("cname", sorted(STRUCTS))
def test_struct_size_and_alignment(c_side, cname):
    py = STRUCTS[cname]
    size, align = c_side["struct"][cname]
    assert ctypes.sizeof(py) == size, f"sizeof(struct {cname}) is {size} in C, {ctypes.sizeof(py)} in abi.{py.__name__}"
    assert ctypes.alignment(py) == align, f"struct {cname}: alignment {align} in C, {ctypes.alignment(py)} in Python"


@pytest.mark.parametrize("cname", sorted(STRUCTS))
def test_struct_fields(c_side, cname):
    py = STRUCTS[cname]
    cfields = header_structs()[cname]
    assert [f for _, f, _ in cfields] == [f for f, _ in py._fields_], \
        f"struct {cname} and abi.{py.__name__} name different fields (or in another order)"
    for (ctype, f, n), (pf, ptype) in zip(cfields, py._fields_):
        offset, size, elem = c_side["field"][(cname, f)]
        desc = getattr(py, pf)
        assert desc.offset == offset, f"{cname}.{f}: offset {offset} in C, {desc.offset} in Python"
        assert desc.size == size, f"{cname}.{f}: size {size} in C, {desc.size} in Python"
        want = SCALARS[ctype]
        if n:
            assert issubclass(ptype, ctypes.Array), f"{cname}.{f} is an array in C, not in Python"
            assert ptype._type_ is want, f"{cname}.{f}: element {ctype} in C, {ptype._type_} in Python"
            assert ptype._length_ * ctypes.sizeof(want) == size
        else:
            assert ptype is want, f"{cname}.{f}: {ctype} in C, {ptype} in Python"
        assert ctypes.sizeof(want) == elem


# -- constants ------------------------------------------------------------------

@pytest.mark.parametrize("cname", sorted(DEFINES))
def test_define(c_side, cname):
    assert getattr(abi, DEFINES[cname]) == c_side["const"][cname], \
        f"{cname} is {c_side['const'][cname]} in C, abi.{DEFINES[cname]} is {getattr(abi, DEFINES[cname])}"


def test_every_define_is_mirrored():
    assert set(header_defines()) == set(DEFINES), "a #define of wgbpf.h has no mirror in abi.py (add it to DEFINES here too)"


@pytest.mark.parametrize("ename", sorted(ENUMS))
def test_enum(c_side, ename):
    py, prefix = ENUMS[ename]
    want = {}
    for cname in header_enums()[ename]:
        assert cname.startswith(prefix), f"{cname} in enum {ename} lacks prefix {prefix}"
        if cname == "WGBPF_REASON_MAX":
            assert abi.REASON_MAX == c_side["const"][cname]
            continue
        want[cname[len(prefix):]] = c_side["const"][cname]
    assert {m.name: m.value for m in py} == want, f"abi.{py.__name__} differs from enum {ename}"


def test_reason_max_bounds_reasons(c_side):
    assert abi.REASON_MAX == len(abi.Reason) == max(abi.Reason) + 1
    assert sorted(abi.Reason) == list(range(abi.REASON_MAX)), "reasons are dense from 0 (array indexes)"


@pytest.mark.parametrize("cname", sorted(SYSTEM))
def test_system_constant(c_side, cname):
    assert SYSTEM[cname] == c_side["sys"][cname]


# -- maps ----------------------------------------------------------------------

def test_every_map_macro_is_parsed():
    src = all_sources()  # maps are declared in maps.h, and nowhere else
    assert len(source_maps()) == src.count("BPF_TABLE_PINNED(") + src.count("WGBPF_RINGBUF_PINNED(") - 1, \
        "a BPF_TABLE_PINNED or WGBPF_RINGBUF_PINNED this test cannot parse, or one outside maps.h " \
        "(the macro's #define is one)"
    for macro in ("BPF_TABLE(", "BPF_HASH(", "BPF_ARRAY(", "BPF_PERCPU_ARRAY(", "BPF_LPM_TRIE(",
                  "BPF_F_TABLE(", "BPF_PERCPU_HASH("):
        assert macro not in src, f"bpf/ declares an unpinned map ({macro}): abi.MAPS cannot open it"


def test_source_declares_exactly_abi_maps():
    names = [m[3] for m in source_maps()]
    assert sorted(names) == sorted(abi.MAPS), "maps of wgbpf.c and abi.MAPS differ"
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("name", sorted(abi.MAPS))
def test_map_declaration(c_side, name):
    spec = abi.MAPS[name]
    decl = {m[3]: m for m in source_maps()}.get(name)
    assert decl is not None, f"wgbpf.c declares no BPF_TABLE_PINNED for {name}"
    tstr, key, value, _, _, pin = decl
    assert pin == name, f"{name} is pinned as {pin!r}"
    assert spec.name == name
    assert tstr in MAP_TYPES, f"{name}: map type {tstr!r} unknown to this test"
    assert spec.type == getattr(abi, MAP_TYPES[tstr][0]), f"{name}: wgbpf.c says {tstr!r}, abi.MAPS says {spec.type}"
    assert spec.type == c_side["sys"][MAP_TYPES[tstr][1]]
    ksize, vsize, max_entries = c_side["map"][name]
    assert ctypes.sizeof(spec.key) == ksize, f"{name}: key {key} is {ksize} bytes, abi key {ctypes.sizeof(spec.key)}"
    assert ctypes.sizeof(spec.value) == vsize, f"{name}: value {value} is {vsize} bytes, abi value {ctypes.sizeof(spec.value)}"
    assert spec.max_entries == max_entries, f"{name}: max_entries {max_entries} in C, {spec.max_entries} in abi"
    # key/value types name the same struct on both sides
    for ctext, py in ((key, spec.key), (value, spec.value)):
        if not ctext:  # a ring buffer: neither key nor value
            assert py is abi.Empty, f"{name}: a ring buffer, but abi names {py.__name__}"
            continue
        m = re.fullmatch(r"struct\s+(\w+)", ctext.strip())
        if m:
            assert STRUCTS[m.group(1)] is py, f"{name}: {ctext} in C, {py.__name__} in abi"
        else:
            assert py is SCALARS[c_type(ctext)], f"{name}: {ctext} in C, {py.__name__} in abi"


def test_lpm_tries_are_not_preallocated():
    # the kernel refuses BPF_MAP_TYPE_LPM_TRIE without BPF_F_NO_PREALLOC
    for spec in abi.MAPS.values():
        if spec.type == abi.LPM_TRIE:
            assert spec.flags & abi.NO_PREALLOC, spec.name


def test_lpm_keys_start_with_prefixlen():
    for spec in abi.MAPS.values():
        if spec.type == abi.LPM_TRIE:
            assert spec.key._fields_[0][0] == "prefixlen" and spec.key.prefixlen.offset == 0
            assert spec.key._fields_[0][1] is ctypes.c_uint32


def test_reason_counters_fit():
    assert abi.MAPS["counters"].max_entries == abi.REASON_MAX
    assert abi.MAPS["peer_stats"].max_entries == abi.MAPS["peers"].max_entries == abi.MAX_PEERS


def test_programs_are_in_source():
    src = read(SOURCE)
    for prog in abi.PROGRAMS:
        assert re.search(r"\bint\s+%s\s*\(\s*struct\s+__sk_buff\s*\*" % prog, src), f"no program {prog} in wgbpf.c"
    assert set(abi.PROGRAMS.values()) <= {"ingress", "egress"}


def test_flood_program_is_in_source():
    # dataplane loads it by abi.FLOOD_PROG into slot abi.TAIL_FLOOD of `tail`
    assert re.search(r"\bint\s+%s\s*\(\s*struct\s+__sk_buff\s*\*" % abi.FLOOD_PROG, read(SOURCE))
    assert abi.FLOOD_PROG not in abi.PROGRAMS, "the flood is tail-called, never attached"
    assert "tail.call(skb, WGBPF_TAIL_FLOOD)" in all_sources()


def test_insn_immediate_is_32_bits_either_sign():
    """A routing table up to 4294967295 is an immediate's bit pattern; one
    past either end is refused by name, not a struct.error."""
    from wgbpf import bpfsys
    assert bpfsys.insn(0x62, imm=2 ** 32 - 1)[4:] == bpfsys.insn(0x62, imm=-1)[4:] == b"\xff" * 4
    assert bpfsys.insn(0x62, imm=2 ** 31)[4:] == b"\x00\x00\x00\x80"
    for imm in (2 ** 32, -2 ** 31 - 1):
        with pytest.raises(ValueError, match="32 bits"):
            bpfsys.insn(0x62, imm=imm)

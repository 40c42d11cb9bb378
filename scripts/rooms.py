#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The tree's rooms: how big each module of wgbpf/ is, its biggest class and
its longest function, and which break a limit:

  a module          at most 600 lines
  a class           at most 25 methods (each `def` directly in its body;
                    a nested class counts apart)
  a function        at most 80 lines, from its `def` to its last line
                    (decorators not counted); methods and nested ones too

A limit may be broken only with the reason written beside it: a comment
`# rooms: <reason>` on the `def`/`class` line or the line above it (a
reason may go on over the comment lines after it), and for a module in its
first 5 lines. Exits 1 when a room breaks a limit without
one.

Usage: python3 scripts/rooms.py [--json] [PATH ...]   (default: wgbpf/)
"""
import argparse
import ast
import dataclasses
import json
import os
import re
import sys

MODULE_LINES = 600
CLASS_METHODS = 25
FUNCTION_LINES = 80
MODULE_REASON_LINES = 5
REASON = re.compile(r"#\s*rooms:\s*(\S.*?)\s*$")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Room:
    """One module measured."""
    path: str
    lines: int
    biggest_class: str = None
    methods: int = 0
    longest_function: str = None
    function_lines: int = 0
    violations: list = dataclasses.field(default_factory=list)   # [str]
    excused: list = dataclasses.field(default_factory=list)      # [str]: broken, with a reason


def _comment(line):
    return line.strip().startswith("#")


def _reason_from(lines, n):
    """The reason a `# rooms:` comment on line n starts, with the comment
    lines that go on from it (a reason may take several)."""
    parts = [REASON.search(lines[n - 1]).group(1)]
    for line in lines[n:]:
        if not _comment(line) or REASON.search(line):
            break
        parts.append(line.strip().lstrip("#").strip())
    return " ".join(p for p in parts if p)


def reason(lines, lineno):
    """The `# rooms:` reason on line `lineno` (1-based) or in the comment
    just above it (its lines may go on to the one above `lineno`), or None."""
    m = REASON.search(lines[lineno - 1]) if 1 <= lineno <= len(lines) else None
    if m:
        return m.group(1)
    n = lineno - 1
    while 1 <= n <= len(lines) and _comment(lines[n - 1]):
        if REASON.search(lines[n - 1]):
            return _reason_from(lines, n)
        n -= 1
    return None


def module_reason(lines):
    """The `# rooms:` reason a module gives in its first lines, or None."""
    for n in range(1, min(MODULE_REASON_LINES, len(lines)) + 1):
        if REASON.search(lines[n - 1]):
            return _reason_from(lines, n)
    return None


def _named(tree):
    """(qualified name, node) of every class and function, nested ones too."""
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                yield name, child
                yield from walk(child, name + ".")
            else:
                yield from walk(child, prefix)
    yield from walk(tree, "")


def measure(text, path="<source>"):
    """The Room of one module's source text."""
    lines = text.splitlines()
    room = Room(path, len(lines))

    def judge(what, size, limit, why):
        if size > limit:
            (room.excused if why else room.violations).append(
                f"{path}: {what}: {size} > {limit}" + (f" (rooms: {why})" if why else ""))

    judge("module lines", room.lines, MODULE_LINES, module_reason(lines))
    for name, node in _named(ast.parse(text, path)):
        why = reason(lines, node.lineno)
        if node.decorator_list and not why:  # above the decorators
            why = reason(lines, node.decorator_list[0].lineno)
        if isinstance(node, ast.ClassDef):
            methods = sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in node.body)
            if methods > room.methods or room.biggest_class is None:
                room.biggest_class, room.methods = name, methods
            judge(f"class {name} methods", methods, CLASS_METHODS, why)
        else:
            size = node.end_lineno - node.lineno + 1
            if size > room.function_lines:
                room.longest_function, room.function_lines = name, size
            judge(f"function {name} lines", size, FUNCTION_LINES, why)
    return room


def modules(paths):
    for p in paths:
        if os.path.isfile(p):
            yield p
            continue
        for d, dirs, files in os.walk(p):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")
            yield from (os.path.join(d, f) for f in sorted(files) if f.endswith(".py"))


def survey(paths):
    rooms = []
    for path in modules(paths):
        with open(path, encoding="utf-8") as f:
            rooms.append(measure(f.read(), os.path.relpath(path, ROOT)))
    return rooms


def table(rooms):
    rows = [("path", "lines", "biggest class", "methods", "longest function", "lines")]
    for r in rooms:
        rows.append((r.path, str(r.lines), r.biggest_class or "-", str(r.methods) if r.biggest_class else "-",
                     r.longest_function or "-", str(r.function_lines) if r.longest_function else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {1, 3, 5}
    return "\n".join("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     .rstrip() for row in rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Measure the tree's rooms; exit 1 on a limit broken without a reason.")
    ap.add_argument("--json", action="store_true", help="the same as JSON")
    ap.add_argument("paths", nargs="*", help="modules or directories (default: wgbpf/)")
    args = ap.parse_args(argv)
    rooms = survey(args.paths or [os.path.join(ROOT, "wgbpf")])
    violations = [v for r in rooms for v in r.violations]
    excused = [v for r in rooms for v in r.excused]
    if args.json:
        print(json.dumps({"limits": {"module_lines": MODULE_LINES, "class_methods": CLASS_METHODS,
                                     "function_lines": FUNCTION_LINES},
                          "rooms": [dataclasses.asdict(r) for r in rooms],
                          "violations": violations, "excused": excused}, indent=2))
    else:
        print(table(rooms))
        print(f"\nlimits: module {MODULE_LINES} lines, class {CLASS_METHODS} methods, "
              f"function {FUNCTION_LINES} lines")
        for title, items in (("broken with a reason", excused), ("violations", violations)):
            if items:
                print(f"\n{title} ({len(items)}):")
                print("\n".join(f"  {v}" for v in items))
        if not violations:
            print("\nno violations")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())

# SPDX-License-Identifier: GPL-2.0-or-later
"""The floor plan holds: no import cycle in wgbpf/ (imports inside
functions counted too), nothing but the CLI imports the loop, the two
backends never import each other, and nothing in dataplane/ knows a
backend, the loop or the CLI. Read from the sources with ast."""
import ast
import glob
import os

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def modules():
    out = {}
    for path in glob.glob(os.path.join(ROOT, "wgbpf", "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


def graph():
    mods = modules()
    g = {m: set() for m in mods}
    for m, path in mods.items():
        package = m if path.endswith("__init__.py") else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rsplit(".", 1)[0]
                mod = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            g[m].update(n for n in names if n in mods and n != m and not m.startswith(n + "."))
    return g


def test_no_import_cycle():
    g = graph()
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in g[m]:
            assert state.get(n) != "open", "import cycle: " + " -> ".join(path + [n])
            if n not in state:
                visit(n, path + [n])
        state[m] = "done"
    for m in g:
        if m not in state:
            visit(m, [m])


def test_the_floors():
    g = graph()
    assert {m for m, deps in g.items() if "wgbpf.daemon" in deps} == {"wgbpf.cli"}
    assert "wgbpf.backends.allowedips" not in g["wgbpf.backends.maps"]
    assert "wgbpf.backends.maps" not in g["wgbpf.backends.allowedips"]
    for m, deps in g.items():
        if m.startswith("wgbpf.dataplane"):
            assert not {d for d in deps if d.startswith(("wgbpf.backends", "wgbpf.daemon", "wgbpf.cli"))}, m
        if m in ("wgbpf.inspect", "wgbpf.top", "wgbpf.instance"):
            assert not {d for d in deps if d.startswith(("wgbpf.backends", "wgbpf.daemon"))}, m

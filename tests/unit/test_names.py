# SPDX-License-Identifier: GPL-2.0-or-later
"""Every name one wgbpf module takes from another exists there: each
`from .x import name`, and each `x.name` read off a wgbpf module imported
as `x`, in wgbpf/ and the tests. A room split or a name moved must leave
no caller behind (the children run `python -m wgbpf...`, where a missing
name shows only when they start)."""
import ast
import glob
import importlib
import os

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def sources():
    for pattern in ("wgbpf/**/*.py", "tests/**/*.py"):
        yield from glob.glob(os.path.join(ROOT, pattern), recursive=True)


def module_name(path):
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def absolute(path, node):
    """The wgbpf module a `from ... import` names, or None."""
    if node.level == 0:
        return node.module if (node.module or "").split(".")[0] == "wgbpf" else None
    package = module_name(path)
    if not path.endswith("__init__.py"):
        package = package.rsplit(".", 1)[0]
    for _ in range(node.level - 1):
        package = package.rsplit(".", 1)[0]
    return f"{package}.{node.module}" if node.module else package


def is_module(name):
    return os.path.exists(os.path.join(ROOT, *name.split("."))) or \
        os.path.exists(os.path.join(ROOT, *name.split(".")) + ".py")


def test_every_imported_name_exists():
    missing = []
    for path in sources():
        tree = ast.parse(open(path).read())
        bound = {}  # local name -> the wgbpf module it is
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = absolute(path, node)
                if mod is None or not mod.startswith("wgbpf"):
                    continue
                for a in node.names:
                    full = f"{mod}.{a.name}"
                    if is_module(full):
                        bound[a.asname or a.name] = full
                    elif not hasattr(importlib.import_module(mod), a.name):
                        missing.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: {mod} has no {a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("wgbpf.") and a.asname:
                        bound[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and isinstance(node.ctx, ast.Load)):
                mod = importlib.import_module(bound[node.value.id])
                if not hasattr(mod, node.attr) and not is_module(f"{bound[node.value.id]}.{node.attr}"):
                    missing.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: {bound[node.value.id]} "
                                   f"has no {node.attr}")
    assert not missing, "\n".join(sorted(set(missing)))

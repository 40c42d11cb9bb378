# SPDX-License-Identifier: GPL-2.0-or-later
"""What make deb installs, checked without building it: the version from
pyproject.toml, the man page and completion generated from the CLI, the
example config, the unit, and debian/control agreeing with pyproject."""
import os
import re
import subprocess
import sys
import tomllib

import click
from click.testing import CliRunner

from wgbpf import cli, config
from wgbpf.version import VERSION

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read(*path):
    with open(os.path.join(REPO, *path)) as f:
        return f.read()


def project():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def test_version_is_pyprojects():
    assert VERSION == project()["version"]
    r = CliRunner().invoke(cli.main, ["--version"], prog_name="wgbpf")
    assert r.exit_code == 0 and r.stdout == f"wgbpf {VERSION}\n"


def test_example_config_is_valid_and_for_wg0():
    front, *_ = config.load_toml(os.path.join(REPO, "etc", "wgbpf", "wg0.toml.example"))
    assert front == "wg0"


def test_unit_runs_the_installed_command():
    unit = read("systemd", "wgbpf@.service")
    assert re.search(r"^ExecStart=/usr/bin/wgbpf daemon %i ", unit, re.M)
    assert "/usr/local" not in unit and "Documentation=man:wgbpf(8)" in unit


def test_manpage_covers_every_command():
    out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "manpage.py")],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith(".TH WGBPF 8 ") and f'"wgbpf {VERSION}"' in out.split("\n")[0]
    ctx = click.Context(cli.main, info_name="wgbpf")
    for name in cli.main.list_commands(ctx):
        if not cli.main.get_command(ctx, name).hidden:
            assert f'.SS "wgbpf {name} ' in out, name
    assert "\\-\\-config" in out  # options, with roff's hyphens


def test_bash_completion_from_click():
    r = subprocess.run([sys.executable, "-c", "from wgbpf.cli import main; main(prog_name='wgbpf')"],
                       env=dict(os.environ, _WGBPF_COMPLETE="bash_source"), capture_output=True, text=True)
    assert "complete -o nosort -F _wgbpf_completion wgbpf" in r.stdout


def test_debian_dependency_floors_are_pyprojects():
    """debian/control and pyproject.toml name the same minimum versions
    (Debian 12's), so neither claims what the other does not test."""
    control = read("debian", "control")
    for dep in project()["dependencies"]:
        name, floor = re.fullmatch(r"([\w-]+)>=([\w.]+)", dep).groups()
        assert f"python3-{name} (>= {floor})" in control, dep


def test_every_subpackage_is_installed():
    """pyproject.toml names (or finds) every directory of wgbpf/ holding
    Python (wgbpf.dataplane, ...): pybuild installs only those, and a
    subpackage left out fails the installed wgbpf at its first import."""
    import fnmatch  # setuptools' own matching, without setuptools (Debian 13's root has none)
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
    want = {os.path.relpath(d, REPO).replace(os.sep, ".")
            for d, _, names in os.walk(os.path.join(REPO, "wgbpf"))
            if "__pycache__" not in d and any(n.endswith(".py") for n in names)}
    if isinstance(packages, dict):  # [tool.setuptools.packages.find]
        find = packages["find"]
        assert find.get("where", ["."]) == ["."], find
        packages = {p for p in want if any(fnmatch.fnmatchcase(p, i) for i in find.get("include", ["*"]))
                    and not any(fnmatch.fnmatchcase(p, x) for x in find.get("exclude", ()))}
    assert "wgbpf.dataplane" in want and want <= set(packages), want - set(packages)

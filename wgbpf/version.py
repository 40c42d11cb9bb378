# SPDX-License-Identifier: GPL-2.0-or-later
"""wgbpf's version, whose one source is pyproject.toml.

In a checkout (the package beside pyproject.toml) that file is read, so an
edit shows at once; installed (the .deb, a wheel), the metadata the build
wrote from it is.
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _version():
    try:
        import tomllib
        with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
            project = tomllib.load(f)["project"]
        if project["name"] == "wgbpf":
            return project["version"]
    except (OSError, KeyError, ValueError):
        pass
    from importlib import metadata
    try:
        return metadata.version("wgbpf")
    except metadata.PackageNotFoundError:
        return "unknown"


VERSION = _version()

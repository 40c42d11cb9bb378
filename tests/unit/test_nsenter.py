# SPDX-License-Identifier: GPL-2.0-or-later
"""wgbpf.nsenter without root: a namespace that does not exist. Into one
and back is tests/bpf/test_nsenter.py's (root)."""
import pytest

from wgbpf import nsenter


def test_no_such_namespace(tmp_path):
    missing = str(tmp_path / "nope")
    for way in (nsenter.enter, lambda n: nsenter.run(n, int), lambda n: nsenter.entered(n).__enter__()):
        with pytest.raises(FileNotFoundError):
            way(missing)

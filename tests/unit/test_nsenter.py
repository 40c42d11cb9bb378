# SPDX-License-Identifier: GPL-2.0-or-later
"""wgbpf.nsenter: into a network namespace and back, on this thread only.
Needs root for the namespace (the netns fixture skips without it)."""
import pytest

from wgbpf import maps, nsenter


def test_entered_comes_back_even_when_the_block_raises(netns):
    home = maps.netns_id()
    with pytest.raises(RuntimeError):
        with nsenter.entered(netns):
            assert maps.netns_id() != home
            raise RuntimeError("from inside")
    assert maps.netns_id() == home


def test_run_leaves_the_caller_where_it_is(netns):
    home = maps.netns_id()
    there = nsenter.run(netns, maps.netns_id)
    assert there != home and maps.netns_id() == home
    with nsenter.entered(f"/run/netns/{netns}"):  # a path works as a name does
        assert maps.netns_id() == there


def test_no_such_namespace(tmp_path):
    missing = str(tmp_path / "nope")
    for way in (nsenter.enter, lambda n: nsenter.run(n, int), lambda n: nsenter.entered(n).__enter__()):
        with pytest.raises(FileNotFoundError):
            way(missing)

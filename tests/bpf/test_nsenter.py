# SPDX-License-Identifier: GPL-2.0-or-later
"""wgbpf.nsenter: into a network namespace and back, on this thread only.
Root, for the namespace (the netns fixture); a namespace that does not
exist is tests/unit/test_nsenter.py's."""
import pytest

from wgbpf import maps, nsenter

pytestmark = pytest.mark.root


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

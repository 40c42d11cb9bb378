# SPDX-License-Identifier: GPL-2.0-or-later
"""Peer ids: a full instance (1,023 peers) can still replace one of them."""
import pytest

from wgbpf import abi
from wgbpf.dataplane import AttachError, assign_ids

FULL = abi.MAX_PEERS - 1


def test_replacing_one_of_1023_peers_reuses_the_departing_id():
    existing = {i: f"p{i}" for i in range(1, FULL + 1)}
    names = [f"p{i}" for i in range(1, FULL + 1) if i != 500] + ["newcomer"]
    ids, reused = assign_ids(existing, names)
    assert ids["newcomer"] == 500 and reused == [500]  # forgotten before it is reused
    assert all(ids[f"p{i}"] == i for i in range(1, FULL + 1) if i != 500)
    assert len(set(ids.values())) == FULL


def test_free_ids_first_departing_peers_kept_until_the_end():
    ids, reused = assign_ids({1: "a", 2: "b"}, ["a", "c"])
    assert ids == {"a": 1, "c": 3} and reused == []  # b's routes never reach c


def test_more_than_the_limit_is_a_clear_error():
    existing = {i: f"p{i}" for i in range(1, FULL + 1)}
    names = [f"p{i}" for i in range(1, FULL + 1)] + ["one-too-many"]
    with pytest.raises(AttachError, match=f"at most {FULL}"):
        assign_ids(existing, names)

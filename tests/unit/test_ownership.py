# SPDX-License-Identifier: GPL-2.0-or-later
"""Which hooks run this instance's programs: program_problem compares the
program id a tc filter of our name runs with the id pinned under our root."""
from wgbpf.dataplane import program_problem

PINNED = {"front_egress": 10, "member_ingress": 11, "member_egress": 12}


def test_our_programs_are_no_problem():
    assert program_problem("wg0", "front", {"egress": 10}, PINNED) is None
    assert program_problem("wg-a", "member", {"ingress": 11, "egress": 12}, PINNED) is None


def test_another_program_is_named_with_the_device_and_both_ids():
    assert program_problem("wg-a", "member", {"ingress": 11, "egress": 99}, PINNED) == \
        "tc egress hook on wg-a runs program id 99, not this instance's 12"
    # the front's egress runs front_egress, not member_egress
    assert program_problem("wg0", "front", {"egress": 12}, PINNED) == \
        "tc egress hook on wg0 runs program id 12, not this instance's 10"


def test_nothing_to_compare_with_is_no_verdict():
    # a hook without our filter is reported as such elsewhere; a program
    # not pinned (pin removed by hand) gives no id to compare with
    assert program_problem("wg-a", "member", {"ingress": None, "egress": 12}, PINNED) is None
    assert program_problem("wg0", "front", {"egress": 99}, {}) is None

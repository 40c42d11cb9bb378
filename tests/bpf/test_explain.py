# SPDX-License-Identifier: GPL-2.0-or-later
"""`wgbpf lookup` (inspect.explain, explain_source) re-traces the programs'
rules in Python. These tests hold the Python to the same case tables the
verdict tests hold the C to (test_verdicts.py, test_guard.py; FIB mode in
test_explain_fib.py), and to the program run on the same packet: if
either changes a rule, the two disagree here.

The labs are the verdict tests' own fixtures (imported), attached afresh
in this module's namespace.
"""
import ipaddress

import pytest

from wgbpf import abi, inspect

import test_guard as G
import test_verdicts as V
from bpflab import ids
from test_guard import inst  # noqa: F401 (the fixture: the guard's instance)
from test_verdicts import lab  # noqa: F401 (the fixture: the verdict tests' instances)

pytestmark = pytest.mark.root


def addresses(frame):
    """(source, destination) of an Ethernet frame's IPv4/IPv6 header."""
    ip = frame[14:]
    if ip[0] >> 4 == 4:
        return ipaddress.ip_address(ip[12:16]), ipaddress.ip_address(ip[16:20])
    return ipaddress.ip_address(ip[8:24]), ipaddress.ip_address(ip[24:40])


def reason(deltas):
    """The reason counter a case expects to move (the rest are per peer)."""
    [name] = [k for k in deltas if ":" not in k]
    return name


def source_verdict(instance, packet, via):
    """(what explain_source says, what member_ingress counted) for one packet."""
    said = inspect.explain_source(instance.maps, addresses(packet)[0], via)["verdict"]
    _, deltas = instance.measure(V.MEMBER, packet, via=via)
    return said, reason(deltas)


@pytest.mark.parametrize("case", V.MEMBER_CASES, ids=ids(V.MEMBER_CASES))
def test_source_cases(lab, case):
    assert source_verdict(lab.inst, case.packet, case.via) == (reason(case.deltas),) * 2


@pytest.mark.parametrize("case", V.MO_CASES, ids=ids(V.MO_CASES))
def test_members_only_source_cases(lab, case):
    assert source_verdict(lab.mo, case.packet, case.via) == (reason(case.deltas),) * 2


@pytest.mark.parametrize("case", V.MODE_CASES, ids=[c.id for c in V.MODE_CASES])
def test_source_mode_cases(lab, case):
    with lab.inst.settings(source=case.global_mode), lab.inst.peer_source(case.via, case.peer_mode):
        assert source_verdict(lab.inst, case.packet, case.via) == (reason(case.deltas),) * 2


@pytest.mark.parametrize("mode", [m for m in abi.Source if m != abi.Source.DEFAULT])
@pytest.mark.parametrize("src,want", G.MARTIANS, ids=[f"{s}-{r}" for s, r in G.MARTIANS])
def test_martian_cases(inst, mode, src, want):  # noqa: F811 (inst: the fixture)
    """Martians are dropped in every mode but off, before any lookup; with
    the check off they pass unchecked."""
    with inst.settings(source=mode):
        said, counted = source_verdict(inst, G.frame(src), "alice")
    assert said == counted == (want if mode != abi.Source.OFF else "passed_unchecked")


def front_agrees(res, deltas):
    """explain's verdict, in words, against the counters front_egress moved."""
    sent = [k[3:] for k in deltas if k.startswith("tx:")]
    if "steered" in deltas:
        return res["verdict"].startswith("steer") and sent[0] in res["peers"]
    if "flooded" in deltas:
        return res["verdict"] == f"flood to {len(sent)} members" and sorted(res["peers"]) == sorted(sent)
    if "peer_down" in deltas:
        return "down: no_route policy" in res["verdict"]
    return deltas == V.NO_ROUTE and res["verdict"].startswith("no_route policy")


@pytest.mark.parametrize("case", V.FRONT_CASES, ids=ids(V.FRONT_CASES))
def test_destination_cases(lab, case):
    res = inspect.explain(lab.inst.maps, addresses(case.packet)[1])
    _, deltas = lab.inst.measure(V.FRONT, case.packet)
    assert deltas == case.deltas
    assert front_agrees(res, deltas), res

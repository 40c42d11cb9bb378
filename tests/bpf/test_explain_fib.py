# SPDX-License-Identifier: GPL-2.0-or-later
"""`wgbpf lookup` in FIB lookup mode against test_fib_verdicts.py's case
tables and the programs run on the same packets, as test_explain.py does
for the prefix maps: the Python reads the kernel's table (routes dump,
longest prefix) where the program calls bpf_fib_lookup, and a drift
between the two shows here.

The lab is test_fib_verdicts.py's own fixture, attached afresh in this
module's namespace; inspect runs inside it (its routes and devices).
"""
import pytest

from wgbpf import abi, inspect, nsenter

import test_fib_verdicts as F
from bpflab import ids
from test_explain import addresses, front_agrees, reason
from test_fib_verdicts import lab  # noqa: F401 (the fixture)

pytestmark = pytest.mark.root

SOURCE_TABLES = [  # (case table, the config fields it runs under)
    (F.STRICT_CASES, {"accept_table": F.ACCEPT_TABLE}),
    (F.FEASIBLE_CASES, {"source": abi.Source.FEASIBLE, "accept_table": F.ACCEPT_TABLE}),
    (F.LOOSE_CASES, {"source": abi.Source.LOOSE}),
    (F.OFF_CASES, {"source": abi.Source.OFF}),
]
SOURCE_CASES = [(case, settings) for cases, settings in SOURCE_TABLES for case in cases]


@pytest.mark.parametrize("case, settings", SOURCE_CASES,
                         ids=[f"{s.get('source', abi.Source.STRICT).name.lower()}-{c.id}" for c, s in SOURCE_CASES])
def test_source_cases(lab, case, settings):
    with lab.inst.settings(**settings):
        with nsenter.entered(lab.ns):
            said = inspect.explain_source(lab.inst.maps, addresses(case.packet)[0], case.via)["verdict"]
        _, deltas = lab.inst.measure(F.MEMBER, case.packet, case.via)
    assert said == reason(deltas) == reason(case.deltas)


@pytest.mark.parametrize("case", F.FRONT_CASES, ids=ids(F.FRONT_CASES))
def test_destination_cases(lab, case):
    with nsenter.entered(lab.ns):
        res = inspect.explain(lab.inst.maps, addresses(case.packet)[1])
    _, deltas = F.egress(lab, case.packet)
    assert deltas == case.deltas
    assert front_agrees(res, deltas), res


@pytest.mark.parametrize("case", F.TBID_CASES, ids=ids(F.TBID_CASES))
def test_fib_table_cases(lab, case):
    """config.fib_table: the table asked is that one, not main."""
    with lab.inst.settings(fib_table=F.TABLE):
        with nsenter.entered(lab.ns):
            res = inspect.explain(lab.inst.maps, addresses(case.packet)[1])
        _, deltas = F.egress(lab, case.packet)
    assert deltas == case.deltas
    assert front_agrees(res, deltas), res

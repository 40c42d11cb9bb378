# SPDX-License-Identifier: GPL-2.0-or-later
"""Fixtures of the BPF verdict tier; the machinery is in bpflab.py (a
module of its own, so test modules can import it: `import conftest` would
be ambiguous with tests/conftest.py)."""
import pytest

from bpflab import open_lab


@pytest.fixture(scope="module")
def bpf_lab():
    """A module's namespace; its tests attach instances with lab.attach()."""
    with open_lab() as lab:
        yield lab


@pytest.fixture(autouse=True)
def _drain_tun(request):
    """Empty the members' TUN queues after every test of a lab, so flood
    clones never pile up (a full queue would make a clone fail)."""
    lab = request.getfixturevalue("bpf_lab") if "bpf_lab" in request.fixturenames else None
    if lab is not None:
        lab.drain()
    yield
    if lab is not None:
        lab.drain()

# SPDX-License-Identifier: GPL-2.0-or-later
"""A tc listing that fails is not an empty hook: unhook() must never take
"the kernel did not answer" for "nothing else is on the device" and delete
the clsact qdisc it added, with an operator's filters on it (own only what
you created). Only "no such device" / "no such filter or qdisc" (ENODEV,
ENOENT, EINVAL) mean none; anything else raises TcError. Status says a
hook it cannot list as a problem, and goes on with the other devices. On a
real device (root): tests/bpf/test_tc.py."""
import errno
import os

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from wgbpf import abi, inspect
from wgbpf.dataplane import TcError, tc

IFINDEX = 7
NAME = "wgbpf-wg0"


class Attrs:
    def __init__(self, **attrs):
        self.attrs = attrs

    def get_attr(self, key):
        return self.attrs.get(key)


class Filter(Attrs):
    """A filter message of pyroute2's dump."""

    def __init__(self, kind, name, prio, handle):
        super().__init__(TCA_KIND=kind, TCA_OPTIONS=Attrs(TCA_BPF_NAME=name) if kind == "bpf" else None)
        self.fields = {"handle": handle, "info": prio << 16}

    def __getitem__(self, key):
        return self.fields[key]


class FakeIPRoute:
    """A device with clsact, our filter on both hooks and an operator's on
    ingress; `fail`: {hook: exception} its filter dump raises."""

    def __init__(self, fail=None):
        self.fail = fail or {}
        self.hooks = {"ingress": [("bpf", NAME, tc.TC_PRIO, tc.TC_HANDLE), ("bpf", "operator", 7, 3)],
                      "egress": [("bpf", NAME, tc.TC_PRIO, tc.TC_HANDLE)]}
        self.sent = []

    def get_links(self):
        return [Link(IFINDEX, "wg-a")]

    def get_filters(self, index, parent):
        hook = next(h for h, p in tc.HOOK_PARENT_ID.items() if p == parent)
        if hook in self.fail:
            raise self.fail[hook]
        return [Filter(*f) for f in self.hooks[hook]] if index == IFINDEX else []

    def tc(self, command, kind, index, *args, **kw):
        self.sent.append((command, kind))
        if command == "del-filter":
            hook = next(h for h, p in tc.HOOK_PARENT.items() if p == kw["parent"])
            self.hooks[hook] = [f for f in self.hooks[hook] if f[2:] != (kw["prio"], args[0])]


class Link(Attrs):
    def __init__(self, index, name):
        super().__init__(IFLA_IFNAME=name)
        self.index = index

    def __getitem__(self, key):
        return {"index": self.index}[key]


@pytest.mark.parametrize("code", [errno.EPERM, errno.EBUSY, errno.ENOBUFS])
@pytest.mark.parametrize("hook", ["ingress", "egress"])
def test_a_failed_listing_keeps_the_qdisc(code, hook):
    ipr = FakeIPRoute(fail={hook: NetlinkError(code)})
    with pytest.raises(TcError, match=f"{hook} hook of ifindex {IFINDEX} failed: {os.strerror(code)}"):
        tc.unhook(ipr, IFINDEX, ("ingress", "egress"), NAME, abi.OWN_CLSACT, "wg-a")
    assert ("del", "clsact") not in ipr.sent
    assert ("bpf", "operator", 7, 3) in ipr.hooks["ingress"]


def test_the_error_after_our_filters_are_gone_keeps_the_qdisc():
    """Our filters removed, then the dump that would say whether anything
    is left fails: the old code took that for "nothing" and deleted the
    qdisc, the operator's filter with it."""
    ipr = FakeIPRoute()
    ipr.hooks["ingress"].remove(("bpf", "operator", 7, 3))
    ipr.hooks["egress"].append(("bpf", "operator", 9, 1))
    real = ipr.get_filters
    calls = []

    def get_filters(index, parent):
        calls.append(parent)
        if len(calls) > 2:  # after the two of remove_filter
            raise NetlinkError(errno.EBUSY)
        return real(index, parent)
    ipr.get_filters = get_filters
    with pytest.raises(TcError):
        tc.unhook(ipr, IFINDEX, ("ingress", "egress"), NAME, abi.OWN_CLSACT, "wg-a")
    assert ipr.sent == [("del-filter", "bpf"), ("del-filter", "bpf")]
    assert ipr.hooks["egress"] == [("bpf", "operator", 9, 1)]


def test_a_lazy_dump_that_fails_midway_raises():
    def dump():
        yield Filter("bpf", NAME, tc.TC_PRIO, tc.TC_HANDLE)
        raise NetlinkError(errno.EPERM)
    ipr = FakeIPRoute()
    ipr.get_filters = lambda index, parent: dump()
    with pytest.raises(TcError):
        tc.filters(ipr, IFINDEX, "egress")


@pytest.mark.parametrize("code", [errno.ENODEV, errno.ENOENT, errno.EINVAL])
def test_no_such_device_or_qdisc_is_none(code):
    ipr = FakeIPRoute(fail={"ingress": NetlinkError(code), "egress": NetlinkError(code)})
    assert tc.filters(ipr, IFINDEX, "ingress") == [] and tc.hook_filters(ipr, IFINDEX, "egress") == []
    assert tc.unhook(ipr, IFINDEX, ("ingress", "egress"), NAME, abi.OWN_CLSACT)
    assert ipr.sent == [("del", "clsact")]  # nothing listed: the qdisc we added goes


def test_an_error_that_is_no_netlink_answer_is_raised_as_it_is():
    ipr = FakeIPRoute(fail={"egress": RuntimeError("a bug")})
    with pytest.raises(RuntimeError, match="a bug"):
        tc.hook_filters(ipr, IFINDEX, "egress")


class FakeNetlink:
    def __init__(self, err):
        self.err = err

    def dump(self, *a):
        raise OSError(self.err, os.strerror(self.err))
        yield


def test_raw_program_listing():
    with pytest.raises(TcError, match="Operation not permitted"):
        tc.filter_programs(IFINDEX, "egress", FakeNetlink(errno.EPERM))
    assert tc.filter_programs(IFINDEX, "egress", FakeNetlink(errno.ENODEV)) == {}


def test_status_says_what_it_could_not_list(monkeypatch):
    def programs(ifindex, hook, nl=None):
        if (ifindex, hook) == (11, "egress"):
            raise TcError("listing the tc filters on the egress hook of ifindex 11 failed: Device or resource busy")
        return {NAME: 5}
    monkeypatch.setattr(tc, "filter_programs", programs)
    with pytest.raises(TcError):
        tc.bpf_filters([(11, "egress")])
    errors = {}
    hooked = tc.bpf_filters([(11, "ingress"), (11, "egress"), (12, "egress")], errors)
    assert set(hooked) == {(11, "ingress"), (12, "egress")} and set(errors) == {(11, "egress")}
    links = {"wg-a": 11, "wg0": 12}
    pinned = {"member_ingress": 5, "member_egress": 5, "front_egress": 5}
    assert inspect.hook_problem("wg-a", 11, "member", links, hooked, NAME, pinned, errors) == \
        "cannot tell: listing the tc filters on the egress hook of ifindex 11 failed: Device or resource busy"
    assert inspect.hook_problem("wg0", 12, "front", links, hooked, NAME, pinned, errors) is None

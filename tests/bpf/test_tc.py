# SPDX-License-Identifier: GPL-2.0-or-later
"""tc hooks on a real device (root, in a namespace of the netns fixture): a
clsact we added, an operator's filter beside ours. unhook() must never take
"the kernel did not answer" for "nothing else is on the device" and delete
the clsact qdisc it added with an operator's filter on it; once answered,
ours go and the qdisc stays while the operator's filter does, and goes with
our last unhook. The same without a kernel: tests/unit/test_tc.py."""
import errno
import os
import subprocess

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from wgbpf import abi, bpfsys, nsenter
from wgbpf.dataplane import TcError, tc

NAME = "wgbpf-wg0"



def tc_show(netns, *what):
    return subprocess.run(["tc", "-n", netns, *what], capture_output=True, text=True, check=True).stdout


class Failing:
    """A real IPRoute whose filter dumps of one hook fail (as a busy or
    refusing kernel would answer)."""

    def __init__(self, ipr, hook, code):
        self.ipr, self.parent, self.code = ipr, tc.HOOK_PARENT_ID[hook], code

    def get_filters(self, **kw):
        if kw.get("parent") == self.parent:
            raise NetlinkError(self.code)
        return self.ipr.get_filters(**kw)

    def __getattr__(self, name):
        return getattr(self.ipr, name)


@pytest.mark.root
def test_unhook_on_a_real_device_keeps_the_operators_filter(netns):
    subprocess.run(["ip", "-n", netns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True)
    # TC_ACT_UNSPEC: r0 = -1; exit
    prog = bpfsys.prog_load(bpfsys.PROG_TYPE_SCHED_CLS, bpfsys.insn(0xb7, imm=-1) + bpfsys.insn(0x95))

    def body():
        with tc.iproute() as ipr:
            idx = ipr.link_lookup(ifname="v0")[0]
            assert tc.filters(ipr, idx, "ingress") == []      # no clsact yet: an empty dump
            assert tc.hook_filters(ipr, 9999, "egress") == []  # no such device: the same
            assert tc.hook_member(ipr, idx, {"member_ingress": prog, "member_egress": prog}, NAME)
            # the operator's own filter (classic BPF) on the qdisc we added
            subprocess.run(["tc", "-n", netns, "filter", "add", "dev", "v0", "egress", "prio", "7", "handle", "3",
                            "bpf", "bytecode", "1,6 0 0 4294967295,", "classid", "1"], check=True)
            with pytest.raises(TcError):
                tc.unhook(Failing(ipr, "egress", errno.EBUSY), idx, ("ingress", "egress"), NAME,
                          abi.OWN_CLSACT, "v0")
            assert "clsact" in tc_show(netns, "qdisc", "show", "dev", "v0")
            assert "pref 7 bpf" in tc_show(netns, "filter", "show", "dev", "v0", "egress")
            # answered: ours go, the operator's filter and so the qdisc stay
            assert tc.unhook(ipr, idx, ("ingress", "egress"), NAME, abi.OWN_CLSACT, "v0")
            assert NAME not in tc_show(netns, "filter", "show", "dev", "v0", "ingress") + \
                tc_show(netns, "filter", "show", "dev", "v0", "egress")
            assert "clsact" in tc_show(netns, "qdisc", "show", "dev", "v0")
            # the operator's gone: the qdisc we added goes with our last unhook
            subprocess.run(["tc", "-n", netns, "filter", "del", "dev", "v0", "egress", "prio", "7"], check=True)
            assert tc.unhook(ipr, idx, ("ingress", "egress"), NAME, abi.OWN_CLSACT, "v0")
            assert "clsact" not in tc_show(netns, "qdisc", "show", "dev", "v0")
    try:
        nsenter.run(netns, body)
    finally:
        os.close(prog)

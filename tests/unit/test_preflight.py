# SPDX-License-Identifier: GPL-2.0-or-later
"""Found by breaking the daemon as an operator would: a pin root that is not
on bpffs is refused by name, not with a bare EPERM or a traceback."""
import os

import pytest

from wgbpf import dataplane


def test_pin_root_off_bpffs_is_refused_by_name(tmp_path):
    with pytest.raises(dataplane.AttachError, match="is not on a bpffs mount"):
        dataplane.check_pin_root(str(tmp_path / "wgbpf"))


def test_pin_root_under_bpffs_is_accepted():
    with open("/proc/self/mounts") as f:
        if not any(line.split()[1:3] == ["/sys/fs/bpf", "bpf"] for line in f):
            pytest.skip("no bpffs at /sys/fs/bpf")
    dataplane.check_pin_root("/sys/fs/bpf/wgbpf-not-created-yet/x")  # may not exist yet

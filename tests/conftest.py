# SPDX-License-Identifier: GPL-2.0-or-later
"""Fixtures for every tier; the helpers live in wgbtest.py.

Tests never read or write the machine's own instances: before any wgbpf
module is imported, the pin root, the run directory (locks, status files)
and the config directory are pointed at paths of this session's own
(WGBPF_PIN_ROOT on the bpffs mount, as pins must be; the others in a temp
dir). The wgbpf commands the e2e tests run inherit them."""
import atexit
import os
import shutil
import tempfile

from wgbtest import CI, RUN_ID, netns, require, require_bcc, require_root, require_tools, sh, unique  # noqa: F401

_scratch = tempfile.mkdtemp(prefix=f"wgbpf-test-{RUN_ID}-")
os.environ["WGBPF_PIN_ROOT"] = f"/sys/fs/bpf/wgbpf-test-{RUN_ID}"
os.environ["WGBPF_RUN_DIR"] = os.path.join(_scratch, "run")
os.environ["WGBPF_CONFIG_DIR"] = os.path.join(_scratch, "etc")
os.makedirs(os.environ["WGBPF_CONFIG_DIR"])


@atexit.register
def _cleanup():
    # pins a failed teardown left (their tc filters went with the labs)
    shutil.rmtree(os.environ["WGBPF_PIN_ROOT"], ignore_errors=True)
    shutil.rmtree(_scratch, ignore_errors=True)

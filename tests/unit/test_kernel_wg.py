# SPDX-License-Identifier: GPL-2.0-or-later
"""The vm tier's selection stays small and says why.

The vm tier (`make vm-test`, .ci/run) runs the e2e tests marked kernel_wg
in a qemu guest under software emulation, at about eight times their host
time. Each one added there costs CI minutes on every submission, so the set
may not grow past MAX_KERNEL_WG without this number being raised, with a
reason, in the same commit. Every file that marks tests says why in a
`# kernel_wg` comment, and vm/run.sh selects by the marker."""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
E2E = os.path.join(ROOT, "tests", "e2e")

# Raised only with a reason here. 13: test_lab 4 (steering, GSO/GRO, the
# source check, link-local multicast; lpm only), test_failclosed 1 (a
# member re-created under the daemon), test_liveness 1 (a spoke killed
# under ECMP), test_allowedips 5, test_allowedips_removal 2. Measured: 17
# tests took 13 min in the old guest (each lab's start ~75 s under
# emulation), 15 took 11.5 min, over its 12-minute budget with the boot;
# test_daemon's member-down test, the daemon-less re-created member, the
# allowedips backend's liveness and a stopped daemon's revival are left
# to the host tier (none is WireGuard's but through what stays).
MAX_KERNEL_WG = 13


def is_kernel_wg(node):
    """`pytest.mark.kernel_wg`, called or not."""
    if isinstance(node, ast.Call):
        node = node.func
    return isinstance(node, ast.Attribute) and node.attr == "kernel_wg"


def marked_tests(path):
    """The test functions of one file that carry kernel_wg: by the module's
    pytestmark (assigned or appended to) or by their own decorator."""
    tree = ast.parse(open(path).read(), path)
    whole = any(is_kernel_wg(n) for stmt in tree.body for n in ast.walk(stmt)
                if isinstance(stmt, (ast.Assign, ast.Expr)) and "pytestmark" in ast.unparse(stmt))
    tests = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")]
    return [f.name for f in tests if whole or any(is_kernel_wg(d) for d in f.decorator_list)]


def e2e_files():
    return sorted(os.path.join(E2E, f) for f in os.listdir(E2E) if re.fullmatch(r"test_\w+\.py", f))


def test_the_kernel_wg_set_is_bounded():
    marked = {os.path.basename(p): marked_tests(p) for p in e2e_files()}
    names = [f"{f}::{t}" for f, ts in marked.items() for t in ts]
    assert names, "no e2e test is marked kernel_wg: the vm tier would run nothing"
    assert len(names) <= MAX_KERNEL_WG, (
        f"{len(names)} kernel_wg tests, more than MAX_KERNEL_WG={MAX_KERNEL_WG}: each costs ~8x its "
        "host time in the vm tier; raise the number with a reason, or leave the test to the host tier:\n"
        + "\n".join(names))


def test_each_file_that_marks_tests_says_why():
    marking = [p for p in e2e_files() if marked_tests(p)]
    silent = [os.path.basename(p) for p in marking
              if not re.search(r"^# kernel_wg\b.*:", open(p).read(), re.M)]
    assert marking and not silent, f"marked kernel_wg without a '# kernel_wg ...: why' comment: {silent}"


def test_the_marker_is_registered_and_the_vm_tier_selects_by_it():
    assert "kernel_wg:" in open(os.path.join(ROOT, "pyproject.toml")).read()
    run = open(os.path.join(ROOT, "vm", "run.sh")).read()
    assert re.search(r"vm_mark=\$\{VM_MARK-kernel_wg\}", run), "vm/run.sh no longer defaults to -m kernel_wg"
    ci = open(os.path.join(ROOT, ".ci", "run")).read().replace("\\\n", " ")
    old_guest = [line for line in ci.splitlines() if "make vm-test" in line and "VM_KERNEL=new" not in line
                 and not line.lstrip().startswith("#")]
    assert old_guest and all("VM_TESTS" not in line for line in old_guest), \
        ".ci/run's old guest must take vm/run.sh's default selection (kernel_wg)"

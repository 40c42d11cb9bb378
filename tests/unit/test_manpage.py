# SPDX-License-Identifier: GPL-2.0-or-later
"""wgbpf(8) as scripts/manpage.py writes it: every section a man page of a
daemon needs, and every WGBPF_* variable the code reads from the
environment in ENVIRONMENT (a variable added under wgbpf/ without its
line there fails here)."""
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECTIONS = ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "ENVIRONMENT", "SIGNALS",
            "EXIT STATUS", "FILES", "SEE ALSO"]
# os.environ.get("X"), os.environ["X"], os.getenv("X"), environ.setdefault("X", ...)
READ = re.compile(r"""(?:environ(?:\.get|\.setdefault)?\s*[\(\[]|getenv\s*\()\s*["'](WGBPF_[A-Z0-9_]+)["']""")


def manpage():
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "manpage.py")],
                          capture_output=True, text=True, check=True,
                          env=dict(os.environ, SOURCE_DATE_EPOCH="0")).stdout


def variables_read():
    found = set()
    for root, _dirs, files in os.walk(os.path.join(REPO, "wgbpf")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(root, name)) as f:
                    found.update(READ.findall(f.read()))
    return found


def test_sections_in_order():
    headers = [line[4:].strip('"') for line in manpage().splitlines() if line.startswith(".SH ")]
    assert headers == SECTIONS


def test_every_variable_read_is_described():
    found = variables_read()
    assert {"WGBPF_PIN_ROOT", "WGBPF_RUN_DIR", "WGBPF_CONFIG_DIR"} <= found  # the scan works
    env = manpage().split(".SH ENVIRONMENT", 1)[1].split(".SH ", 1)[0]
    described = set(re.findall(r"\\fB(WGBPF_[A-Z0-9_]+)\\fR", env))
    missing = sorted(found - described)
    assert not missing, f"read under wgbpf/ but not in wgbpf(8) ENVIRONMENT (scripts/manpage.py): {missing}"


def test_signals_and_exit_statuses():
    page = manpage()
    signals = page.split(".SH SIGNALS", 1)[1].split(".SH ", 1)[0]
    for sig in ("SIGHUP", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT"):
        assert sig in signals
    codes = re.findall(r"^\.TP\n\\fB(\d+)\\fR$", page.split(".SH EXIT STATUS", 1)[1].split(".SH ", 1)[0], re.M)
    assert codes == ["0", "1", "2", "3"]

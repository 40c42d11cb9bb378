#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# make test: the three tiers (tests/unit, tests/bpf, tests/e2e), as root.
# The unit tier computes on one core and waits on nothing; the BPF tier
# runs beside it, and the e2e tier, which mostly waits (pings, daemons,
# routing protocols), after both (its timing is kept free of that load),
# its modules spread over WGBPF_E2E_WORKERS pytest-xdist workers (2: one
# a core here; each module's lab is its own, named by its worker's run
# id; measured 827 s alone, 417 s on two; 0 runs them in this process).
# The unit tier's report follows the others'; the exit status is the
# worst of the two runs (pytest's 5, nothing collected, is a failure too).
# Arguments are passed to both pytest runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTEST=(.venv/bin/python -m pytest -ra)
unit_log=$(mktemp /tmp/wgbpf-unit.XXXXXX)
trap 'rm -f "$unit_log"' EXIT
"${PYTEST[@]}" "$@" tests/unit >"$unit_log" 2>&1 &
unit_pid=$!
"${PYTEST[@]}" "$@" tests/bpf
bpf_rc=$?
wait "$unit_pid"
unit_rc=$?
echo "==> tests/unit (ran beside tests/bpf)"
cat "$unit_log"
workers=${WGBPF_E2E_WORKERS:-2}
xdist=()
[ "$workers" != 0 ] && xdist=(-n "$workers" --dist loadfile)
"${PYTEST[@]}" "${xdist[@]}" "$@" tests/e2e
e2e_rc=$?
rc=0
for r in "$unit_rc" "$bpf_rc" "$e2e_rc"; do
    [ "$r" -gt "$rc" ] && rc=$r
done
exit "$rc"

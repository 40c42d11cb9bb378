# SPDX-License-Identifier: GPL-2.0-or-later
# The two commands a new user runs, as root, on Debian 12 or 13:
#   make demo    builds the lab, attaches wgbpf, shows traffic steered
#   make test    unit, BPF verdict and end-to-end tests
# Each installs what it needs first (scripts/setup.sh, idempotent).

PYTHON := .venv/bin/python
PYTEST := $(PYTHON) -m pytest

.PHONY: setup demo demo-down test test-unit test-bpf test-e2e rooms vm-test bench clean deb deb-test deb-test-trixie

setup:
	@bash scripts/setup.sh

demo: setup
	@bash lab/demo.sh up

demo-down:
	@bash lab/demo.sh down

# pytest exits 5 when it collects nothing: that must not pass as green.
# The unit tier runs beside the BPF tier, the e2e tier after both
# (scripts/test.sh: the worst exit status of the three).
test: setup
	bash scripts/test.sh

test-unit: setup
	$(PYTEST) -ra tests/unit

test-bpf: setup
	$(PYTEST) -ra tests/bpf

test-e2e: setup
	$(PYTEST) -ra tests/e2e

# The tree's rooms: no module of wgbpf/ over 600 lines, no class over 25
# methods, no function over 80 lines, unless a `# rooms: <reason>` comment
# beside it says why (scripts/rooms.py; --json for the same as JSON).
rooms:
	$(PYTHON) scripts/rooms.py

# The e2e tests marked kernel_wg (those whose outcome depends on WireGuard's
# implementation) in a qemu guest whose kernel has the WireGuard module
# (kernel WireGuard instead of wireguard-go); vm/setup.sh installs qemu, the
# two guest kernels and virtme-ng (idempotent). Variables (environment or
# make's command line; vm/run.sh lists them all):
#   VM_KERNEL=old|new  old (default): Debian 12's 6.12 rt kernel, BPF tests too;
#                      new: Linux >= 6.16 (WGALLOWEDIP_F_REMOVE_ME), no headers,
#                      so no BPF tests
#   VM_TESTS=tests/e2e what pytest runs, whole (default: tests/e2e -m kernel_wg)
#   VM_PYTEST_ARGS     more pytest words
# e.g. make vm-test VM_KERNEL=new VM_TESTS=tests/e2e/test_allowedips.py
vm-test: setup
	@bash vm/setup.sh
	bash vm/run.sh

# The Debian package: wgbpf_<version>_all.deb here, built with debhelper
# and pybuild (scripts/deb.sh installs them; lintian must pass). Then
# apt install ./wgbpf_<version>_all.deb.
deb:
	@bash scripts/deb.sh

# The .deb installed in a throwaway Debian 12 root (debootstrap, cached in
# /var/cache/wgbpf/deb-test): --version, attach --help, systemd-analyze
# verify, tests/e2e/test_installed.py on /usr/bin/wgbpf, apt remove with a
# data plane attached. deb-test-trixie: the same on Debian 13, plus the
# unit tests there.
deb-test: deb
	bash scripts/deb-test.sh bookworm

deb-test-trixie: deb
	bash scripts/deb-test.sh trixie

# Control-plane benchmark (a few minutes at full table; root): results in
# bench-results/sync.json. BENCH_ARGS=--quick for a smoke run.
# Then the data-plane benchmark (~6 min: per-packet cost at 0-1M prefixes vs
# bpf_fib_lookup, kernel memory per prefix, iperf3/ping through the lab):
# bench-results/dataplane.json and .png; --quick in BENCH_ARGS makes it quick
# too, DATAPLANE_ARGS passes its own options.
BENCH_ARGS ?= --v4 1000000 --v6 200000
DATAPLANE_ARGS ?= $(filter --quick,$(BENCH_ARGS))
# Then the allowedips backend against `wg syncconf` (100k allowed IPs on one
# peer; here on wireguard-go, in the vm tier on kernel WireGuard: VM_BENCH=1).
ALLOWEDIPS_ARGS ?= $(if $(filter --quick,$(BENCH_ARGS)),--routes 10000,--routes 100000)
# Then throughput against plain per-peer routing (~12 min): interleaved A/B
# iperf3 pairs per lookup mode and with `wgbpf monitor` listening, the median
# ratio with a bootstrap interval: bench-results/throughput.json.
THROUGHPUT_ARGS ?= $(if $(filter --quick,$(BENCH_ARGS)),--pairs 3 --seconds 1,--pairs 10)
# Then failover (~7 min): a spoke's WireGuard killed 10 times under an ECMP
# stream, `--dead-after 2`: time until its flows are on the sibling, and flows
# moved while both live (60 s): bench-results/failover.json.
FAILOVER_ARGS ?= $(filter --quick,$(BENCH_ARGS))
bench: setup
	@$(PYTHON) -c 'import matplotlib' 2>/dev/null || .venv/bin/pip install -q --disable-pip-version-check -e '.[bench]'
	$(PYTHON) tests/bench/bench_sync.py $(BENCH_ARGS)
	$(PYTHON) tests/bench/bench_dataplane.py $(DATAPLANE_ARGS)
	$(PYTHON) tests/bench/bench_trie_memory.py
	$(PYTHON) tests/bench/bench_allowedips.py $(ALLOWEDIPS_ARGS)
	$(PYTHON) tests/bench/bench_throughput.py $(THROUGHPUT_ARGS)
	$(PYTHON) tests/bench/bench_failover.py $(FAILOVER_ARGS)

clean: demo-down
	rm -rf .venv .pytest_cache .hypothesis *.egg-info

# SPDX-License-Identifier: GPL-2.0-or-later
"""The data plane: compile and load it with BCC, pin it, hook it into tc.

A package by concern, each module importing only those below it (and
never wgbpf.daemon, wgbpf.cli or a backend):

  lifecycle  Attach (the phases of an attach), attach, detach, the
             re-hook of a re-created device, peer ids
  ownership  who holds a device (hook owners, other instances, foreign
             programs in our slot), the checks attach refuses with, vet
  build      the C source text, BCC's compile, program tags, build record
  pins       pinned programs and ids, the maps programs read, pin repair
  tc         clsact and our filter, filter listings, remove/unhook
  preflight  bpffs, pin root, devices, FIB mode, the host's sysctls
  errors     AttachError, TcError

The names below are the package's interface (the CLI, the daemon,
inspect, the tests). A test that swaps a function swaps it in the module
that calls it (dataplane.tc.filter_programs, dataplane.lifecycle.iproute).
"""
from ..maps import MapError
from .build import BPF_DIR, SOURCE, compile_programs
from .errors import AttachError, TcError
from .lifecycle import assign_ids, attach, detach, rehook_front, rehook_member
from .ownership import HOOK_PROGRAMS, foreign_hooks, orphaned_filters, other_members, program_problem, vet
from .pins import pinned_ids, unpinned
from .preflight import (ARPHRD_NONE, IFF_UP, check_fib, check_pin_root, ensure_bpffs, enter_netns,
                        forwarding_off, forwarding_warning)
from .tc import bpf_filters, filter_name, filters, iproute

__all__ = ["ARPHRD_NONE", "AttachError", "BPF_DIR", "HOOK_PROGRAMS", "IFF_UP", "MapError", "SOURCE",
           "TcError", "assign_ids", "attach", "bpf_filters", "check_fib", "check_pin_root",
           "compile_programs", "detach", "ensure_bpffs", "enter_netns", "filter_name", "filters",
           "foreign_hooks", "forwarding_off", "forwarding_warning", "iproute", "orphaned_filters", "other_members",
           "pinned_ids", "program_problem", "rehook_front", "rehook_member", "unpinned", "vet"]

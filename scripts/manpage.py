#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Writes wgbpf(8) in roff to stdout from the CLI's own click help, so the
man page says what `wgbpf COMMAND --help` says (make deb runs it at build
time). Usage: python3 scripts/manpage.py > wgbpf.8
"""
import os
import sys
import time

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wgbpf.cli import main  # noqa: E402
from wgbpf.version import VERSION  # noqa: E402

FILES = [
    ("/etc/wgbpf/FRONT.toml", "the instance's configuration (front, peers, modes), read by "
     "\\fBattach\\fR and \\fBdaemon\\fR; see /etc/wgbpf/wg0.toml.example"),
    ("/sys/fs/bpf/wgbpf/NETNS/FRONT/", "the pinned maps and programs of one instance; they "
     "outlive the wgbpf processes, so the data plane keeps forwarding"),
    ("/run/wgbpf/NETNS/", "the daemon's lock and status file per front"),
]

# every variable the code reads (tests/unit/test_manpage.py checks each
# WGBPF_ one read under wgbpf/ is here); children (the daemon's attach and
# DIR-24-8 compile) inherit them
ENVIRONMENT = [
    ("WGBPF_PIN_ROOT", "the root of the pinned maps and programs, instead of /sys/fs/bpf/wgbpf "
     "(it must be on a bpffs mount); an instance's pins are NETNS/FRONT/ under it. Another root "
     "is another set of instances: the tests use one of their own"),
    ("WGBPF_RUN_DIR", "the root of the locks and status files, instead of /run/wgbpf: the "
     "daemon's lock and status, the writer lock and the build record, under NETNS/"),
    ("WGBPF_CONFIG_DIR", "where \\fBattach\\fR and \\fBdaemon\\fR look for FRONT.toml when "
     "neither \\fB\\-\\-peer\\fR nor \\fB\\-\\-config\\fR is given, instead of /etc/wgbpf"),
    ("NOTIFY_SOCKET", "set by systemd for a Type=notify service: \\fBwgbpf daemon\\fR sends "
     "READY=1 there once its first sync is done"),
    ("_WGBPF_COMPLETE", "click's shell completion: \\fB_WGBPF_COMPLETE=bash_source wgbpf\\fR "
     "prints the bash completion script (the package installs it)"),
]

SIGNALS = [
    ("SIGHUP", "reload: read the configuration again (the file, or the command line's peers) "
     "and attach it, then a full sync; a configuration refused (or one changing the front or "
     "the backend) keeps the running one, and is logged (\\fBsystemctl reload\\fR)"),
    ("SIGUSR1", "sent by \\fBwgbpf route\\fR once it has written the maps: the daemon reads "
     "the maps again, so it knows the operator's entries (it also looks every second, by the "
     "writer lock's generation, so a \\fBwgbpf route\\fR killed before signalling is caught)"),
    ("SIGUSR2", "sent by \\fBwgbpf attach\\fR under a running daemon: the daemon reopens the "
     "maps (they may be new ones) and resyncs at once"),
    ("SIGTERM, SIGINT", "stop: the peers judged dead go back up, the status file says stopped, "
     "exit 0; the data plane keeps running on the pinned maps, and the next daemon reconciles "
     "by difference"),
]

EXIT_STATUS = [
    ("0", "success; \\fBstatus \\-\\-check\\fR found nothing wrong; a daemon stopped by "
     "SIGTERM or SIGINT; \\fBmonitor\\fR stopped by SIGTERM, SIGHUP or Ctrl\\-C"),
    ("1", "an error: bad input or a state that refuses the command (one line, "
     "\\fBwgbpf: error: ...\\fR), the data plane left as it was; a daemon that failed (its "
     "status says failed), also one whose front has been gone for \\fB\\-\\-gone\\-after\\fR "
     "seconds (systemd restarts it)"),
    ("2", "a malformed command line (an unknown option or command, a bad choice, a missing or "
     "extra argument: click's usage errors); \\fBstatus \\-\\-check\\fR found a problem "
     "(one line each)"),
    ("3", "internal, never the \\fBwgbpf\\fR command's: the daemon's attach child "
     "(\\fBpython3 \\-m wgbpf.backends.maps \\-\\-attach\\-child\\fR) when the attach is refused, "
     "and the DIR\\-24\\-8 compile child (\\fBpython3 \\-m wgbpf.maps \\-\\-compile\\-dir24\\fR) "
     "when it fails; the daemon reports the child's message (a refused attach ends its start: "
     "exit 1)"),
]


def esc(text):
    """roff-safe text: backslashes, hyphens, and a line starting with . or '."""
    out = []
    for line in text.replace("\\", "\\e").replace("-", "\\-").split("\n"):
        out.append("\\&" + line if line[:1] in (".", "'") else line)
    return "\n".join(out)


def paragraphs(text):
    """click's help text as roff: blank lines part paragraphs; a paragraph
    after click's \\b marker, or an indented one, keeps its lines."""
    out = []
    for para in (text or "").strip().split("\n\n"):
        lines = para.split("\n")
        if lines[0].strip() == "\b" or all(line.startswith(" ") for line in lines):
            out += [".PP", ".nf", esc("\n".join(x for x in lines if x.strip() != "\b")), ".fi"]
        else:
            out += [".PP", esc(" ".join(x.strip() for x in lines))]
    return out


def options(cmd, ctx):
    out = []
    for p in cmd.get_params(ctx):
        rec = p.get_help_record(ctx) if isinstance(p, click.Option) else None
        if rec:
            out += [".TP", "\\fB" + esc(rec[0]) + "\\fR", esc(rec[1] or "")]
    return out


def command(cmd, ctx, path):
    out = [".SS " + '"' + esc(" ".join([*path, *cmd.collect_usage_pieces(ctx)])) + '"']
    out += paragraphs(cmd.help)
    out += options(cmd, ctx)
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if not sub.hidden:
                out += command(sub, click.Context(sub, info_name=name, parent=ctx), [*path, name])
    return out


def manpage():
    ctx = click.Context(main, info_name="wgbpf", **main.context_settings)
    date = time.strftime("%Y-%m-%d", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))))
    summary = main.help.strip().split("\n")[0].rstrip(".")
    out = [f'.TH WGBPF 8 "{date}" "wgbpf {VERSION}" "System Administration"',
           ".SH NAME", "wgbpf \\- " + esc(summary[0].lower() + summary[1:]),
           ".SH SYNOPSIS", "\\fBwgbpf\\fR [\\fIOPTIONS\\fR] [\\fICOMMAND\\fR] [\\fIARGS\\fR]...",
           ".SH DESCRIPTION", *paragraphs(main.help.strip().split("\n", 1)[1]),
           ".SH OPTIONS", *options(main, ctx), ".SH COMMANDS"]
    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        if not cmd.hidden:
            out += command(cmd, click.Context(cmd, info_name=name, parent=ctx), ["wgbpf", name])
    out += [".SH ENVIRONMENT"]
    for name, what in ENVIRONMENT:
        out += [".TP", "\\fB" + esc(name) + "\\fR", what]
    out += [".SH SIGNALS", ".PP", "\\fBwgbpf daemon\\fR handles:"]
    for name, what in SIGNALS:
        out += [".TP", "\\fB" + name + "\\fR", what]
    out += [".SH EXIT STATUS"]
    for code, what in EXIT_STATUS:
        out += [".TP", "\\fB" + code + "\\fR", what]
    out += [".SH FILES"]
    for path, what in FILES:
        out += [".TP", "\\fI" + esc(path) + "\\fR", what]
    out += [".SH SEE ALSO", "\\fBtc\\fR(8), \\fBwg\\fR(8), \\fBbpftool\\fR(8),",
            "\\fBsystemctl\\fR(1) (\\fBwgbpf@FRONT.service\\fR runs \\fBwgbpf daemon FRONT\\fR);",
            "/usr/share/doc/wgbpf/ (README.md, daemon.md, config.md, instances.md and the recipes)"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(manpage())

#!/usr/bin/env python3
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
    out += [".SH FILES"]
    for path, what in FILES:
        out += [".TP", "\\fI" + esc(path) + "\\fR", what]
    out += [".SH SEE ALSO", "\\fBtc\\fR(8), \\fBwg\\fR(8), \\fBbpftool\\fR(8),",
            "\\fBsystemctl\\fR(1) (\\fBwgbpf@FRONT.service\\fR runs \\fBwgbpf daemon FRONT\\fR)"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(manpage())

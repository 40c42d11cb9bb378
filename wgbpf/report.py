# SPDX-License-Identifier: GPL-2.0-or-later
"""`wgbpf status` as a person reads it: the status dicts inspect.py builds
(the same that --json prints), turned into lines of text. No I/O here:
the CLI prints what these return.
"""
import time

from . import abi


def table_lines(rows, headers):
    """Plain aligned columns, like `ip -br`."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip()] + [fmt.format(*r).rstrip() for r in rows]


def liveness_text(name, lv):
    """One peer's liveness for `wgbpf status`: alice alive (rx 0.4s ago),
    bob DEAD 12s (nothing received for 2.1s while sending)."""
    ago = f" {time.time() - lv['since']:.0f}s" if lv.get("since") else ""
    if lv["state"] == "dead":
        return f"{name} DEAD{ago} ({lv['reason']})"
    hold = f", hold-down {lv['hold_down']:.0f}s" if lv.get("hold_down") else ""
    rx = f"rx {lv['rx_age']:.1f}s ago" if lv.get("rx_age") is not None else "not sampled yet"
    return f"{name} alive ({rx}{hold}; dead after {lv['dead_after']:g}s, {lv['deaths']} deaths)"


def status_lines(instances, all_ns=False):
    """Every instance's status; with `all_ns`, under a header per namespace."""
    if not instances:
        return ["no wgbpf instance attached (wgbpf attach FRONT --peer NAME=DEV ...)"]
    out = []
    shown_ns = None
    for s in instances:
        if all_ns and s["netns"] != shown_ns:
            shown_ns = s["netns"]
            if s["netns"] is None:
                out.append("== an older wgbpf's pins (no namespace)")
            else:
                out.append(f"== netns {s['netns']}" + (f" ({s['netns_name']})" if s["netns_name"] else "")
                           + (", this one" if s["current"] else ""))
        if "error" in s:
            out.append(f"{s['front']}: {s['error']}")
        elif s.get("backend") == "allowedips":
            out += allowedips_lines(s)
        else:
            out += instance_lines(s)
    return out


def _peer_lines(dmn):
    out = []
    if dmn.get("routes_per_peer"):
        out.append("routes per peer: " + ", ".join(f"{k} {v}" for k, v in sorted(dmn["routes_per_peer"].items())))
    if dmn.get("liveness"):
        out.append("liveness: " + "; ".join(liveness_text(k, v) for k, v in dmn["liveness"].items()))
    if dmn.get("probes"):
        out.append("probes: " + "; ".join(probe_text(k, v) for k, v in sorted(dmn["probes"].items())))
    return out


def probe_text(name, pr):
    """One peer's probes: "alice rtt 1.2 ms ±0.3, loss 0% (every 0.5 s)"."""
    if pr.get("rtt") is None:
        return f"{name} no answer yet ({pr.get('lost', 0)} lost, every {pr['interval']:g} s)"
    return (f"{name} rtt {pr['rtt'] * 1000:.1f} ms ±{pr['jitter'] * 1000:.1f}, "
            f"loss {100 * (pr['loss'] or 0):.0f}% (every {pr['interval']:g} s)")


def allowedips_lines(s):
    dmn = s["daemon"]
    if dmn.get("state") in ("starting", "died starting"):
        return [f"{s['front']}: allowedips backend; " + start_lines(dmn)[0]]
    # the rule a multipath prefix's one peer is chosen by (daemons before
    # it was said in the status used another: nothing is claimed for them)
    pick = f" ({dmn['ecmp_pick']})" if dmn.get("ecmp_pick") else ""
    removal = {"flag": "single removals", "throwaway": "single removals through a throwaway peer",
               "rewrite": "removal rewrites the peer's list"}.get(dmn.get("removal"), "removal not probed yet")
    out = [f"{s['front']}: allowedips backend ({dmn.get('device_kind')} WireGuard, {removal}); "
           f"daemon {dmn['state']} (pid {dmn['pid']}), tables {dmn['tables']}, "
           f"{dmn['prefixes']} prefixes, {dmn['allowedips_changes']} allowed-IP changes, "
           f"{dmn['peer_rewrites']} list rewrites, {dmn['ecmp_prefixes']} ECMP prefixes "
           f"given to one peer{pick}, "
           f"{dmn['resyncs']} resyncs"]
    if dmn.get("missing_peers"):
        out.append(f"peers not on the device: {', '.join(dmn['missing_peers'])}")
    if dmn.get("no_peer_unhonoured"):
        out.append(f"warning: {dmn['no_peer_unhonoured']} prefixes route to no peer inside a peer's allowed IP: "
                   f"WireGuard cannot shadow it, that peer may still send from and receive for them "
                   f"(docs/allowedips.md)")
    return out + failure_lines(dmn) + _peer_lines(dmn)


def instance_lines(s):
    if s["members_only"]:
        where = "members only (no front)"
    else:
        where = (f"front {s['front_device']} egress "
                 + ("hooked" if s["front_hooked"] else f"UNHOOKED ({s['front_problem']})"))
    out = [f"{s['front']}: {where}; lookup {s['lookup']}"
           + (f" (table {s['fib_table']})" if s["fib_table"] else "")
           + f"; source check {s['source']}; no-route policy {s['no_route']}; pins {s['pin_dir']}"]
    out += table_lines([(x["peer"], x["device"], "up" if x["up"] else "down",
                         "hooked" if x["hooked"] else f"UNHOOKED ({x['problem']})") for x in s["members"]],
                       ["PEER", "MEMBER", "STATE", "HOOK"])
    out.append("maps: " + ", ".join(f"{k} {v['entries']}/{v['max']}" for k, v in s["maps"].items()))
    out.append("counters: " + ", ".join(f"{k} {v}" for k, v in s["counters"].items()))
    if s.get("forwarding_off"):
        out.append(f"forwarding: OFF ({', '.join(k + '=0' for k in s['forwarding_off'])}): the kernel "
                   f"drops every packet between peers")
    out += config_lines(s.get("config"))
    return out + daemon_lines(s.get("daemon"))


def config_lines(c):
    if not c:
        return []
    if c.get("source") == "attached":
        return ["config: the daemon adopted the attached instance"]
    if c.get("source") and not c.get("differences"):
        return ["config: the daemon's command line"]
    if c.get("error"):
        return [f"config {c['path']}: {c['error']}"]
    if c["differences"]:
        return [f"config {c['path']}: DIFFERS from the attached instance (the daemon attaches "
                f"it at start and on reload): " + "; ".join(c["differences"])]
    return [f"config {c['path']}: as attached"]


def lag_text(dmn):
    """p50/p99/max of the event lag; "-" for a figure not known (no batch
    of events applied yet: --json keeps null)."""
    if dmn.get("lag_ms_p50") is None:
        return "-/-/-"
    return "/".join("-" if dmn.get(k) is None else str(dmn[k]) for k in ("lag_ms_p50", "lag_ms_p99", "lag_ms_max"))


def start_progress(start):
    """Where a start got to: "reading routes: 65536 routes read, 0 map
    entries written"."""
    start = start or {}
    phase = {"attach": "attaching", "sync": "syncing", "dump": "reading routes",
             "write": "writing"}.get(start.get("phase"), start.get("phase") or "?")
    return (f"{phase}: {start.get('routes_read', 0)} routes read, "
            f"{start.get('entries_written', 0)} entries written")


def start_problems(s):
    """The `status --check` line of a daemon that died starting."""
    dmn = s.get("daemon") or {}
    if dmn.get("state") != "died starting":
        return []
    what = "its AllowedIPs" if dmn.get("backend") == "allowedips" else "the maps"
    return [f"{s['front']}: daemon died starting (pid {dmn.get('pid')}, {start_progress(dmn.get('start'))}): "
            f"{what} are partial until a daemon starts again and syncs"]


def start_lines(dmn):
    """A daemon in its start sync, or dead in it (status.mark_died_starting)."""
    start = dmn.get("start") or {}
    where = start_progress(start)
    if dmn["state"] == "starting":
        since = f" for {time.time() - start['since']:.0f}s" if start.get("since") else ""
        return [f"daemon: starting (pid {dmn['pid']}){since}, {where}"]
    heard = (f", last heard {dmn['written'] - start['since']:.1f}s into its start"
             if start.get("since") and dmn.get("written") else "")
    what = "its AllowedIPs are" if dmn.get("backend") == "allowedips" else "the maps are"
    return [f"daemon: DIED STARTING (pid {dmn['pid']}, {where}{heard}): {what} partial until a "
            f"daemon starts again and syncs"]


def daemon_lines(dmn):
    if not dmn:
        return ["daemon: never ran (wgbpf daemon)"]
    if dmn.get("state") in ("starting", "died starting"):
        return start_lines(dmn)
    ago = time.time() - dmn["last_sync"] if dmn.get("last_sync") else None
    out = [f"daemon: {dmn['state']} (pid {dmn['pid']}), tables {dmn['tables']}, "
           f"{dmn['prefixes']} prefixes"
           + (f" ({dmn['set_ids']} peer set ids held)" if dmn.get("set_ids") else "")
           + f", {dmn['ignored']} ignored routes, "
           f"{dmn['events']} events, {dmn['resyncs']} resyncs, {dmn['overruns']} overruns, "
           f"{dmn.get('rehooks', 0)} re-hooks, "
           f"event lag p50/p99/max {lag_text(dmn)} ms"
           + (f", last sync {ago:.0f}s ago ({dmn['last_sync_seconds']}s)" if ago is not None else "")]
    if dmn.get("ambiguous"):
        out.append(f"ambiguous: {dmn['ambiguous']} IPv6 prefixes whose equal-metric routes name different "
                   f"peers: the kernel picks per lookup, the maps name no peer (docs/daemon.md)")
    if dmn.get("ecmp_truncated"):
        out.append(f"warning: {dmn['ecmp_truncated']} multipath routes or groups name more peers than "
                   f"a set holds ({abi.MAX_ECMP}): the heaviest are kept, the others get none of their traffic")
    if dmn.get("sets_short"):
        out.append(f"warning: {dmn['sets_short']} times a prefix got no peer set id (all "
                   f"{abi.OPERATOR_SETS - 1} held): it named no peer until a full sync freed one "
                   f"(more distinct weighted sets than ids?)")
    if dmn.get("pending"):
        out.append(f"waiting: {dmn['pending']} route changes not yet written "
                   f"(another writer holds the writer lock)")
    out += failure_lines(dmn)
    return out + _peer_lines(dmn)


def failure_lines(dmn):
    """A daemon's failures (daemon.Daemon.failed): how many, the last, and
    whether its full resync is still due (then the maps may be stale)."""
    if not dmn.get("failures"):
        return []
    ago = f", {time.time() - dmn['last_failure_at']:.0f}s ago" if dmn.get("last_failure_at") else ""
    due = ("; its full resync is DUE: the maps may be stale until it succeeds" if "retry_in" in dmn
           else "; resynced since")
    return [f"failures: {dmn['failures']} (last{ago}: {dmn.get('last_failure')}){due}"]

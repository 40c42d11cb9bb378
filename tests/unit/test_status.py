# SPDX-License-Identifier: GPL-2.0-or-later
"""One Prometheus writer for both backends (wgbpf/status.py): the loop's
figures, each once, then the backend's own."""
import types

from wgbpf import abi, liveness, status, sync
from wgbpf.backends.allowedips import AllowedIPsBackend
from wgbpf.backends.maps import MapsBackend
from wgbpf.version import VERSION

LOOP = {"events": 2, "resyncs": 1, "overruns": 0, "backlogged": 0, "peer_deaths": 0, "peer_revivals": 0}


def whole_status(backend, lag):
    return status.status(LOOP, lag, "running", "wg0", [254], {}, "command line", backend.status())


def families(text):
    return [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]


def test_the_maps_backend():
    b = MapsBackend(sync.Filter(), lambda m: None, liveness.Liveness())
    b.maps = types.SimpleNamespace(counters=lambda: {abi.Reason.SPOOFED: 4, abi.Reason.STEERED: 9},
                                   peers=lambda: {})
    lag = status.Lag()
    lag.append(2.5)
    st = whole_status(b, lag)
    assert st["state"] == "running" and st["prefixes"] == 0 and st["map_writes"] == 0
    text = status.metrics_text(st, b.metrics)
    names = families(text)
    assert len(names) == len(set(names))  # one HELP/TYPE a family
    assert f'wgbpf_build_info{{front="wg0",version="{VERSION}"}} 1' in text
    assert 'wgbpf_packets_total{front="wg0",reason="spoofed"} 4' in text
    assert 'wgbpf_event_lag_ms_p99{front="wg0"} 2.5' in text
    assert 'wgbpf_route_events_total{front="wg0"} 2' in text
    assert "wgbpf_map_writes_total" in names and "wgbpf_allowedips_changes_total" not in names


def test_the_allowedips_backend():
    b = AllowedIPsBackend(sync.Filter(), lambda m: None, liveness.Liveness())
    b.stats["allowedips_changes"] = 7
    st = whole_status(b, status.Lag())
    assert st["backend"] == "allowedips"
    text = status.metrics_text(st, b.metrics)
    names = families(text)
    assert len(names) == len(set(names))
    assert 'wgbpf_allowedips_changes_total{front="wg0"} 7' in text
    assert "wgbpf_route_events_total" in names and "wgbpf_event_lag_ms_p99" in names
    assert "wgbpf_packets_total" not in names  # no data plane of ours there


def test_the_lag_of_no_batch_is_none_not_zero():
    assert status.Lag().stats() == {"lag_ms_last": None, "lag_ms_p50": None, "lag_ms_p99": None,
                                    "lag_ms_max": 0.0}


def test_the_allowedips_text_status_counts_what_it_cannot_honour():
    """Issue 23, item 1: a prefix routed to no peer inside a peer's allowed
    IP is counted in `wgbpf status`, not only in --json and the log."""
    from wgbpf import report
    dmn = {"state": "running", "pid": 7, "tables": [254], "prefixes": 3, "allowedips_changes": 1,
           "peer_rewrites": 0, "ecmp_prefixes": 0, "resyncs": 1, "device_kind": "kernel", "removal": "flag",
           "no_peer_unhonoured": 2, "peers": {}}
    text = "\n".join(report.allowedips_lines({"front": "wg0", "daemon": dmn}))
    assert "warning: 2 prefixes route to no peer inside a peer's allowed IP" in text
    dmn["no_peer_unhonoured"] = 0
    assert "warning" not in "\n".join(report.allowedips_lines({"front": "wg0", "daemon": dmn}))

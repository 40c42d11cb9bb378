# SPDX-License-Identifier: GPL-2.0-or-later
"""The BPF maps backend's logic that needs no kernel: -v logging, the
resync reasons of tick(), the changes it takes from the loop."""
import ipaddress

from wgbpf import liveness, routes, sync
from wgbpf.backends.maps import MapsBackend, log_applied


def backend():
    logged = []
    return MapsBackend(sync.Filter((254,), (), ()), logged.append, liveness.Liveness()), logged


def test_verbose_logs_each_change():
    logged = []
    diff = sync.Diff()
    diff.put[sync.network_pkey(ipaddress.ip_network("10.1.0.0/16"))] = 7
    diff.put[sync.network_pkey(ipaddress.ip_network("10.2.0.0/16"))] = 8
    diff.put[sync.network_pkey(ipaddress.ip_network("10.3.0.0/16"))] = 0
    diff.delete.append(sync.network_pkey(ipaddress.ip_network("2001:db8::/32")))
    sets = {7: ((1, 2), None, b""), 8: ((1, 2), (3, 1), b"")}
    log_applied(logged.append, {1: "alice", 2: "bob"}, "routes", diff, sets)
    assert [line.split(" ", 1)[1] for line in logged] == ["route 10.1.0.0/16 -> alice,bob (set 7)",
                                                          "route 10.2.0.0/16 -> alice 3,bob 1 (set 8)",
                                                          "route 10.3.0.0/16 -> no peer (set 0)",
                                                          "route 2001:db8::/32 withdrawn"]
    assert all(len(line.split(" ", 1)[0]) == len("12:34:56.789") for line in logged)


def test_detached_takes_no_changes_and_asks_no_resync(monkeypatch):
    b, logged = backend()
    b.detached = True
    monkeypatch.setattr(b, "check_maps", lambda: None)
    c = routes.Changes(routes=[("not a route: never looked at", False)], events=1, links=True)
    assert b.apply(c, 0.0) is False and b.pending == {}
    assert b.tick(10.0) is None and b.wait() is None


def test_wake_marks_what_the_signal_said():
    b, _ = backend()
    b.wake("maps written")
    b.wake("attached")
    assert b.maps_changed and b.reattached


def test_out_of_set_ids_asks_a_full_sync_at_most_every_30_seconds(monkeypatch):
    """Prefixes written as "no peer" for want of a set id: the tick asks a
    full sync (which frees the ids no entry names), not a storm of them."""
    import types
    b, _ = backend()
    monkeypatch.setattr(b, "check_maps", lambda: None)
    b.ksets = types.SimpleNamespace(exhausted=True)
    assert b.tick(10.0) == "peer set ids ran out" and not b.ksets.exhausted
    b.ksets.exhausted = True
    assert b.tick(11.0) is None and b.ksets.exhausted  # within 30 s: kept for later

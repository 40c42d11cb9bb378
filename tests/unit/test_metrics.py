"""One Prometheus writer for both backends: the loop's figures, each once,
then the backend's own."""
import types

from wgbpf import abi, sync
from wgbpf.allowedips import AllowedIPsDaemon
from wgbpf.daemon import Daemon
from wgbpf.version import VERSION


def status(d):
    st = dict(d.stats, **d.lag.stats(), front="wg0", prefixes=3, ignored=1, liveness={})
    return st


def families(text):
    return [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]


def test_the_maps_backend(tmp_path):
    d = Daemon(lambda: None, sync.Filter(), lambda m: None, metrics_file=str(tmp_path / "m.prom"))
    d.maps = types.SimpleNamespace(counters=lambda: {abi.Reason.SPOOFED: 4, abi.Reason.STEERED: 9})
    d.lag.append(2.5)
    d.write_metrics(status(d))
    text = (tmp_path / "m.prom").read_text()
    names = families(text)
    assert len(names) == len(set(names))  # one HELP/TYPE a family
    assert f'wgbpf_build_info{{front="wg0",version="{VERSION}"}} 1' in text
    assert 'wgbpf_packets_total{front="wg0",reason="spoofed"} 4' in text
    assert 'wgbpf_event_lag_ms_p99{front="wg0"} 2.5' in text
    assert "wgbpf_map_writes_total" in names and "wgbpf_allowedips_changes_total" not in names


def test_the_allowedips_backend(tmp_path):
    d = AllowedIPsDaemon(lambda: None, sync.Filter(), lambda m: None, metrics_file=str(tmp_path / "m.prom"))
    d.stats["allowedips_changes"] = 7
    d.write_metrics(status(d))
    text = (tmp_path / "m.prom").read_text()
    names = families(text)
    assert len(names) == len(set(names))
    assert 'wgbpf_allowedips_changes_total{front="wg0"} 7' in text
    assert "wgbpf_route_events_total" in names and "wgbpf_event_lag_ms_p99" in names
    assert "wgbpf_packets_total" not in names  # no data plane of ours there

# SPDX-License-Identifier: GPL-2.0-or-later
"""The probes' rules (wgbpf/probes.py, issue 24 part 2) without a socket:
intervals parsed with clear errors, a bound on probes a second whatever
the number of peers, RTT and jitter averaged, loss over a window."""
import pytest

from wgbpf import probes
from wgbpf.probes import Probe, ProbeError


@pytest.mark.parametrize("value, want", [("0", None), (0, None), ("off", None), (None, None), ("0.5", 0.5),
                                         (2, 2.0), ("0.05", 0.05)])
def test_intervals(value, want):
    assert probes.parse_interval(value, "--probe") == want


@pytest.mark.parametrize("value, words", [("-1", "at least"), ("0.01", "at least"), ("nan", "at least"),
                                          ("fast", "not a probe interval"), ("1s", "not a probe interval")])
def test_bad_intervals_name_the_problem(value, words):
    with pytest.raises(ProbeError) as e:
        probes.parse_interval(value, "peer alice: probe")
    assert "peer alice: probe" in str(e.value) and words in str(e.value) and repr(value) in str(e.value)


def test_a_thousand_peers_stay_under_the_bound_in_proportion():
    got = probes.stretched({f"p{i}": (0.1 if i % 2 else 1.0) for i in range(1000)})
    assert sum(1 / i for i in got.values()) == pytest.approx(probes.MAX_PPS)
    assert got["p1"] * 10 == pytest.approx(got["p0"])  # proportions kept
    few = {"a": 0.5, "b": 1.0}
    assert probes.stretched(few) == few  # under the bound: as given


def test_rtt_and_jitter_follow_the_samples():
    p = Probe(1.0)
    for t in range(20):
        seq = p.send(t)
        assert p.reply(seq, t + 0.010) == pytest.approx(0.010)
    assert p.rtt == pytest.approx(0.010) and p.jitter < 0.001
    for t in range(20, 60):  # the path slows by 50 ms
        p.reply(p.send(t), t + 0.060)
    assert p.rtt == pytest.approx(0.060, abs=0.002) and p.loss() == 0.0
    assert p.reply(999, 70) is None  # not ours


def test_silence_counts_lost_over_the_window_and_answers_bring_it_back():
    p = Probe(0.5)
    now = 0.0
    for _ in range(10):
        p.send(now)
        now += 0.5
    assert p.expire(now) == 8 and p.loss() == 1.0  # the last two still within their timeout
    now += 2.0
    assert p.expire(now) == 2
    for _ in range(probes.WINDOW):
        p.reply(p.send(now), now + 0.02)
        now += 0.5
    p.expire(now)
    assert p.loss() == 0.0 and p.status()["lost"] == 10 and p.status()["answered"] == probes.WINDOW


def test_sends_keep_their_rhythm_and_never_burst_after_a_stall():
    p = Probe(1.0, now=0.0)
    assert p.due(0.0)
    p.send(0.0)
    assert not p.due(0.5) and p.due(1.0)
    p.send(10.0)  # the daemon was busy for 9 s: one probe, not nine
    assert not p.due(10.5) and p.due(11.0)


# -- the config -----------------------------------------------------------------------
def test_probe_intervals_in_toml_and_on_the_command_line(tmp_path):
    from wgbpf import config
    f = tmp_path / "wg0.toml"
    f.write_text('front = "wg0"\nprobe = 0.5\n'
                 '[[peer]]\nname = "alice"\nmember = "wg-a"\ntags = ["10.255.0.1"]\nprobe = 0.2\n'
                 '[[peer]]\nname = "bob"\nmember = "wg-b"\ntags = ["10.255.0.2"]\n'
                 '[[peer]]\nname = "carol"\nmember = "wg-c"\ntags = ["10.255.0.3"]\nprobe = "off"\n')
    cfg = config.build(path=str(f))
    assert [config.probe_interval(cfg, p) for p in cfg.peers] == [0.2, 0.5, None]
    peer = config.parse_peer_arg("dave=wg-d,10.255.0.4,probe=1")
    assert peer.probe == 1.0


@pytest.mark.parametrize("text, words", [
    ('probe = -1\n', "probe: probe interval -1: at least 0.05 s"),
    ('probe = "fast"\n', "not a probe interval"),
    ('probe = 0.5\n[[peer]]\nname = "x"\nmember = "wg-x"\n', "probes ask its tag address, and it has none"),
])
def test_bad_probe_settings_are_refused_with_the_reason(tmp_path, text, words):
    from wgbpf import config
    f = tmp_path / "wg0.toml"
    peer = '[[peer]]\nname = "alice"\nmember = "wg-a"\ntags = ["10.255.0.1"]\n'
    f.write_text('front = "wg0"\n' + (text if "[[peer]]" in text else text + peer))
    with pytest.raises(config.ConfigError) as e:
        config.build(path=str(f))
    assert words in str(e.value)

# SPDX-License-Identifier: GPL-2.0-or-later
"""instance.Instance: lock -> write -> notify in one place. No root: the
run dir is a temp dir, the daemon's notifications are recorded."""
import pytest

from wgbpf import instance


@pytest.fixture
def told(tmp_path, monkeypatch):
    monkeypatch.setattr(instance, "RUN_DIR", str(tmp_path / "run"))
    calls = []
    monkeypatch.setattr(instance, "notify_maps_written", lambda front: calls.append(("maps", front)) or True)
    monkeypatch.setattr(instance, "notify_attached", lambda front: calls.append(("attached", front)) or False)
    return calls


def test_writing_holds_the_writer_lock_then_tells_the_daemon(told):
    inst = instance.Instance("wg0")
    with inst.writing("maps written"):
        with instance.writer_lock("wg0", wait=False, bump=False) as other:
            assert other is None  # held: no other writer gets in
        assert told == []  # not before the write is done
    assert told == [("maps", "wg0")] and inst.told is True
    with instance.Instance("wg0").writing("attached"):
        pass
    assert told[-1] == ("attached", "wg0")


def test_a_write_that_fails_tells_nobody(told):
    inst = instance.Instance("wg0")
    with pytest.raises(RuntimeError):
        with inst.writing("maps written"):
            raise RuntimeError("refused")
    assert told == [] and inst.told is False
    with instance.writer_lock("wg0", wait=False) as fd:
        assert fd is not None  # released


def test_a_writer_waits_and_says_for_whom(told, monkeypatch):
    heard = []
    monkeypatch.setattr(instance.Instance, "WAIT", 0.2)
    with instance.writer_lock("wg0"):
        with pytest.raises(instance.InstanceError, match="has held the writer lock of wg0 for 0.2s"):
            with instance.Instance("wg0", heard.append).writing():
                pass
    assert len(heard) == 1 and heard[0].startswith("waiting for pid ") and heard[0].endswith("writing wg0")

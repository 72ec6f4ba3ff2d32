"""The agent's small parts: the map from update states to the wire's progress states, the
notice inbox, the persistent counters, and fault injection passed in from outside."""

import errno
from pathlib import Path

import pytest

from kernex_agent import counter
from kernex_agent.counter import PersistentCounter
from kernex_agent.faults import CrashOnce
from kernex_agent.files import disk_space
from kernex_agent.inbox import NoticeInbox
from kernex_agent.reporting import WIRE_STATE
from kernex_agent.telemetry import system_metrics
from kernex_agent.update.machine import TERMINAL, State
from kernex_protocol.payloads import FINAL_STATES, PayloadInvalid, ProgressState


def test_every_reported_state_has_its_wire_state() -> None:
    assert set(WIRE_STATE) == set(State) - {State.IDLE}  # IDLE is never reported
    assert len(set(WIRE_STATE.values())) == len(WIRE_STATE)  # no two states alike on the wire
    for state in TERMINAL:
        assert WIRE_STATE[state] in FINAL_STATES, state
    for state in set(WIRE_STATE) - TERMINAL:
        assert WIRE_STATE[state] not in FINAL_STATES, state
    # Only the notice checks (never the machine) report these.
    assert {ProgressState.REJECTED, ProgressState.ALREADY_INSTALLED}.isdisjoint(WIRE_STATE.values())


def test_the_inbox_keeps_the_newest_notice_and_says_what_is_withdrawn() -> None:
    inbox = NoticeInbox()
    assert not inbox.withdrawn("dep-1")  # nothing heard yet: the saved update goes on
    inbox.receive(b"not json")
    assert isinstance(inbox.parsed, PayloadInvalid)
    assert inbox.changed.is_set()
    assert inbox.withdrawn("dep-1")
    inbox.receive(b"")
    assert (inbox.raw, inbox.current_id) == (b"", None)  # cleared
    assert inbox.withdrawn("dep-1")


def test_crash_once_fires_in_its_state_only_once(tmp_path: Path) -> None:
    crashed: list[State] = []
    fault = CrashOnce(State.INSTALLING, tmp_path, crash=crashed.append)
    for state in (State.DOWNLOADING, State.INSTALLING, State.INSTALLING, State.COMMITTED):
        fault(state)
    assert crashed == [State.INSTALLING]
    again = CrashOnce(State.INSTALLING, tmp_path, crash=crashed.append)  # after the "reboot"
    again(State.INSTALLING)
    assert crashed == [State.INSTALLING]


@pytest.mark.parametrize("state", [State.DOWNLOADING, State.HEALTH_CHECK])
def test_a_crash_marker_is_per_state(tmp_path: Path, state: State) -> None:
    crashed: list[State] = []
    CrashOnce(state, tmp_path, crash=crashed.append)(state)
    assert (tmp_path / f"crashed-in-{state.value}").exists()
    assert crashed == [state]


def test_a_counter_reserves_blocks_and_never_repeats_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    first = PersistentCounter(path, block=4)
    assert path.read_text() == "4"  # reserved at start
    assert [first.advance() for _ in range(5)] == [1, 2, 3, 4, 5]
    assert path.read_text() == "8"  # written twice for five values: at the start and at 5
    again = PersistentCounter(path, block=4)
    assert again.advance() == 9  # past anything the last run could have handed out


def test_a_counter_on_a_full_disk_hands_out_its_reserve_then_unsaved_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "seq"
    numbers = PersistentCounter(path, block=3)

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(counter, "write_atomic", full)
    assert [numbers.advance() for _ in range(5)] == [1, 2, 3, 4, 5]  # 1-3 from the reserve
    assert path.read_text() == "3"
    assert [r.message for r in caplog.records].count("agent.counter_unsaved") == 1
    monkeypatch.undo()
    assert numbers.advance() == 6 and path.read_text() == "8"  # room again: reserving again
    # Started on a full disk, nothing is reserved: values are handed out all the same.
    monkeypatch.setattr(counter, "write_atomic", full)
    assert PersistentCounter(path, block=3).advance() == 9


def test_disk_space_answers_what_shutil_does(tmp_path: Path) -> None:
    import shutil  # the reference the agent no longer imports when idle

    ours, theirs = disk_space(tmp_path), shutil.disk_usage(tmp_path)
    assert ours.total == theirs.total
    # Other processes write meanwhile: the free space may move by a little.
    assert abs(ours.free - theirs.free) <= 64 * 1024 * 1024


def test_a_heartbeat_reports_the_root_disk_until_the_state_folder_exists(tmp_path: Path) -> None:
    metrics = system_metrics(tmp_path / "not-yet-created")
    assert metrics["disk_total_kib"] == disk_space("/").total // 1024
    assert 0 < metrics["disk_free_kib"] <= metrics["disk_total_kib"]

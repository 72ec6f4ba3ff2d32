"""The update state machine: the table's guarantees, the runner, resuming, the loop guard."""

import errno
from collections import deque
from pathlib import Path

import pytest

from kernex_agent.update.machine import (
    TERMINAL,
    TRANSITIONS,
    Event,
    InvalidTransition,
    State,
    next_state,
)
from kernex_agent.update.runner import UpdateRunner
from kernex_agent.update.store import FileStateStore, UpdateRecord

WORKING = [s for s in State if s not in TERMINAL and s != State.IDLE]
BEFORE_INSTALL = [State.DOWNLOADING, State.VERIFYING]


@pytest.mark.parametrize("state", WORKING)
def test_every_working_state_handles_failure_retry_and_loops(state: State) -> None:
    for event in (Event.FAILURE, Event.RETRY, Event.LOOP_DETECTED, Event.SUCCESS):
        assert (state, event) in TRANSITIONS, (state, event)


def test_every_path_ends_idle() -> None:
    """From any reachable state some sequence of events leads to IDLE, and nothing is stuck."""
    reachable: set[State] = set()
    queue = deque([State.DOWNLOADING])
    while queue:
        state = queue.popleft()
        if state in reachable or state == State.IDLE:
            continue
        reachable.add(state)
        queue.extend(after for (before, _), after in TRANSITIONS.items() if before == state)
    for state in reachable:
        seen, frontier = {state}, [state]
        while frontier and State.IDLE not in seen:
            current = frontier.pop()
            for (before, _), after in TRANSITIONS.items():
                if before == current and after not in seen:
                    seen.add(after)
                    frontier.append(after)
        assert State.IDLE in seen, f"{state} cannot reach IDLE"


def test_cancel_only_before_installing() -> None:
    for state in BEFORE_INSTALL:
        assert next_state(state, Event.ABORTED) == State.CANCELED
    for state in (State.INSTALLING, State.HEALTH_CHECK, State.COMMITTING, State.ROLLING_BACK):
        with pytest.raises(InvalidTransition):
            next_state(state, Event.ABORTED)


def test_failures_after_touching_the_system_roll_back() -> None:
    for state in (State.INSTALLING, State.HEALTH_CHECK, State.COMMITTING):
        assert next_state(state, Event.FAILURE) == State.ROLLING_BACK
    for state in BEFORE_INSTALL:
        assert next_state(state, Event.FAILURE) == State.FAILED  # nothing to undo yet


class Crash(Exception):
    """Stands for a power cut in the middle of a state."""


class FakeDevice:
    """Handlers that script events per state and record every call."""

    def __init__(self, script: dict[State, list[Event]]) -> None:
        self.script = {state: list(events) for state, events in script.items()}
        self.calls: list[State] = []
        self.crash_in: State | None = None

    def handlers(self) -> dict[State, object]:
        def make(state: State):
            async def handle(record: UpdateRecord) -> Event:
                self.calls.append(state)
                if self.crash_in == state:
                    self.crash_in = None
                    raise Crash
                events = self.script.get(state) or [Event.SUCCESS]
                return events.pop(0) if len(events) > 1 else events[0]

            return handle

        return {state: make(state) for state in State if state != State.IDLE}


class RecordingStore(FileStateStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.saved: list[State] = []

    def save(self, record: UpdateRecord) -> None:
        super().save(record)
        self.saved.append(record.state)

    def clear(self) -> None:
        super().clear()
        self.saved.append(State.IDLE)


class FillingStore(RecordingStore):
    """A store whose disk is full from the state `full_from` on, until `room_from`."""

    def __init__(self, path: Path, full_from: State, room_from: State | None = None) -> None:
        super().__init__(path)
        self.full_from, self.room_from = full_from, room_from
        self.full = False

    def save(self, record: UpdateRecord) -> None:
        if record.state == self.full_from:
            self.full = True
        if record.state == self.room_from:
            self.full = False
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().save(record)


async def test_happy_path_saves_before_each_state_and_ends_idle(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "state.json")
    device = FakeDevice({})
    runner = UpdateRunner(store, device.handlers())  # type: ignore[arg-type]
    runner.begin({"deployment_id": "d1"})
    final = await runner.run()
    assert final.state == State.IDLE
    expected = [
        State.DOWNLOADING,
        State.VERIFYING,
        State.INSTALLING,
        State.HEALTH_CHECK,
        State.COMMITTING,
        State.COMMITTED,
    ]
    assert store.saved == [*expected, State.IDLE]
    assert device.calls == expected
    assert store.load() == UpdateRecord()


async def test_health_check_failure_rolls_back(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "state.json")
    device = FakeDevice({State.HEALTH_CHECK: [Event.FAILURE]})
    runner = UpdateRunner(store, device.handlers())  # type: ignore[arg-type]
    runner.begin({"deployment_id": "d1"})
    await runner.run()
    assert store.saved[-3:] == [State.ROLLING_BACK, State.ROLLED_BACK, State.IDLE]
    assert State.COMMITTING not in device.calls


@pytest.mark.parametrize(
    "crash_in",
    [
        State.DOWNLOADING,
        State.VERIFYING,
        State.INSTALLING,
        State.HEALTH_CHECK,
        State.COMMITTING,
        State.ROLLING_BACK,
    ],
)
async def test_a_crash_resumes_in_the_state_it_interrupted(tmp_path: Path, crash_in: State) -> None:
    store = RecordingStore(tmp_path / "state.json")
    script = {State.HEALTH_CHECK: [Event.FAILURE]} if crash_in == State.ROLLING_BACK else {}
    device = FakeDevice(script)
    device.crash_in = crash_in
    UpdateRunner(store, device.handlers()).begin({"deployment_id": "d1"})  # type: ignore[arg-type]
    with pytest.raises(Crash):
        await UpdateRunner(store, device.handlers(), passes_through=(Crash,)).run()  # type: ignore[arg-type]
    assert store.load().state == crash_in  # what a rebooted agent finds

    # A new agent process with the same store picks up exactly there and finishes.
    resumed = await UpdateRunner(FileStateStore(store.path), device.handlers()).run()  # type: ignore[arg-type]
    assert resumed.state == State.IDLE
    assert device.calls.count(crash_in) == 2  # handlers are re-run, so they must be idempotent


async def test_loop_guard_turns_an_endless_retry_into_a_rollback(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "state.json")
    device = FakeDevice({State.HEALTH_CHECK: [Event.RETRY]})  # retries forever
    runner = UpdateRunner(store, device.handlers(), max_saves=10)  # type: ignore[arg-type]
    runner.begin({"deployment_id": "d1"})
    final = await runner.run()
    assert final.state == State.IDLE
    assert store.saved[-3:] == [State.ROLLING_BACK, State.ROLLED_BACK, State.IDLE]
    assert device.calls.count(State.HEALTH_CHECK) < 12
    assert State.ROLLING_BACK in device.calls  # the rollback really ran, with a budget of its own


async def test_a_looping_rollback_ends_failed_not_forever(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "state.json")
    device = FakeDevice({State.INSTALLING: [Event.FAILURE], State.ROLLING_BACK: [Event.RETRY]})
    runner = UpdateRunner(store, device.handlers(), max_saves=5)  # type: ignore[arg-type]
    runner.begin({"deployment_id": "d1"})
    await runner.run()
    assert store.saved[-2:] == [State.FAILED, State.IDLE]


async def test_begin_is_refused_while_an_update_runs(tmp_path: Path) -> None:
    runner = UpdateRunner(FileStateStore(tmp_path / "s.json"), {})
    runner.begin({"deployment_id": "d1"})
    with pytest.raises(RuntimeError, match="in progress"):
        runner.begin({"deployment_id": "d2"})


def test_store_round_trip_is_atomic_and_strict(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path / "agent" / "state.json")
    assert store.load() == UpdateRecord()
    record = UpdateRecord(state=State.INSTALLING, deployment={"id": "d"}, attempt=2, store_count=7)
    store.save(record)
    assert store.load() == record
    assert [p.name for p in store.path.parent.iterdir()] == ["state.json"]  # no temp file left
    store.path.write_text('{"schema": 99, "state": "idle"}')
    assert store.load() == UpdateRecord()  # unusable: set aside, not fatal
    assert store.damaged is not None and "schema" in store.damaged.reason


# --- never crash-loop: unexpected errors, restarts in a working state, damaged records -------


class Boom(Exception):
    """An error no handler expected (a library bug, a RecursionError, a ValueError)."""


def _raising(state_errors: dict[State, BaseException], device: FakeDevice) -> dict[State, object]:
    handlers = device.handlers()
    for state, error in state_errors.items():

        async def fail(record: UpdateRecord, error: BaseException = error) -> Event:
            device.calls.append(record.state)
            raise error

        handlers[state] = fail
    return handlers


@pytest.mark.parametrize(
    ("state", "error", "ends_with"),
    [
        (State.DOWNLOADING, Boom("x"), [State.FAILED, State.IDLE]),
        (State.VERIFYING, ValueError("embedded null byte"), [State.FAILED, State.IDLE]),
        (
            State.INSTALLING,
            RecursionError("maximum recursion depth exceeded"),
            [State.ROLLING_BACK, State.ROLLED_BACK, State.IDLE],
        ),
        (State.HEALTH_CHECK, KeyError("k"), [State.ROLLING_BACK, State.ROLLED_BACK, State.IDLE]),
        (State.ROLLING_BACK, Boom("cleanup"), [State.FAILED, State.IDLE]),
    ],
)
async def test_an_unexpected_error_is_that_states_failure(
    tmp_path: Path, state: State, error: BaseException, ends_with: list[State]
) -> None:
    store = RecordingStore(tmp_path / "state.json")
    script = {State.HEALTH_CHECK: [Event.FAILURE]} if state == State.ROLLING_BACK else {}
    device = FakeDevice(script)
    runner = UpdateRunner(store, _raising({state: error}, device), pause_after_error_s=0)  # type: ignore[arg-type]
    runner.begin({"deployment_id": "d1"})
    final = await runner.run()
    assert final.state == State.IDLE
    assert store.saved[-len(ends_with) :] == ends_with
    failed = [s for s in store.saved if s in (State.FAILED, State.ROLLING_BACK)]
    assert failed  # the failure was recorded, with the agent's own error code


async def test_a_terminal_state_that_keeps_raising_still_ends_idle(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "state.json")
    device = FakeDevice({})
    handlers = _raising({State.COMMITTED: Boom("report")}, device)
    runner = UpdateRunner(store, handlers, max_saves=12, pause_after_error_s=0)  # type: ignore[arg-type]
    runner.begin({"deployment_id": "d1"})
    assert (await runner.run()).state == State.IDLE
    assert device.calls.count(State.COMMITTED) < 12


async def test_restarts_in_a_working_state_reach_the_loop_guard(tmp_path: Path) -> None:
    """An agent killed in INSTALLING at every start (out of memory, say) must stop trying."""
    path = tmp_path / "state.json"
    device = FakeDevice({})
    device_handlers = device.handlers()

    async def killed(record: UpdateRecord) -> Event:
        raise Crash  # the process dies: nothing after this runs

    device_handlers[State.INSTALLING] = killed
    UpdateRunner(FileStateStore(path), device_handlers).begin({"deployment_id": "d1"})  # type: ignore[arg-type]
    starts = 0
    for starts in range(1, 40):  # noqa: B007 - the count is the result
        runner = UpdateRunner(
            FileStateStore(path),
            device_handlers,  # type: ignore[arg-type]
            max_saves=10,
            passes_through=(Crash,),
        )
        if runner.resume().state == State.IDLE:
            break
        try:
            final = await runner.run()
        except Crash:
            continue
        assert final.state == State.IDLE
        break
    assert starts < 15, "the loop guard never tripped"
    assert FileStateStore(path).load() == UpdateRecord()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"schema": 1, "state": "instal',
        b"\x00\xff garbage",
        b"[1, 2, 3]",
        b'{"schema": 1, "state": "teleporting"}',
        b'{"schema": 7, "state": "idle"}',
        b'{"schema": 1, "state": "installing", "attempt": -1}',
        b'{"schema": 1, "state": "installing", "deployment": []}',
        b'{"schema": 1, "state": "installing", "error": {"code": 5}}',
        b"[" * 100_000,
    ],
    ids=[
        "empty",
        "half-written",
        "binary",
        "list",
        "unknown-state",
        "unknown-schema",
        "negative",
        "deployment-list",
        "error-type",
        "deep",
    ],
)
def test_a_damaged_record_is_set_aside_and_loads_idle(tmp_path: Path, content: bytes) -> None:
    store = FileStateStore(tmp_path / "state.json")
    store.path.write_bytes(content)
    assert store.load() == UpdateRecord()
    assert store.damaged is not None
    assert store.damaged.moved_to.read_bytes() == content  # kept for a post-mortem
    assert not store.path.exists()
    assert FileStateStore(store.path).load() == UpdateRecord()  # reported once, not again


def test_a_record_without_its_notice_is_damaged_for_the_agent(tmp_path: Path) -> None:
    from kernex_agent.update.store import require_notice

    store = FileStateStore(tmp_path / "state.json", check=require_notice)
    store.save(UpdateRecord(state=State.VERIFYING, deployment={"id": "dep-1"}))
    assert store.load() == UpdateRecord()
    assert store.damaged is not None
    assert store.damaged.deployment_id == "dep-1"  # salvaged, so the backend hears of it


class Recorded:
    """Handlers that succeed and keep each record they were given."""

    def __init__(self) -> None:
        self.records: list[UpdateRecord] = []

    def handlers(self) -> dict[State, object]:
        async def handle(record: UpdateRecord) -> Event:
            self.records.append(record)
            return Event.SUCCESS

        return {state: handle for state in State if state != State.IDLE}

    @property
    def calls(self) -> list[State]:
        return [record.state for record in self.records]


async def test_a_state_disk_full_from_the_start_fails_the_update_and_still_reports(
    tmp_path: Path,
) -> None:
    store = FillingStore(tmp_path / "state.json", full_from=State.DOWNLOADING)
    device = Recorded()
    runner = UpdateRunner(store, device.handlers())  # type: ignore[arg-type]
    runner.begin({"deployment_id": "d1"})
    assert not store.path.exists()
    final = await runner.run()
    # Nothing was downloaded unsaved; the failure handler (the report) ran with the reason.
    assert device.calls == [State.FAILED]
    assert device.records[0].error is not None
    assert device.records[0].error["code"] == "disk_full"
    assert "cannot be saved" in device.records[0].error["detail"]
    assert final == UpdateRecord() and runner.state == State.IDLE
    assert store.saved == [State.IDLE] and store.load() == UpdateRecord()


async def test_a_state_disk_filling_after_the_install_rolls_back_unsaved(tmp_path: Path) -> None:
    store = FillingStore(tmp_path / "state.json", full_from=State.HEALTH_CHECK)
    device = Recorded()
    runner = UpdateRunner(store, device.handlers())  # type: ignore[arg-type]
    runner.begin({"deployment_id": "d1"})
    await runner.run()
    # The health check is not run unsaved: the installed version is rolled back instead.
    expected = [State.DOWNLOADING, State.VERIFYING, State.INSTALLING]
    assert device.calls == [*expected, State.ROLLING_BACK, State.ROLLED_BACK]
    assert device.records[-1].error == {
        "code": "disk_full",
        "detail": "the update state cannot be saved: No space left on device",
    }
    assert store.saved == [*expected, State.IDLE]  # the last saved state removed at the end
    assert not store.path.exists()


async def test_room_again_during_the_rollback_is_saved_again(tmp_path: Path) -> None:
    store = FillingStore(
        tmp_path / "state.json", full_from=State.COMMITTING, room_from=State.ROLLED_BACK
    )
    device = Recorded()
    runner = UpdateRunner(store, device.handlers())  # type: ignore[arg-type]
    runner.begin({"deployment_id": "d1"})
    await runner.run()
    assert State.COMMITTING not in device.calls
    assert device.calls[-2:] == [State.ROLLING_BACK, State.ROLLED_BACK]
    assert store.saved[-2:] == [State.ROLLED_BACK, State.IDLE]


async def test_a_store_failing_otherwise_is_not_taken_for_a_full_disk(tmp_path: Path) -> None:
    class BrokenStore(RecordingStore):
        def save(self, record: UpdateRecord) -> None:
            raise OSError(errno.EIO, "Input/output error")

    runner = UpdateRunner(BrokenStore(tmp_path / "state.json"), Recorded().handlers())  # type: ignore[arg-type]
    with pytest.raises(OSError, match="Input/output"):
        runner.begin({"deployment_id": "d1"})

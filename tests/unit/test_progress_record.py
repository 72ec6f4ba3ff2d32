"""The record a progress batch walks its rules on (deployments/progress.py): read from a row by
position, changed by each report as the ORM object was."""

import dataclasses
import datetime as dt

from kernex_backend.deployments.models import ExecutionState
from kernex_backend.deployments.progress import _READ, EXECUTION_STATE, _Execution
from kernex_protocol.payloads import ErrorCode, Progress, ProgressError, ProgressState

T0 = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


def test_a_row_is_read_into_the_record_field_by_field() -> None:
    # The row is unpacked by position: the columns after the key must be the fields, in order.
    columns = [column.name for column in _READ[2:]]
    fields = [field.name for field in dataclasses.fields(_Execution)]
    assert fields[: len(columns)] == columns
    assert all(field.default is None for field in dataclasses.fields(_Execution)[len(columns) :])


def notified() -> _Execution:
    return _Execution(7, ExecutionState.NOTIFIED, 1, None, None, None, 0, None, None, None)


def report(state: ProgressState, seq: int, **extra: object) -> Progress:
    return Progress("d", state, seq=seq, sent_at="t", **extra)  # type: ignore[arg-type]


def apply(execution: _Execution, progress: Progress, now: dt.datetime) -> None:
    execution.apply(progress, EXECUTION_STATE[progress.state], now)


def test_reports_move_the_record_as_the_rules_say() -> None:
    execution = notified()
    apply(execution, report(ProgressState.DOWNLOADING, 3, percent=40), T0)
    later = T0 + dt.timedelta(seconds=30)
    apply(execution, report(ProgressState.VERIFYING, 4), later)
    assert (execution.state, execution.device_state, execution.report_seq) == (
        ExecutionState.VERIFYING,
        "verifying",
        4,
    )
    assert execution.progress == 40  # a report without a percentage keeps the last one
    assert (execution.started_at, execution.reported_at, execution.finished_at) == (T0, later, None)
    apply(execution, report(ProgressState.COMMITTED, 9), later)
    assert (execution.state, execution.progress, execution.finished_at) == (
        ExecutionState.SUCCEEDED,
        100,
        later,
    )
    parameters = execution.parameters()
    assert parameters["execution_id"] == 7
    assert parameters["updated_at"] == parameters["reported_at"] == later


def test_a_failure_keeps_its_error_bounded() -> None:
    execution = notified()
    error = ProgressError(ErrorCode.HEALTH_CHECK_FAILED, "x" * 5000)
    apply(execution, report(ProgressState.ROLLED_BACK, 2, error=error), T0)
    assert execution.state == ExecutionState.ROLLED_BACK
    assert execution.error_code == "health_check_failed"
    assert execution.error_detail == "x" * 1024
    assert execution.finished_at == T0

"""Where the update state lives between steps, so a power cut resumes where it stopped.

The record is written before each state is entered: to a temporary file, fsynced, renamed over
the old one, and the directory fsynced. After a crash the agent finds either the old record or
the new one, never half of one.
"""

import datetime as dt
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kernex_agent.files import fsync_directory, write_atomic
from kernex_agent.update.machine import State
from kernex_protocol.payloads import Notice, PayloadInvalid, is_token

SCHEMA = 1

log = logging.getLogger("kernex_agent.update")


class RecordDamaged(ValueError):
    """The saved record cannot be used: not JSON, not an object, an unknown schema or state."""


@dataclass(frozen=True, slots=True)
class UpdateRecord:
    """The persisted state of the update in progress."""

    state: State = State.IDLE
    deployment: dict[str, Any] = field(default_factory=dict)  # the verified notice
    attempt: int = 0  # how often the current state has been entered in a row
    store_count: int = 0  # how many times this update's state was saved: the loop guard
    error: dict[str, str] | None = None  # {"code", "detail"} of the failure being handled
    schema: int = SCHEMA

    def to_json(self) -> bytes:
        """The on-disk form."""
        data = asdict(self)
        data["state"] = self.state.value
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "UpdateRecord":
        """Parse the on-disk form; RecordDamaged for anything the runner could not act on."""
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise RecordDamaged("the record is not JSON") from None
        if not isinstance(data, dict):
            raise RecordDamaged("the record is not a JSON object")
        if data.get("schema") != SCHEMA:
            raise RecordDamaged(f"unsupported state schema {str(data.get('schema'))[:20]!r}")
        try:
            state = State(str(data.get("state")))
        except ValueError:
            raise RecordDamaged(f"unknown state {str(data.get('state'))[:32]!r}") from None
        deployment = data.get("deployment", {})
        attempt, store_count = data.get("attempt", 0), data.get("store_count", 0)
        error = data.get("error")
        if not isinstance(deployment, dict):
            raise RecordDamaged("deployment is not an object")
        if not all(_is_count(n) for n in (attempt, store_count)):
            raise RecordDamaged("attempt and store_count must be non-negative integers")
        if error is not None and not (
            isinstance(error, dict) and all(isinstance(v, str) for v in error.values())
        ):
            raise RecordDamaged("error must be an object of strings")
        return cls(state, deployment, attempt, store_count, error)


def require_notice(record: UpdateRecord) -> None:
    """A record check for the agent: an update in progress carries the notice it acts on."""
    if record.state == State.IDLE:
        return
    notice = record.deployment.get("notice")
    try:
        Notice.parse(notice.encode() if isinstance(notice, str) else b"")
    except PayloadInvalid as exc:
        raise RecordDamaged(f"the record's notice is unusable: {exc}") from None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True, slots=True)
class DamagedRecord:
    """A record that could not be read, moved aside; what could be salvaged of it."""

    reason: str
    moved_to: Path
    deployment_id: str | None  # when the damaged file still names one


class StateStore(Protocol):
    """Loads and saves the update record."""

    def load(self) -> UpdateRecord:
        """The saved record, or an idle one if there is none."""

    def save(self, record: UpdateRecord) -> None:
        """Persist `record` durably before returning."""

    def clear(self) -> None:
        """Forget the record (back to idle); must work on a full disk."""


class FileStateStore:
    """A JSON file written atomically.

    A record that cannot be read (a disk that lost writes, an agent downgraded past a schema
    change, a hand edit) is moved aside and loads as IDLE: the device is left to the installer's
    own view of what runs, and `damaged` says what happened so it is reported once. Refusing to
    start instead would take the device off the fleet until someone edits its disk.
    """

    def __init__(self, path: Path, *, check: Callable[[UpdateRecord], None] | None = None) -> None:
        """`check` raises RecordDamaged for a record that parses but cannot be acted on."""
        self.path = path
        self.damaged: DamagedRecord | None = None
        self._check = check

    def load(self) -> UpdateRecord:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return UpdateRecord()
        try:
            record = UpdateRecord.from_json(raw)
            if self._check is not None:
                self._check(record)
        except RecordDamaged as exc:
            self._set_aside(raw, str(exc))
            return UpdateRecord()
        return record

    def _set_aside(self, raw: bytes, reason: str) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        moved_to = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        os.replace(self.path, moved_to)
        self.damaged = DamagedRecord(reason, moved_to, _salvage_deployment_id(raw))
        log.error(
            "update.record_damaged",
            extra={
                "reason": reason,
                "moved_to": str(moved_to),
                "deployment_id": self.damaged.deployment_id,
            },
        )

    def save(self, record: UpdateRecord) -> None:
        write_atomic(self.path, record.to_json())

    def clear(self) -> None:
        # Removing a file needs no free space, unlike writing an idle record over it.
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        fsync_directory(self.path.parent)


def _salvage_deployment_id(raw: bytes) -> str | None:
    """The deployment a damaged record was about, if its text still says (to report it)."""
    try:
        data = json.loads(raw)
        candidate = data["deployment"]["id"]
    except (ValueError, RecursionError, TypeError, KeyError):
        return None
    return candidate if isinstance(candidate, str) and is_token(candidate) else None

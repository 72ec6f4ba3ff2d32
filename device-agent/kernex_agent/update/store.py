"""Where the update state lives between steps, so a power cut resumes where it stopped.

The record is written before each state is entered: to a temporary file, fsynced, renamed over
the old one, and the directory fsynced. After a crash the agent finds either the old record or
the new one, never half of one.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kernex_agent.files import write_atomic
from kernex_agent.update.machine import State

SCHEMA = 1


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
        """Parse the on-disk form."""
        data = json.loads(raw)
        if data.get("schema") != SCHEMA:
            raise ValueError(f"unsupported state schema {data.get('schema')!r}")
        return cls(
            state=State(data["state"]),
            deployment=dict(data.get("deployment") or {}),
            attempt=int(data.get("attempt", 0)),
            store_count=int(data.get("store_count", 0)),
            error=data.get("error"),
        )


class StateStore(Protocol):
    """Loads and saves the update record."""

    def load(self) -> UpdateRecord:
        """The saved record, or an idle one if there is none."""

    def save(self, record: UpdateRecord) -> None:
        """Persist `record` durably before returning."""


class FileStateStore:
    """A JSON file written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> UpdateRecord:
        try:
            return UpdateRecord.from_json(self.path.read_bytes())
        except FileNotFoundError:
            return UpdateRecord()

    def save(self, record: UpdateRecord) -> None:
        write_atomic(self.path, record.to_json())

"""Runs the state machine: save, enter, handle, transition; resume after a crash.

A handler is a small coroutine per state that does that state's work and returns an Event. The
runner saves the record before entering each state, counts saves per update, and treats a count
past `max_saves` as a loop (a device rebooting in the same state over and over): it feeds
LOOP_DETECTED instead of running the handler again, which leads to rollback or failure.
"""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from kernex_agent.update.machine import Event, State, next_state
from kernex_agent.update.store import StateStore, UpdateRecord


@dataclass(frozen=True, slots=True)
class Failed:
    """A handler's FAILURE with the reason, kept in the record and reported at the end."""

    code: str
    detail: str = ""


Handler = Callable[[UpdateRecord], Awaitable[Event | Failed]]
Observer = Callable[[UpdateRecord], Awaitable[None]]


class UpdateRunner:
    """Drives one update from a notice to IDLE."""

    def __init__(
        self,
        store: StateStore,
        handlers: Mapping[State, Handler],
        *,
        max_saves: int = 50,
        on_enter: Observer | None = None,
    ) -> None:
        self._store = store
        self._handlers = handlers
        self._max_saves = max_saves
        self._on_enter = on_enter

    def _enter(self, current: UpdateRecord, state: State) -> UpdateRecord:
        attempt = current.attempt + 1 if state == current.state else 1
        record = replace(current, state=state, attempt=attempt, store_count=current.store_count + 1)
        self._store.save(record)  # before any work in the new state
        return record

    def begin(self, deployment: dict[str, Any]) -> UpdateRecord:
        """Record a new update, entering DOWNLOADING. Refused while another is in progress."""
        current = self._store.load()
        if current.state != State.IDLE:
            raise RuntimeError(f"an update is in progress ({current.state.value})")
        return self._enter(UpdateRecord(deployment=deployment), State.DOWNLOADING)

    async def run(self) -> UpdateRecord:
        """Run from the saved state until IDLE; call again after a crash to resume."""
        record = self._store.load()
        while record.state != State.IDLE:
            if self._on_enter is not None:
                await self._on_enter(record)
            if record.store_count > self._max_saves:
                event: Event | Failed = Event.LOOP_DETECTED
            else:
                event = await self._handlers[record.state](record)
            if isinstance(event, Failed):
                record = replace(record, error={"code": event.code, "detail": event.detail})
                event = Event.FAILURE
            following = next_state(record.state, event)
            if event == Event.LOOP_DETECTED:
                # The recovery path (rollback, then reporting) gets a budget of its own; the
                # chain of recovery states is finite, so this still ends.
                error = record.error or {"code": "loop_detected", "detail": record.state.value}
                record = replace(record, store_count=0, error=error)
            if following == State.IDLE:
                record = UpdateRecord()
                self._store.save(record)
            else:
                record = self._enter(record, following)
        return record

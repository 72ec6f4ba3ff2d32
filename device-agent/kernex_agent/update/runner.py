"""Runs the state machine: save, enter, handle, transition; resume after a crash.

A handler is a small coroutine per state that does that state's work and returns an Event. The
runner saves the record before entering each state, counts saves per update, and treats a count
past `max_saves` as a loop (a device rebooting in the same state over and over): it feeds
LOOP_DETECTED instead of running the handler again, which leads to rollback or failure.

Every start of the agent in a working state counts as a save too (`resume`), so an agent that
dies in the same state again and again (killed for memory, a crash in a library) reaches the
loop guard instead of restarting forever. An exception a handler did not expect is that state's
failure, with the error code `agent_error`: before INSTALLING the update fails, after it the
device rolls back, and in a terminal state the report is retried within the same budget.

A disk too full to save the record ends the update instead of stopping it: a state that moves
the update forward is not worked on unsaved (after a crash the agent could not resume it), so
it fails as `disk_full`, which leads to FAILED, or through ROLLING_BACK to ROLLED_BACK. Those run
without their record saved: they free space and end in a report that needs no disk, and IDLE is
the record's removal, which a full disk allows.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from kernex_agent.files import is_no_space
from kernex_agent.update.machine import TERMINAL, Event, State, next_state
from kernex_agent.update.store import StateStore, UpdateRecord
from kernex_protocol.payloads import ErrorCode

AGENT_ERROR: Final = "agent_error"
# The states whose work moves an update forward: never worked on without their record saved.
FORWARD: Final = frozenset(
    {State.DOWNLOADING, State.VERIFYING, State.INSTALLING, State.HEALTH_CHECK, State.COMMITTING}
)

log = logging.getLogger("kernex_agent.update")


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
        passes_through: tuple[type[BaseException], ...] = (),
        pause_after_error_s: float = 1.0,
    ) -> None:
        """`passes_through` are exceptions that end `run` and leave the record as saved (the
        agent stopping); any other exception from a handler is that state's failure."""
        self._store = store
        self._handlers = handlers
        self._max_saves = max_saves
        self._on_enter = on_enter
        self._passes_through = passes_through
        self._pause_after_error_s = pause_after_error_s
        # The record entered last (None between updates), and why it could not be saved.
        self._record: UpdateRecord | None = None
        self._unsaved: str | None = None

    @property
    def state(self) -> State:
        """The state of the update in progress (IDLE between updates), for heartbeats."""
        return State.IDLE if self._record is None else self._record.state

    def _enter(self, current: UpdateRecord, state: State) -> UpdateRecord:
        attempt = current.attempt + 1 if state == current.state else 1
        record = replace(current, state=state, attempt=attempt, store_count=current.store_count + 1)
        try:
            self._store.save(record)  # before any work in the new state
        except OSError as exc:
            if not is_no_space(exc):
                raise
            self._unsaved = f"the update state cannot be saved: {exc.strerror}"
            log.error("update.state_unsaved", extra={"state": state.value, "error": str(exc)})
        else:
            self._unsaved = None
        self._record = record
        return record

    def _finish(self) -> UpdateRecord:
        """Back to IDLE: the record removed (which a full disk allows)."""
        self._store.clear()
        self._record, self._unsaved = None, None
        return UpdateRecord()

    def begin(self, deployment: dict[str, Any]) -> UpdateRecord:
        """Record a new update, entering DOWNLOADING. Refused while another is in progress."""
        current = self._store.load()
        if current.state != State.IDLE:
            raise RuntimeError(f"an update is in progress ({current.state.value})")
        return self._enter(UpdateRecord(deployment=deployment), State.DOWNLOADING)

    def resume(self) -> UpdateRecord:
        """At start-up: count this start against the loop guard if an update was interrupted."""
        record = self._store.load()
        if record.state == State.IDLE:
            return record
        return self._enter(record, record.state)

    async def _handle(self, record: UpdateRecord) -> Event | Failed:
        try:
            return await self._handlers[record.state](record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, self._passes_through):
                raise
            log.error(
                "update.handler_error",
                extra={"state": record.state.value, "error": f"{type(exc).__name__}: {exc}"[:300]},
                exc_info=exc,
            )
            await asyncio.sleep(self._pause_after_error_s)
            if record.state in TERMINAL:
                return Event.RETRY  # reporting failed: again, within the loop guard's budget
            return Failed(AGENT_ERROR, f"{type(exc).__name__}: {exc}"[:300])

    async def _observe(self, record: UpdateRecord) -> None:
        assert self._on_enter is not None
        try:
            await self._on_enter(record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, self._passes_through):
                raise
            # Telling the backend is not worth stopping the update for.
            log.warning("update.observer_error", extra={"error": f"{type(exc).__name__}"})

    async def run(self) -> UpdateRecord:
        """Run from the state entered last (or the saved one) until IDLE; call again after a
        crash to resume."""
        record = self._record if self._record is not None else self._store.load()
        while record.state != State.IDLE:
            if self._on_enter is not None:
                await self._observe(record)
            if record.store_count > self._max_saves:
                event: Event | Failed = Event.LOOP_DETECTED
            elif self._unsaved is not None and record.state in FORWARD:
                event = Failed(ErrorCode.DISK_FULL, self._unsaved)
            else:
                event = await self._handle(record)
            if isinstance(event, Failed):
                record = replace(record, error={"code": event.code, "detail": event.detail})
                event = Event.FAILURE
            following = next_state(record.state, event)
            if event == Event.LOOP_DETECTED:
                # The recovery path (rollback, then reporting) gets a budget of its own; the
                # chain of recovery states is finite, so this still ends.
                error = record.error or {"code": "loop_detected", "detail": record.state.value}
                record = replace(record, store_count=0, error=error)
            record = self._finish() if following == State.IDLE else self._enter(record, following)
        return record

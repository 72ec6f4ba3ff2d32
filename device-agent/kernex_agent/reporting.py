"""Progress reporting: the agent's update states as the wire's progress states, numbered,
published, and the final outcome remembered so a repeated notice is answered with it."""

import asyncio
import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from kernex_agent.counter import PersistentCounter
from kernex_agent.files import is_no_space, write_atomic
from kernex_agent.transport import MqttTransport
from kernex_agent.update.machine import State
from kernex_agent.update.states import notice_of
from kernex_agent.update.store import UpdateRecord
from kernex_protocol.payloads import ErrorCode, Notice, Progress, ProgressError, ProgressState
from kernex_protocol.topics import Channel

log = logging.getLogger("kernex_agent")

# Every state an update reports, as the protocol names it (IDLE is never reported). Explicit,
# so renaming a state of the machine cannot silently change the wire.
WIRE_STATE: Final[Mapping[State, ProgressState]] = MappingProxyType(
    {
        State.DOWNLOADING: ProgressState.DOWNLOADING,
        State.VERIFYING: ProgressState.VERIFYING,
        State.INSTALLING: ProgressState.INSTALLING,
        State.HEALTH_CHECK: ProgressState.HEALTH_CHECK,
        State.COMMITTING: ProgressState.COMMITTING,
        State.ROLLING_BACK: ProgressState.ROLLING_BACK,
        State.COMMITTED: ProgressState.COMMITTED,
        State.ROLLED_BACK: ProgressState.ROLLED_BACK,
        State.FAILED: ProgressState.FAILED,
        State.CANCELED: ProgressState.CANCELED,
    }
)

_ACK_WAIT_S: Final = 10.0


def utc_now_text() -> str:
    """Now, as the protocol writes timestamps."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class ProgressReporter:
    """Publishes progress on the device's progress channel (the update states' Reporter)."""

    def __init__(
        self,
        transport: MqttTransport,
        state_dir: Path,
        *,
        superseded_by: Callable[[], str | None],
        connected: Callable[[float | None], Awaitable[bool]],
    ) -> None:
        """`superseded_by` names the deployment that replaced a canceled one; `connected(limit)`
        waits up to `limit` seconds (None: for ever) for the broker connection."""
        self._transport = transport
        self._seq = PersistentCounter(state_dir / "progress-seq")
        self._outcome_path = state_dir / "last-outcome.json"
        # The error code of the last outcome reported (None after a success), for heartbeats.
        self.last_error: str | None = None
        self._superseded_by = superseded_by
        self._connected = connected
        self.sent: Counter[str] = Counter()  # what was published, for the simulator's reports

    def message(
        self,
        deployment_id: str,
        state: ProgressState,
        *,
        version: str | None = None,
        error: ProgressError | None = None,
        percent: int | None = None,
        attempt: int | None = None,
    ) -> Progress:
        """A progress message with the next sequence number."""
        return Progress(
            deployment_id=deployment_id,
            state=state,
            seq=self._seq.advance(),
            sent_at=utc_now_text(),
            version=version,
            percent=percent,
            error=error,
            attempt=attempt,
        )

    def about(self, notice: Notice, state: ProgressState, **fields: Any) -> Progress:
        """A progress message about `notice` (and its attempt)."""
        return self.message(
            notice.deployment_id,
            state,
            version=notice.manifest.version,
            attempt=notice.attempt,
            **fields,
        )

    def _of_record(self, record: UpdateRecord, *, percent: int | None = None) -> Progress:
        state = WIRE_STATE[record.state]
        error = None
        if record.error is not None:
            try:
                code = ErrorCode(record.error["code"])
            except ValueError:
                code = ErrorCode.INSTALL_FAILED
            error = ProgressError(code, record.error.get("detail", ""))
        elif state == ProgressState.CANCELED and (newer := self._superseded_by()) is not None:
            error = ProgressError(ErrorCode.SUPERSEDED, f"replaced by {newer}")
        return self.about(notice_of(record), state, error=error, percent=percent)

    def progress(self, record: UpdateRecord, *, percent: int | None = None) -> None:
        """Report the state `record` is in; paho queues it while offline."""
        self._transport.publish(
            Channel.PROGRESS, self._of_record(record, percent=percent).to_payload()
        )
        self.sent["progress"] += 1

    async def final(self, record: UpdateRecord) -> bool:
        """Report a terminal state and wait for the broker's acknowledgement."""
        return await self.report_outcome(self._of_record(record))

    async def report_outcome(self, message: Progress) -> bool:
        """Remember and publish a final message; True once the broker acknowledged it."""
        payload = message.to_payload()
        # Remembered first: the same notice arriving again is answered with this outcome.
        outcome = {
            "deployment_id": message.deployment_id,
            "attempt": message.attempt,
            "progress": payload.decode(),
        }
        try:
            write_atomic(self._outcome_path, json.dumps(outcome).encode())
        except OSError as exc:
            if not is_no_space(exc):
                raise
            # Reported all the same: the backend hearing it matters more. Unremembered, the
            # same notice heard again is tried again (and fails the same way while it is full).
            log.warning("update.outcome_unsaved", extra={"error": str(exc)})
        self.last_error = None if message.error is None else message.error.code.value
        log.info(
            "update.outcome",
            extra={
                "deployment_id": message.deployment_id,
                "state": message.state.value,
                "error": None if message.error is None else message.error.code.value,
            },
        )
        if not await self._connected(None):
            return False
        info = self._transport.publish(Channel.PROGRESS, payload)
        self.sent["progress"] += 1
        self.sent[f"final.{message.state.value}"] += 1
        try:
            await asyncio.to_thread(info.wait_for_publish, _ACK_WAIT_S)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    async def repeat_outcome(self, deployment_id: str, attempt: int = 1) -> bool:
        """Say the remembered outcome again if it is about this attempt of `deployment_id`;
        False if none is (a retry is a new attempt: the device tries again)."""
        try:
            outcome = json.loads(self._outcome_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return False
        if not isinstance(outcome, dict) or outcome.get("deployment_id") != deployment_id:
            return False
        if (outcome.get("attempt") or 1) != attempt:
            return False
        if await self._connected(_ACK_WAIT_S):
            self._transport.publish(Channel.PROGRESS, str(outcome["progress"]).encode())
        return True

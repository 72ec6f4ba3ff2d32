"""Progress ingest: device reports applied to their executions, in order, exactly once.

The device numbers every report (`seq`, growing across its life), so a report at or below the
last one applied is a QoS 1 repeat or a late arrival and is ignored; a finished execution takes
no further reports. The device's fine state is kept in device_state and mapped onto the
execution's coarser state. A final report records the installed version on success, completes
the deployment when it was the last one, and refreshes the device's retained notice.
"""

import uuid
from collections.abc import Awaitable, Callable
from typing import Final

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.core.db import utc_now
from kernex_backend.deployments.models import DeploymentExecution, ExecutionState
from kernex_backend.deployments.notices import complete_if_done
from kernex_backend.devices.models import Device
from kernex_backend.mqtt.bridge import BridgeStats
from kernex_protocol.payloads import Progress, ProgressState

log = structlog.get_logger(__name__)

EXECUTION_STATE: Final[dict[ProgressState, ExecutionState]] = {
    ProgressState.DOWNLOADING: ExecutionState.DOWNLOADING,
    ProgressState.VERIFYING: ExecutionState.VERIFYING,
    ProgressState.INSTALLING: ExecutionState.INSTALLING,
    ProgressState.HEALTH_CHECK: ExecutionState.HEALTH_CHECK,
    ProgressState.COMMITTING: ExecutionState.HEALTH_CHECK,
    ProgressState.ROLLING_BACK: ExecutionState.HEALTH_CHECK,
    ProgressState.COMMITTED: ExecutionState.SUCCEEDED,
    ProgressState.ALREADY_INSTALLED: ExecutionState.SUCCEEDED,
    ProgressState.ROLLED_BACK: ExecutionState.ROLLED_BACK,
    ProgressState.FAILED: ExecutionState.FAILED,
    ProgressState.REJECTED: ExecutionState.FAILED,
    ProgressState.CANCELED: ExecutionState.CANCELED,
}


class ProgressIngest:
    """Applies progress messages (the bridge's handler)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        stats: BridgeStats,
        *,
        on_final: Callable[[str], Awaitable[None]],
    ) -> None:
        self._sessionmaker = sessionmaker
        self._stats = stats
        self._on_final = on_final

    async def apply(self, device_id: str, progress: object) -> None:
        """Apply one report to its execution, unless it is a repeat, late, or unknown."""
        assert isinstance(progress, Progress)
        try:
            deployment_id = uuid.UUID(progress.deployment_id)
        except ValueError:
            self._stats.count("progress.unknown_execution")
            return
        async with self._sessionmaker() as session:
            execution = (
                await session.exec(
                    select(DeploymentExecution)
                    .where(
                        col(DeploymentExecution.deployment_id) == deployment_id,
                        col(DeploymentExecution.device_id) == device_id,
                    )
                    .with_for_update()
                )
            ).first()
            if execution is None:
                self._stats.count("progress.unknown_execution")
                return
            if execution.state.terminal:
                self._stats.count("progress.after_final")
                return
            if execution.report_seq is not None and progress.seq <= execution.report_seq:
                self._stats.count("progress.duplicate")
                return
            state = EXECUTION_STATE[progress.state]
            self._update(execution, progress, state)
            session.add(execution)
            if state == ExecutionState.SUCCEEDED and progress.version is not None:
                await session.exec(
                    sa.update(Device)
                    .where(col(Device.id) == device_id)
                    .values(current_version=progress.version, updated_at=utc_now())
                )
            if state.terminal:
                await complete_if_done(session, deployment_id)
            await session.commit()
        self._stats.count("progress.applied")
        if state.terminal:
            log.info(
                "execution_finished",
                device_id=device_id,
                deployment_id=str(deployment_id),
                state=state.value,
                error=progress.error.code.value if progress.error else None,
            )
            await self._on_final(device_id)

    @staticmethod
    def _update(execution: DeploymentExecution, progress: Progress, state: ExecutionState) -> None:
        now = utc_now()
        execution.state = state
        execution.device_state = progress.state.value
        execution.report_seq = progress.seq
        execution.reported_at = now
        execution.updated_at = now
        execution.started_at = execution.started_at or now
        if progress.percent is not None:
            execution.progress = progress.percent
        if state == ExecutionState.SUCCEEDED:
            execution.progress = 100
        if progress.error is not None:
            execution.error_code = progress.error.code.value
            execution.error_detail = progress.error.detail[:1024]
        if state.terminal:
            execution.finished_at = now

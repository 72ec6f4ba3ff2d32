"""Silent executions time out: a device that reported nothing for longer than the fleet-wide
limit is written off (the rollout policy's own, tighter timeouts are rollout.py's)."""

import datetime as dt

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.core.db import utc_now
from kernex_backend.deployments import rollout
from kernex_backend.deployments.models import LIVE_STATES, DeploymentExecution, ExecutionState

log = structlog.get_logger(__name__)


async def time_out_silent(
    sessionmaker: async_sessionmaker[AsyncSession], *, silent_for: dt.timedelta
) -> list[str]:
    """Executions silent for longer than `silent_for` become TIMED_OUT (and their deployments
    complete if that was the last); returns the devices whose notices to refresh."""
    now = utc_now()
    async with sessionmaker() as session:
        result = await session.exec(
            sa.update(DeploymentExecution)
            .where(
                col(DeploymentExecution.state).in_(LIVE_STATES),
                # A notified device is silent by design during its jitter delay.
                sa.func.coalesce(
                    col(DeploymentExecution.reported_at),
                    col(DeploymentExecution.notified_at)
                    + sa.func.make_interval(
                        0, 0, 0, 0, 0, 0, col(DeploymentExecution.start_delay_s)
                    ),
                )
                < now - silent_for,
            )
            .values(
                state=ExecutionState.TIMED_OUT,
                error_code="timed_out",
                error_detail=f"no report for {int(silent_for.total_seconds())} s",
                finished_at=now,
                updated_at=now,
            )
            .returning(col(DeploymentExecution.device_id), col(DeploymentExecution.deployment_id))
        )
        ended = result.all()
        for deployment_id in sorted({deployment for _, deployment in ended}):
            await rollout.settle(session, deployment_id, now=now)
        await session.commit()
    for device_id, deployment_id in ended:
        log.info("execution_timed_out", device_id=device_id, deployment_id=str(deployment_id))
    return [device_id for device_id, _ in ended]

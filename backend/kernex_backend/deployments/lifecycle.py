"""The execution lifecycle after notification: silent executions time out, and a deployment
completes once none of its executions is left unfinished."""

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.core.db import utc_now
from kernex_backend.deployments.models import (
    Deployment,
    DeploymentExecution,
    DeploymentStatus,
    ExecutionState,
)

log = structlog.get_logger(__name__)

LIVE_STATES = tuple(s for s in ExecutionState if not s.terminal and s != ExecutionState.PENDING)


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
                sa.func.coalesce(
                    col(DeploymentExecution.reported_at), col(DeploymentExecution.notified_at)
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
        await session.commit()
        await complete_finished(session)
        await session.commit()
    for device_id, _ in ended:
        log.info("execution_timed_out", device_id=device_id)
    return [device_id for device_id, _ in ended]


async def complete_if_done(session: AsyncSession, deployment_id: uuid.UUID) -> None:
    """Mark a running deployment COMPLETED once none of its executions is left unfinished.

    The deployment row is locked first: two devices finishing at once are handled in two
    transactions, and without the lock each would still see the other's execution unfinished
    and neither would complete the deployment. With it, the second waits for the first to
    commit and then sees its result.
    """
    lock: Any = (
        sa.select(col(Deployment.id)).where(col(Deployment.id) == deployment_id).with_for_update()
    )
    await session.exec(lock)
    unfinished = [s for s in ExecutionState if not s.terminal]
    now = utc_now()
    statement: Any = (
        sa.update(Deployment)
        .where(
            col(Deployment.id) == deployment_id,
            col(Deployment.status) == DeploymentStatus.RUNNING,
            ~sa.exists().where(
                col(DeploymentExecution.deployment_id) == deployment_id,
                col(DeploymentExecution.state).in_(unfinished),
            ),
        )
        .values(status=DeploymentStatus.COMPLETED, finished_at=now, updated_at=now)
    )
    await session.exec(statement)


async def complete_finished(session: AsyncSession) -> None:
    """Complete every running deployment whose executions have all ended (a safety net)."""
    rows = await session.exec(
        select(Deployment.id).where(col(Deployment.status) == DeploymentStatus.RUNNING)
    )
    for deployment_id in rows.all():
        await complete_if_done(session, deployment_id)

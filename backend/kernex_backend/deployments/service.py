"""Deployment queries."""

import uuid
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.core.errors import NotFound
from kernex_backend.core.pagination import Page
from kernex_backend.deployments.models import (
    Deployment,
    DeploymentExecution,
    DeploymentStatus,
    ExecutionState,
)


class DeploymentNotFound(NotFound):
    """No deployment has that id."""

    slug = "deployment-not-found"
    title = "Deployment not found"


async def get(*, session: AsyncSession, deployment_id: uuid.UUID) -> Deployment:
    """The deployment with `deployment_id`."""
    deployment = await session.get(Deployment, deployment_id)
    if deployment is None:
        raise DeploymentNotFound(f"no deployment with id {deployment_id}")
    return deployment


async def execution_counts(
    *, session: AsyncSession, deployment_id: uuid.UUID
) -> dict[ExecutionState, int]:
    """How many executions of a deployment are in each state (every state listed)."""
    rows = await session.exec(
        select(DeploymentExecution.state, sa.func.count())
        .where(DeploymentExecution.deployment_id == deployment_id)
        .group_by(col(DeploymentExecution.state))
    )
    counts = dict.fromkeys(ExecutionState, 0)
    for state, count in rows:
        counts[ExecutionState(state)] = count
    return counts


async def list_deployments(
    *,
    session: AsyncSession,
    page: Page,
    status: DeploymentStatus | None = None,
    bundle_id: uuid.UUID | None = None,
) -> tuple[list[Deployment], int]:
    """Deployments, newest first."""
    conditions: list[Any] = []
    if status is not None:
        conditions.append(col(Deployment.status) == status)
    if bundle_id is not None:
        conditions.append(col(Deployment.bundle_id) == bundle_id)
    count = (
        await session.exec(select(sa.func.count()).select_from(Deployment).where(*conditions))
    ).one()
    rows = await session.exec(
        select(Deployment)
        .where(*conditions)
        .order_by(col(Deployment.created_at).desc(), col(Deployment.id))
        .limit(page.limit)
        .offset(page.offset)
    )
    return list(rows), count


async def list_executions(
    *,
    session: AsyncSession,
    deployment_id: uuid.UUID,
    page: Page,
    state: ExecutionState | None = None,
) -> tuple[list[DeploymentExecution], int]:
    """A deployment's executions, by device ID."""
    await get(session=session, deployment_id=deployment_id)
    conditions: list[Any] = [col(DeploymentExecution.deployment_id) == deployment_id]
    if state is not None:
        conditions.append(col(DeploymentExecution.state) == state)
    count = (
        await session.exec(
            select(sa.func.count()).select_from(DeploymentExecution).where(*conditions)
        )
    ).one()
    rows = await session.exec(
        select(DeploymentExecution)
        .where(*conditions)
        .order_by(col(DeploymentExecution.device_id))
        .limit(page.limit)
        .offset(page.offset)
    )
    return list(rows), count

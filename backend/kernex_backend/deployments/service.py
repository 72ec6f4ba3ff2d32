"""Deployment queries."""

import uuid
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.audit import service as audit
from kernex_backend.bundles.models import Bundle
from kernex_backend.bundles.service import BundleNotFound
from kernex_backend.core.db import utc_now
from kernex_backend.core.errors import Conflict, InvalidInput, NotFound
from kernex_backend.core.pagination import Page, paginate
from kernex_backend.deployments.models import (
    Deployment,
    DeploymentExecution,
    DeploymentStatus,
    ExecutionState,
)
from kernex_backend.deployments.schemas import DeploymentCreate
from kernex_backend.devices.models import Device, DeviceStatus


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
    return await paginate(
        session,
        Deployment,
        page,
        where=conditions,
        order_by=[col(Deployment.created_at).desc(), col(Deployment.id)],
    )


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
    return await paginate(
        session,
        DeploymentExecution,
        page,
        where=conditions,
        order_by=[col(DeploymentExecution.device_id)],
    )


class DevicesBusy(Conflict):
    """Some targeted devices already take part in an unfinished deployment."""

    slug = "devices-busy"
    title = "Devices are busy with another deployment"


class BundleNotDeployable(Conflict):
    """The bundle carries no signed manifest that devices could verify."""

    slug = "bundle-not-deployable"
    title = "Bundle cannot be deployed"


async def create(*, session: AsyncSession, request: DeploymentCreate, actor: str) -> Deployment:
    """Start a deployment of a signed bundle to explicit devices; all are notified at once."""
    bundle = await session.get(Bundle, request.bundle_id)
    if bundle is None:
        raise BundleNotFound(f"no bundle with id {request.bundle_id}")
    if bundle.signature is None or bundle.manifest_created_at is None:
        raise BundleNotDeployable(
            "the bundle has no stored release signature (unsigned, or uploaded before "
            "signatures were kept): devices would refuse it; upload it signed"
        )
    device_ids = sorted(set(request.device_ids))
    devices = {
        d.id: d for d in await session.exec(select(Device).where(col(Device.id).in_(device_ids)))
    }
    unknown = [i for i in device_ids if i not in devices]
    if unknown:
        raise InvalidInput(f"{len(unknown)} unknown device(s)", unknown_devices=unknown[:100])
    retired = [i for i, d in devices.items() if d.status == DeviceStatus.DECOMMISSIONED]
    if retired:
        raise InvalidInput("decommissioned devices cannot be deployed to", devices=retired[:100])
    wrong_type = [i for i, d in devices.items() if d.device_type != bundle.device_type]
    if wrong_type:
        raise InvalidInput(
            f"the bundle is for device type {bundle.device_type}", devices=wrong_type[:100]
        )
    unfinished = [s for s in ExecutionState if not s.terminal]
    busy = (
        await session.exec(
            select(DeploymentExecution.device_id)
            .join(Deployment, col(Deployment.id) == col(DeploymentExecution.deployment_id))
            .where(
                col(DeploymentExecution.device_id).in_(device_ids),
                col(DeploymentExecution.state).in_(unfinished),
                col(Deployment.status).in_(
                    [DeploymentStatus.SCHEDULED, DeploymentStatus.RUNNING, DeploymentStatus.PAUSED]
                ),
            )
        )
    ).all()
    if busy:
        raise DevicesBusy(
            f"{len(busy)} device(s) take part in an unfinished deployment; cancel it first",
            devices=sorted(busy)[:100],
        )
    now = utc_now()
    deployment = Deployment(
        name=request.name,
        bundle_id=bundle.id,
        target={"device_ids": device_ids},
        status=DeploymentStatus.RUNNING,
        created_by=actor,
        started_at=now,
    )
    session.add(deployment)
    await session.flush()
    session.add_all(
        DeploymentExecution(deployment_id=deployment.id, device_id=device_id)
        for device_id in device_ids
    )
    audit.record(
        session,
        actor=actor,
        action="deployment.create",
        object_type="deployment",
        object_id=str(deployment.id),
        details={
            "bundle_id": str(bundle.id),
            "version": bundle.version,
            "devices": len(device_ids),
        },
    )
    await session.commit()
    await session.refresh(deployment)
    return deployment


# Before INSTALLING nothing on a device has changed: those executions are canceled. Devices
# already installing finish (or roll back) and report it; that is safer than interrupting.
CANCELABLE = (
    ExecutionState.PENDING,
    ExecutionState.NOTIFIED,
    ExecutionState.DOWNLOADING,
    ExecutionState.VERIFYING,
)


async def cancel(*, session: AsyncSession, deployment_id: uuid.UUID, actor: str) -> list[str]:
    """Cancel a deployment; returns the devices whose notices must be withdrawn."""
    deployment = await get(session=session, deployment_id=deployment_id)
    if deployment.status.finished:
        raise Conflict(f"the deployment is already {deployment.status.value}")
    now = utc_now()
    deployment.status = DeploymentStatus.CANCELED
    deployment.finished_at = now
    deployment.updated_at = now
    session.add(deployment)
    result = await session.exec(
        sa.update(DeploymentExecution)
        .where(
            col(DeploymentExecution.deployment_id) == deployment_id,
            col(DeploymentExecution.state).in_(CANCELABLE),
        )
        .values(
            state=ExecutionState.CANCELED,
            error_code="canceled_by_operator",
            finished_at=now,
            updated_at=now,
        )
        .returning(col(DeploymentExecution.device_id))
    )
    devices = [row[0] for row in result.all()]
    audit.record(
        session,
        actor=actor,
        action="deployment.cancel",
        object_type="deployment",
        object_id=str(deployment_id),
        details={"canceled_executions": len(devices)},
    )
    await session.commit()
    return devices

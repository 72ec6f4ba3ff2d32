"""Deployment endpoints: start a deployment to explicit devices, follow it, cancel it."""

import uuid
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends

from kernex_backend.core.access import ReadAccess, WriteAccess
from kernex_backend.core.pagination import PageDep
from kernex_backend.core.runtime import SessionDep, optional_component
from kernex_backend.deployments import service
from kernex_backend.deployments.models import DeploymentStatus, ExecutionState
from kernex_backend.deployments.notices import NoticeService
from kernex_backend.deployments.schemas import (
    DeploymentCreate,
    DeploymentDetail,
    DeploymentPublic,
    DeploymentsPublic,
    ExecutionPublic,
    ExecutionsPublic,
)

# The notice service of this process: None where the MQTT bridge does not run (the others'
# notifiers find the new work within their interval).
NoticesDep = Annotated[NoticeService | None, Depends(optional_component(NoticeService))]

router = APIRouter(prefix="/deployments", tags=["deployments"])
log = structlog.get_logger(__name__)


async def _detail(session: SessionDep, deployment_id: uuid.UUID) -> DeploymentDetail:
    deployment = await service.get(session=session, deployment_id=deployment_id)
    counts = await service.execution_counts(session=session, deployment_id=deployment_id)
    return DeploymentDetail(
        **DeploymentPublic.model_validate(deployment, from_attributes=True).model_dump(),
        execution_counts=counts,
    )


@router.post("", response_model=DeploymentDetail, status_code=201)
async def create_deployment(
    body: DeploymentCreate, notices: NoticesDep, session: SessionDep, principal: WriteAccess
) -> DeploymentDetail:
    """Deploy a signed bundle to the listed devices; each gets its notice within seconds."""
    deployment = await service.create(session=session, request=body, actor=principal.actor)
    if notices is not None:
        notices.wake()  # committed: notify now, not at the next interval
    return await _detail(session, deployment.id)


@router.post("/{deployment_id}/cancel", response_model=DeploymentDetail)
async def cancel_deployment(
    deployment_id: uuid.UUID, notices: NoticesDep, session: SessionDep, principal: WriteAccess
) -> DeploymentDetail:
    """Cancel: devices that have not started installing stop; the others finish or roll back."""
    devices = await service.cancel(
        session=session, deployment_id=deployment_id, actor=principal.actor
    )
    if notices is not None:
        for device_id in devices:
            try:
                await notices.refresh_device(device_id)
            except Exception:  # the reconciler withdraws it; the cancel itself is committed
                log.warning("notice_withdraw_deferred", device_id=device_id)
    return await _detail(session, deployment_id)


@router.get("", response_model=DeploymentsPublic)
async def list_deployments(
    session: SessionDep,
    _: ReadAccess,
    page: PageDep,
    status: DeploymentStatus | None = None,
    bundle_id: uuid.UUID | None = None,
) -> DeploymentsPublic:
    """List deployments, newest first."""
    deployments, count = await service.list_deployments(
        session=session, page=page, status=status, bundle_id=bundle_id
    )
    return DeploymentsPublic(
        data=[DeploymentPublic.model_validate(d, from_attributes=True) for d in deployments],
        count=count,
    )


@router.get("/{deployment_id}", response_model=DeploymentDetail)
async def get_deployment(
    deployment_id: uuid.UUID, session: SessionDep, _: ReadAccess
) -> DeploymentDetail:
    """One deployment with its execution counts by state."""
    return await _detail(session, deployment_id)


@router.get("/{deployment_id}/executions", response_model=ExecutionsPublic)
async def list_executions(
    deployment_id: uuid.UUID,
    session: SessionDep,
    _: ReadAccess,
    page: PageDep,
    state: ExecutionState | None = None,
) -> ExecutionsPublic:
    """Per-device executions of a deployment."""
    executions, count = await service.list_executions(
        session=session, deployment_id=deployment_id, page=page, state=state
    )
    return ExecutionsPublic(
        data=[ExecutionPublic.model_validate(e, from_attributes=True) for e in executions],
        count=count,
    )

"""Deployment endpoints (read side; creation arrives with the rollout controller)."""

import uuid

from fastapi import APIRouter

from kernex_backend.core.db import SessionDep
from kernex_backend.core.pagination import PageDep
from kernex_backend.core.security import ReadAccess
from kernex_backend.deployments import service
from kernex_backend.deployments.models import DeploymentStatus, ExecutionState
from kernex_backend.deployments.schemas import (
    DeploymentDetail,
    DeploymentPublic,
    DeploymentsPublic,
    ExecutionPublic,
    ExecutionsPublic,
)

router = APIRouter(prefix="/deployments", tags=["deployments"])


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
    deployment = await service.get(session=session, deployment_id=deployment_id)
    counts = await service.execution_counts(session=session, deployment_id=deployment_id)
    return DeploymentDetail(
        **DeploymentPublic.model_validate(deployment, from_attributes=True).model_dump(),
        execution_counts=counts,
    )


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

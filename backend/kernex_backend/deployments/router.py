"""Deployment endpoints: preview and start a rollout, follow it (also as Server-Sent Events),
and control it: pause, resume, approve the next wave, retry failed devices, cancel."""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException
from fastapi.responses import StreamingResponse

from kernex_backend.bundles.upload import TrustedReleaseKeys
from kernex_backend.core.access import ReadAccess, WriteAccess
from kernex_backend.core.pagination import PageDep
from kernex_backend.core.runtime import RuntimeDep, SessionDep, component, optional_component
from kernex_backend.deployments import actions, events, service
from kernex_backend.deployments.models import DeploymentStatus, ExecutionState
from kernex_backend.deployments.notices import NoticeService
from kernex_backend.deployments.rollout import RolloutController
from kernex_backend.deployments.schemas import (
    ApproveRequest,
    DeploymentCreate,
    DeploymentDetail,
    DeploymentListed,
    DeploymentPreview,
    DeploymentPublic,
    DeploymentsPublic,
    ExecutionPublic,
    ExecutionsPublic,
    RetryRequest,
)

# The notice service of this process: None where the MQTT bridge does not run (the others'
# notifiers find the new work within their interval).
NoticesDep = Annotated[NoticeService | None, Depends(optional_component(NoticeService))]
ControllerDep = Annotated[RolloutController, Depends(component(RolloutController))]
ReleaseKeysDep = Annotated[TrustedReleaseKeys, Depends(component(TrustedReleaseKeys))]

router = APIRouter(prefix="/deployments", tags=["deployments"])

_Responses = dict[int | str, dict[str, Any]]
_NOT_FOUND: _Responses = {404: {"description": "No deployment has that id"}}
_CONFLICT: _Responses = {409: {"description": "The deployment's state does not allow this"}}


@router.post(
    "",
    response_model=DeploymentDetail,
    status_code=201,
    responses={
        404: {"description": "The bundle (or the rollback bundle) does not exist"},
        409: {
            "description": "Devices are busy with another deployment (not superseded), or "
            "the bundle is not deployable"
        },
    },
)
async def create_deployment(
    body: DeploymentCreate,
    notices: NoticesDep,
    controller: ControllerDep,
    keys: ReleaseKeysDep,
    session: SessionDep,
    principal: WriteAccess,
) -> DeploymentDetail:
    """Deploy a signed bundle to explicit devices or a selector under a rollout policy; the
    first wave's devices get their notices within seconds."""
    deployment = await actions.create(
        session=session,
        request=body,
        actor=principal.actor,
        release_keys=keys.keys,
        notices=notices,
        controller=controller,
    )
    return await service.detail(session=session, deployment_id=deployment.id)


@router.post(
    "/preview",
    response_model=DeploymentPreview,
    responses={
        404: {"description": "The bundle does not exist"},
        409: {"description": "The bundle is not deployable"},
    },
)
async def preview_deployment(
    body: DeploymentCreate, session: SessionDep, _: ReadAccess
) -> DeploymentPreview:
    """What POST /deployments would do with this body: devices, waves, who is left out and why."""
    return await service.preview(session=session, request=body)


@router.api_route("/preview", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def preview_other_methods() -> None:
    """Without this, GET /deployments/preview would be read as a deployment id ("preview")."""
    raise HTTPException(status_code=405)  # the handler names the allowed methods


@router.post(
    "/{deployment_id}/cancel", response_model=DeploymentDetail, responses=_NOT_FOUND | _CONFLICT
)
async def cancel_deployment(
    deployment_id: uuid.UUID, notices: NoticesDep, session: SessionDep, principal: WriteAccess
) -> DeploymentDetail:
    """Cancel (again: no change): devices that have not started installing stop; the others
    finish or roll back. A completed or aborted deployment answers 409."""
    await actions.cancel(
        session=session, deployment_id=deployment_id, actor=principal.actor, notices=notices
    )
    return await service.detail(session=session, deployment_id=deployment_id)


@router.post(
    "/{deployment_id}/pause", response_model=DeploymentDetail, responses=_NOT_FOUND | _CONFLICT
)
async def pause_deployment(
    deployment_id: uuid.UUID, session: SessionDep, principal: WriteAccess
) -> DeploymentDetail:
    """Notify no further device (again: no change); devices already working finish."""
    await service.pause(session=session, deployment_id=deployment_id, actor=principal.actor)
    return await service.detail(session=session, deployment_id=deployment_id)


@router.post(
    "/{deployment_id}/resume", response_model=DeploymentDetail, responses=_NOT_FOUND | _CONFLICT
)
async def resume_deployment(
    deployment_id: uuid.UUID,
    controller: ControllerDep,
    session: SessionDep,
    principal: WriteAccess,
) -> DeploymentDetail:
    """Continue a paused deployment (a running one: no change)."""
    await actions.resume(
        session=session, deployment_id=deployment_id, actor=principal.actor, controller=controller
    )
    return await service.detail(session=session, deployment_id=deployment_id)


@router.post(
    "/{deployment_id}/approve", response_model=DeploymentDetail, responses=_NOT_FOUND | _CONFLICT
)
async def approve_wave(
    deployment_id: uuid.UUID,
    controller: ControllerDep,
    session: SessionDep,
    principal: WriteAccess,
    body: ApproveRequest | None = None,
) -> DeploymentDetail:
    """Approve the next wave (it starts once the current one met its threshold and soaked);
    with `override_threshold` it starts even though the current wave fell short."""
    await actions.approve(
        session=session,
        deployment_id=deployment_id,
        actor=principal.actor,
        override_threshold=body.override_threshold if body else False,
        controller=controller,
    )
    return await service.detail(session=session, deployment_id=deployment_id)


@router.post(
    "/{deployment_id}/retry", response_model=DeploymentDetail, responses=_NOT_FOUND | _CONFLICT
)
async def retry_failed(
    deployment_id: uuid.UUID,
    controller: ControllerDep,
    session: SessionDep,
    principal: WriteAccess,
    body: RetryRequest | None = None,
) -> DeploymentDetail:
    """Notify the failed devices again now (failed, timed out and rolled back by default)."""
    await actions.retry(
        session=session,
        deployment_id=deployment_id,
        actor=principal.actor,
        states=(body or RetryRequest()).states,
        controller=controller,
    )
    return await service.detail(session=session, deployment_id=deployment_id)


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
    outcome = await service.outcomes(session=session, deployment_ids=[d.id for d in deployments])
    return DeploymentsPublic(
        data=[
            DeploymentListed(
                **DeploymentPublic.model_validate(d, from_attributes=True).model_dump(),
                outcome=outcome[d.id],
            )
            for d in deployments
        ],
        count=count,
    )


@router.get("/{deployment_id}", response_model=DeploymentDetail, responses=_NOT_FOUND)
async def get_deployment(
    deployment_id: uuid.UUID, session: SessionDep, _: ReadAccess
) -> DeploymentDetail:
    """One deployment: counts per state and per wave, the current wave, why it waits, and an
    estimated finish."""
    return await service.detail(session=session, deployment_id=deployment_id)


@router.get(
    "/{deployment_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
        **_NOT_FOUND,
    },
)
async def deployment_events(
    deployment_id: uuid.UUID,
    runtime: RuntimeDep,
    session: SessionDep,
    _: ReadAccess,
    # The id of the last event received: a number (422 otherwise, as for any invalid input).
    last_event_id: Annotated[str | None, Header(pattern=r"^[0-9]{1,18}$")] = None,
) -> StreamingResponse:
    """The deployment's changes as Server-Sent Events (created, admitted, wave_started,
    progress, paused, aborted, completed, ...); send `Last-Event-ID` to resume. The stream
    ends once the deployment is finished."""
    await service.get(session=session, deployment_id=deployment_id)
    after = int(last_event_id) if last_event_id else 0
    return StreamingResponse(
        events.stream(runtime.sessionmaker, deployment_id, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/{deployment_id}/executions", response_model=ExecutionsPublic, responses=_NOT_FOUND)
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

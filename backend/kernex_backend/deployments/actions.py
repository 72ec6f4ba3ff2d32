"""What an operator does to deployments, whichever way they ask (REST API or dashboard): the
service change, then the follow-up this process can do at once (withdraw notices, let the rollout
controller admit the next devices) instead of waiting for the next tick."""

import uuid
from collections.abc import Sequence

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.deployments import service
from kernex_backend.deployments.models import Deployment, ExecutionState
from kernex_backend.deployments.notices import NoticeService
from kernex_backend.deployments.rollout import RolloutController
from kernex_backend.deployments.schemas import DeploymentCreate

log = structlog.get_logger(__name__)


async def withdraw(notices: NoticeService | None, devices: list[str]) -> None:
    """Clear or replace these devices' notices now (the reconciler does it later otherwise)."""
    if notices is None or not devices:
        return
    try:
        await notices.refresh_devices(devices)
    except Exception:  # the reconciler withdraws them; the change itself is committed
        log.warning("notice_withdraw_deferred", devices=len(devices))


async def create(
    *,
    session: AsyncSession,
    request: DeploymentCreate,
    actor: str,
    release_keys: dict[str, Ed25519PublicKey],
    notices: NoticeService | None,
    controller: RolloutController,
) -> Deployment:
    """Create and admit the first wave now."""
    deployment, superseded = await service.create(
        session=session, request=request, actor=actor, release_keys=release_keys
    )
    await withdraw(notices, superseded)
    await controller.step(deployment.id)
    return deployment


async def cancel(
    *, session: AsyncSession, deployment_id: uuid.UUID, actor: str, notices: NoticeService | None
) -> None:
    """Cancel and withdraw the notices of devices that had not started."""
    devices = await service.cancel(session=session, deployment_id=deployment_id, actor=actor)
    await withdraw(notices, devices)


async def resume(
    *,
    session: AsyncSession,
    deployment_id: uuid.UUID,
    actor: str,
    controller: RolloutController,
) -> None:
    """Resume and admit what is due now."""
    await service.resume(session=session, deployment_id=deployment_id, actor=actor)
    await controller.step(deployment_id)


async def approve(
    *,
    session: AsyncSession,
    deployment_id: uuid.UUID,
    actor: str,
    override_threshold: bool,
    controller: RolloutController,
) -> None:
    """Approve the next wave and start it if it may start."""
    await service.approve(
        session=session,
        deployment_id=deployment_id,
        actor=actor,
        override_threshold=override_threshold,
    )
    await controller.step(deployment_id)


async def retry(
    *,
    session: AsyncSession,
    deployment_id: uuid.UUID,
    actor: str,
    states: Sequence[ExecutionState],
    controller: RolloutController,
) -> None:
    """Queue the failed devices again and notify them now."""
    await service.retry(session=session, deployment_id=deployment_id, actor=actor, states=states)
    await controller.step(deployment_id)

"""Deployments: create (and preview), follow, and the operator's controls.

Every control locks the deployment row, as the rollout controller does, so an operator's pause
and a controller step never interleave; each is idempotent where the issue of repeating it is
harmless (pause, resume, cancel) and audited.
"""

import datetime as dt
import random
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.audit import service as audit
from kernex_backend.bundles.models import Bundle
from kernex_backend.bundles.service import BundleNotFound
from kernex_backend.core.db import utc_now
from kernex_backend.core.errors import Conflict, InvalidInput, NotFound
from kernex_backend.core.pagination import Page, paginate
from kernex_backend.deployments import events, rollout, targets
from kernex_backend.deployments.models import (
    UNFINISHED_STATES,
    Deployment,
    DeploymentExecution,
    DeploymentStatus,
    ExecutionState,
)
from kernex_backend.deployments.notices import signed_release
from kernex_backend.deployments.schemas import (
    FAILURE_STATES,
    MAX_SAMPLE,
    DeploymentCreate,
    DeploymentDetail,
    DeploymentPreview,
    DeploymentPublic,
    Exclusion,
    Outcome,
    RollbackPlan,
    WavePreview,
    WaveProgress,
    outcome_of,
)
from kernex_backend.deployments.strategy import stored, wave_ends
from kernex_protocol.manifest import (
    ManifestInvalid,
    SignatureInvalid,
    SignedRollback,
    parse_semver,
    verify_rollback,
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


async def detail(*, session: AsyncSession, deployment_id: uuid.UUID) -> DeploymentDetail:
    """The deployment with counts per state and per wave, the rollback deployment started for
    it, and a rough finish estimate (from the pace so far)."""
    deployment = await get(session=session, deployment_id=deployment_id)
    await session.refresh(deployment)  # the controller may have changed it in its own session
    counts = await rollout.tally(session, deployment_id)
    total = counts.total
    waves = [
        WaveProgress(
            wave=wave,
            devices=sum(by_state.values()),
            counts={s: by_state.get(s, 0) for s in ExecutionState},
            success_percent=round(counts.success_percent(wave), 2),
        )
        for wave, by_state in sorted(counts.by_wave.items())
    ]
    child = (
        await session.exec(
            select(Deployment.id).where(col(Deployment.rollback_of) == deployment_id)
        )
    ).first()
    return DeploymentDetail(
        **DeploymentPublic.model_validate(deployment, from_attributes=True).model_dump(),
        execution_counts={s: total.get(s, 0) for s in ExecutionState},
        waves=waves,
        estimated_finish_at=_estimate(deployment, total),
        rollback_deployment_id=child,
    )


def _estimate(deployment: Deployment, total: dict[ExecutionState, int]) -> dt.datetime | None:
    if deployment.status.finished or deployment.started_at is None:
        return None
    done = sum(n for s, n in total.items() if s.terminal)
    left = sum(n for s, n in total.items() if not s.terminal)
    elapsed = (utc_now() - deployment.started_at).total_seconds()
    if done == 0 or elapsed <= 0:
        return None
    return utc_now() + dt.timedelta(seconds=left * elapsed / done)


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


async def outcomes(
    *, session: AsyncSession, deployment_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Outcome]:
    """Each deployment's outcome, for a list: two index probes per deployment (whether any
    device succeeded, whether any failed) instead of counting every execution."""
    if not deployment_ids:
        return {}
    execution = DeploymentExecution
    mine = col(execution.deployment_id) == col(Deployment.id)
    succeeded = sa.exists().where(mine, col(execution.state) == ExecutionState.SUCCEEDED)
    failed = sa.exists().where(mine, col(execution.state).in_(FAILURE_STATES))
    rows = await session.exec(
        sa.select(  # type: ignore[call-overload]
            col(Deployment.id), succeeded.label("succeeded"), failed.label("failed")
        ).where(col(Deployment.id).in_(deployment_ids))
    )
    return {row.id: outcome_of(succeeded=row.succeeded, failed=row.failed) for row in rows.all()}


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


class RollbackInvalid(InvalidInput):
    """The rollback plan would not be accepted by the devices."""

    slug = "rollback-invalid"
    title = "Rollback plan is not usable"


async def _deployable_bundle(session: AsyncSession, bundle_id: uuid.UUID) -> Bundle:
    bundle = await session.get(Bundle, bundle_id)
    if bundle is None:
        raise BundleNotFound(f"no bundle with id {bundle_id}")
    if bundle.signature is None or bundle.manifest_created_at is None:
        raise BundleNotDeployable(
            "the bundle has no stored release signature (unsigned, or uploaded before "
            "signatures were kept): devices would refuse it; upload it signed"
        )
    return bundle


async def _check_rollback(
    session: AsyncSession,
    plan: RollbackPlan,
    bundle: Bundle,
    release_keys: dict[str, Ed25519PublicKey],
) -> SignedRollback:
    """The plan's approval, if devices running `bundle` would accept it for its bundle."""
    previous = await _deployable_bundle(session, plan.bundle_id)
    if previous.device_type != bundle.device_type or previous.name != bundle.name:
        raise RollbackInvalid(
            f"the rollback bundle is {previous.name} for {previous.device_type}; this "
            f"deployment installs {bundle.name} for {bundle.device_type}",
            field="rollback.bundle_id",
        )
    if parse_semver(previous.version) >= parse_semver(bundle.version):
        raise RollbackInvalid(
            f"the rollback bundle's version {previous.version} is not older than {bundle.version}",
            field="rollback.bundle_id",
        )
    try:
        approval = SignedRollback.from_document(plan.approval)
    except ManifestInvalid as exc:
        raise RollbackInvalid(f"rollback.approval: {exc}", field="rollback.approval") from None
    if release_keys:
        try:
            verify_rollback(approval, release_keys)
        except SignatureInvalid as exc:
            raise RollbackInvalid(f"rollback.approval: {exc}", field="rollback.approval") from None
    if not approval.approval.permits(
        signed_release(previous).manifest, installed_version=bundle.version
    ):
        raise RollbackInvalid(
            "the approval is not for this rollback: it must name the rollback bundle's "
            f"artefact and from_version {bundle.version}",
            field="rollback.approval",
        )
    if approval.approval.expired(utc_now()):
        raise RollbackInvalid("the rollback approval has expired", field="rollback.approval")
    return approval


async def _select(
    session: AsyncSession, request: DeploymentCreate, bundle: Bundle, now: dt.datetime
) -> targets.Selection:
    if request.device_ids is not None:
        return await targets.explicit(session, request.device_ids, device_type=bundle.device_type)
    assert request.selector is not None
    return await targets.selected(
        session, request.selector, device_type=bundle.device_type, now=now
    )


def _target(request: DeploymentCreate, bundle: Bundle, devices: list[str]) -> dict[str, Any]:
    if request.device_ids is not None:
        return {"device_ids": sorted(devices)}
    assert request.selector is not None
    return {
        "selector": request.selector.model_dump(mode="json", exclude_defaults=True),
        "device_type": bundle.device_type,
        "dynamic": request.dynamic,
        "max_devices": request.max_devices,
        "selected": len(devices),
    }


def _capped(selection: targets.Selection, request: DeploymentCreate) -> list[str]:
    devices = selection.devices
    if request.max_devices is not None and len(devices) > request.max_devices:
        # Which ones is decided by the random draw, not by name.
        devices = random.sample(devices, request.max_devices)
    return devices


async def preview(*, session: AsyncSession, request: DeploymentCreate) -> DeploymentPreview:
    """What `create` would do with this request, touching nothing."""
    bundle = await _deployable_bundle(session, request.bundle_id)
    selection = await _select(session, request, bundle, utc_now())
    devices = _capped(selection, request)
    busy = [d for d in devices if d in selection.busy]
    excluded = [
        Exclusion(reason=reason, count=len(ids), devices=ids[:MAX_SAMPLE])
        for reason, ids in sorted(selection.excluded.items())
    ]
    if busy and not request.supersede:
        excluded.append(
            Exclusion(reason="busy", count=len(busy), devices=sorted(busy)[:MAX_SAMPLE])
        )
        devices = [d for d in devices if d not in selection.busy]
    ends = wave_ends(list(request.strategy.waves), len(devices))
    waves = [
        WavePreview(wave=i, size=end - (ends[i - 1] if i else 0), cumulative=end)
        for i, end in enumerate(ends)
    ]
    return DeploymentPreview(
        devices=len(devices),
        waves=waves,
        excluded=excluded,
        superseded=len(busy) if request.supersede else 0,
    )


async def create(
    *,
    session: AsyncSession,
    request: DeploymentCreate,
    actor: str,
    release_keys: dict[str, Ed25519PublicKey] | None = None,
    rng: random.Random | None = None,
) -> tuple[Deployment, list[str]]:
    """Create a deployment: its devices drawn in random order into waves, all QUEUED for the
    rollout controller. Returns it and the devices it superseded another deployment for (their
    old notices must be refreshed)."""
    bundle = await _deployable_bundle(session, request.bundle_id)
    approval = None
    if request.rollback is not None:
        approval = await _check_rollback(session, request.rollback, bundle, release_keys or {})
    now = utc_now()
    selection = await _select(session, request, bundle, now)
    devices = _capped(selection, request)
    busy = {d: selection.busy[d] for d in devices if d in selection.busy}
    if busy and not request.supersede:
        blocking = sorted({str(b) for b in busy.values()})
        raise DevicesBusy(
            f"{len(busy)} device(s) take part in an unfinished deployment; cancel it first, "
            "or create this one with supersede: true",
            devices=sorted(busy)[:MAX_SAMPLE],
            blocking_deployments=blocking[:MAX_SAMPLE],
        )
    if not devices:
        raise InvalidInput("no device matches: nothing to deploy", field="selector")
    strategy = request.strategy
    scheduled = strategy.schedule.start_at is not None and strategy.schedule.start_at > now
    deployment = Deployment(
        name=request.name,
        bundle_id=bundle.id,
        target=_target(request, bundle, devices),
        strategy=stored(strategy),
        abort_criteria={"rules": [stored(rule) for rule in request.abort_criteria]},
        status=DeploymentStatus.SCHEDULED if scheduled else DeploymentStatus.RUNNING,
        created_by=actor,
        started_at=None if scheduled else now,
        rollback_bundle_id=request.rollback.bundle_id if request.rollback else None,
        rollback_approval=approval.to_document() if approval else None,
    )
    session.add(deployment)
    await session.flush()
    superseded = await _supersede(session, busy, deployment.id, now) if busy else []
    order, waves = rollout.draw(devices, strategy, rng or random.Random())  # noqa: S311
    await rollout.insert_executions(session, deployment.id, order, waves=waves)
    events.record(session, deployment.id, "created", devices=len(order), superseded=len(superseded))
    audit.record(
        session,
        actor=actor,
        action="deployment.create",
        object_type="deployment",
        object_id=str(deployment.id),
        details={
            "bundle_id": str(bundle.id),
            "version": bundle.version,
            "devices": len(order),
            "superseded": len(superseded),
        },
    )
    await session.commit()
    await session.refresh(deployment)
    return deployment, superseded


async def _supersede(
    session: AsyncSession,
    busy: dict[str, uuid.UUID],
    replacement: uuid.UUID,
    now: dt.datetime,
) -> list[str]:
    """Cancel the devices' executions in the deployments this one replaces for them."""
    result = await session.exec(
        sa.update(DeploymentExecution)
        .where(
            col(DeploymentExecution.device_id).in_(list(busy)),
            col(DeploymentExecution.deployment_id).in_(set(busy.values())),
            col(DeploymentExecution.state).in_(UNFINISHED_STATES),
        )
        .values(
            state=ExecutionState.CANCELED,
            error_code="superseded",
            error_detail=f"replaced by deployment {replacement}",
            finished_at=now,
            updated_at=now,
        )
        .returning(col(DeploymentExecution.device_id), col(DeploymentExecution.deployment_id))
    )
    rows = result.all()
    for old in sorted({deployment_id for _, deployment_id in rows}):
        events.record(
            session,
            old,
            "superseded",
            by=str(replacement),
            devices=sum(1 for _, d in rows if d == old),
        )
        await rollout.settle(session, old, now=now)
    return sorted(device for device, _ in rows)


async def _locked(session: AsyncSession, deployment_id: uuid.UUID) -> Deployment:
    deployment = (
        await session.exec(
            select(Deployment).where(col(Deployment.id) == deployment_id).with_for_update()
        )
    ).first()
    if deployment is None:
        raise DeploymentNotFound(f"no deployment with id {deployment_id}")
    return deployment


def _audit(
    session: AsyncSession, actor: str, action: str, deployment_id: uuid.UUID, **details: Any
) -> None:
    audit.record(
        session,
        actor=actor,
        action=action,
        object_type="deployment",
        object_id=str(deployment_id),
        details=details or None,
    )


async def cancel(*, session: AsyncSession, deployment_id: uuid.UUID, actor: str) -> list[str]:
    """Cancel a deployment (again: nothing happens); returns the devices whose notices must
    be withdrawn. A completed or aborted deployment cannot be canceled."""
    deployment = await _locked(session, deployment_id)
    if deployment.status == DeploymentStatus.CANCELED:
        await session.commit()
        return []
    if deployment.status.finished:
        raise Conflict(f"the deployment is already {deployment.status.value}")
    now = utc_now()
    devices = await rollout.end_executions(
        session,
        deployment_id,
        rollout.WITHDRAWABLE,
        state=ExecutionState.CANCELED,
        code="canceled_by_operator",
        detail=None,
        now=now,
    )
    deployment.status = DeploymentStatus.CANCELED
    deployment.finished_at = now
    deployment.updated_at = now
    deployment.waiting_for = None
    session.add(deployment)
    events.record(session, deployment_id, "canceled", by=actor, withdrawn=len(devices))
    _audit(session, actor, "deployment.cancel", deployment_id, canceled_executions=len(devices))
    await session.commit()
    return devices


async def pause(*, session: AsyncSession, deployment_id: uuid.UUID, actor: str) -> None:
    """Stop notifying new devices; devices already working finish. Pausing again is a no-op."""
    deployment = await _locked(session, deployment_id)
    if deployment.status == DeploymentStatus.PAUSED:
        await session.commit()
        return
    if deployment.status.finished:
        raise Conflict(f"the deployment is already {deployment.status.value}")
    deployment.status = DeploymentStatus.PAUSED
    deployment.pause_reason = f"paused by {actor}"[:256]
    deployment.waiting_for = None
    deployment.updated_at = utc_now()
    session.add(deployment)
    events.record(session, deployment_id, "paused", reason=deployment.pause_reason)
    _audit(session, actor, "deployment.pause", deployment_id)
    await session.commit()


async def resume(*, session: AsyncSession, deployment_id: uuid.UUID, actor: str) -> None:
    """Continue a paused deployment (resuming a running one is a no-op). Pause rules fire
    again only on results that arrive after this."""
    deployment = await _locked(session, deployment_id)
    if deployment.status in (DeploymentStatus.RUNNING, DeploymentStatus.SCHEDULED):
        await session.commit()
        return
    if deployment.status.finished:
        raise Conflict(f"the deployment is already {deployment.status.value}")
    counts = await rollout.tally(session, deployment_id)
    deployment.status = (
        DeploymentStatus.RUNNING if deployment.started_at else DeploymentStatus.SCHEDULED
    )
    deployment.pause_reason = None
    deployment.resumed_at_finished = counts.finished
    deployment.updated_at = utc_now()
    session.add(deployment)
    events.record(session, deployment_id, "resumed", by=actor)
    _audit(session, actor, "deployment.resume", deployment_id)
    await session.commit()


async def approve(
    *, session: AsyncSession, deployment_id: uuid.UUID, actor: str, override_threshold: bool
) -> int:
    """Approve the wave after the current one; returns its number."""
    deployment = await _locked(session, deployment_id)
    if deployment.status.finished:
        raise Conflict(f"the deployment is already {deployment.status.value}")
    strategy = rollout.strategy_of(deployment)
    wave = deployment.current_wave + 1
    if wave >= len(strategy.waves):
        raise Conflict("the deployment is in its last wave: there is no next wave to approve")
    deployment.approved_wave = max(deployment.approved_wave, wave)
    if override_threshold:
        deployment.forced_wave = max(deployment.forced_wave, wave)
        if (
            deployment.status == DeploymentStatus.PAUSED
            and deployment.pause_reason
            and (deployment.pause_reason.startswith(f"wave {wave - 1} ended"))
        ):
            deployment.status = DeploymentStatus.RUNNING
            deployment.pause_reason = None
    deployment.updated_at = utc_now()
    session.add(deployment)
    events.record(
        session,
        deployment_id,
        "approved",
        wave=wave,
        by=actor,
        override_threshold=override_threshold,
    )
    _audit(
        session, actor, "deployment.approve", deployment_id, wave=wave, override=override_threshold
    )
    await session.commit()
    return wave


async def retry(
    *,
    session: AsyncSession,
    deployment_id: uuid.UUID,
    actor: str,
    states: Sequence[ExecutionState],
) -> int:
    """Queue failed devices for another attempt now; a completed deployment runs again."""
    deployment = await _locked(session, deployment_id)
    if deployment.status in (DeploymentStatus.CANCELED, DeploymentStatus.ABORTED):
        raise Conflict(f"the deployment is {deployment.status.value}: create a new one")
    now = utc_now()
    result = await session.exec(
        sa.update(DeploymentExecution)
        .where(
            col(DeploymentExecution.deployment_id) == deployment_id,
            col(DeploymentExecution.state).in_(states),
        )
        .values(state=ExecutionState.QUEUED, not_before=None, finished_at=None, updated_at=now)
        .returning(col(DeploymentExecution.device_id))
    )
    count = len(result.all())
    if count and deployment.status == DeploymentStatus.COMPLETED:
        deployment.status = DeploymentStatus.RUNNING
        deployment.finished_at = None
    deployment.updated_at = now
    session.add(deployment)
    events.record(session, deployment_id, "retried", devices=count, by=actor)
    _audit(session, actor, "deployment.retry", deployment_id, devices=count)
    await session.commit()
    return count

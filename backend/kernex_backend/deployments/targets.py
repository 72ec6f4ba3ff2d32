"""Which devices a deployment reaches, and which it leaves out and why.

Explicit device IDs are taken as the operator's word: an unknown, decommissioned or
wrong-type device among them is an error (422). A selector is narrowed instead: devices of
another type, decommissioned ones and (by default) those not seen for a week are left out and
counted by reason. Either way a device busy with another unfinished deployment is refused (409
naming it) unless the request supersedes that deployment for it. Preview and create use the
same functions, so a preview's counts are what the deployment then does.
"""

import datetime as dt
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.core.errors import InvalidInput
from kernex_backend.deployments.models import (
    UNFINISHED_STATES,
    Deployment,
    DeploymentExecution,
    DeploymentStatus,
)
from kernex_backend.deployments.schemas import MAX_SAMPLE, Selector
from kernex_backend.devices.models import Device, DeviceStatus

OPEN_STATUSES = (DeploymentStatus.SCHEDULED, DeploymentStatus.RUNNING, DeploymentStatus.PAUSED)


@dataclass
class Selection:
    """The devices a deployment would reach, those left out by reason, and the busy ones."""

    devices: list[str]
    excluded: dict[str, list[str]] = field(default_factory=dict)
    # device -> the unfinished deployment it is busy with
    busy: dict[str, uuid.UUID] = field(default_factory=dict)


def _offline_since(selector: Selector, now: dt.datetime) -> dt.datetime | None:
    if selector.exclude_offline_for_s is None:
        return None
    return now - dt.timedelta(seconds=selector.exclude_offline_for_s)


def _id_array(device_ids: list[str]) -> Any:
    """Device ids as one array parameter: `IN` over 10,000 ids rendered and sent 10,000
    parameters, and PostgreSQL planned a statement of that size, for every deployment."""
    return sa.bindparam("device_ids", device_ids, type_=pg.ARRAY(sa.String))


async def busy_with(
    session: AsyncSession, device_ids: list[str], *, besides: uuid.UUID | None = None
) -> dict[str, uuid.UUID]:
    """Which of `device_ids` take part in an unfinished deployment (other than `besides`)."""
    if not device_ids:
        return {}
    query = (
        select(DeploymentExecution.device_id, DeploymentExecution.deployment_id)
        .join(Deployment, col(Deployment.id) == col(DeploymentExecution.deployment_id))
        .where(
            col(DeploymentExecution.device_id) == sa.any_(_id_array(device_ids)),
            col(DeploymentExecution.state).in_(UNFINISHED_STATES),
            col(Deployment.status).in_(OPEN_STATUSES),
        )
    )
    if besides is not None:
        query = query.where(col(DeploymentExecution.deployment_id) != besides)
    return dict((await session.exec(query)).all())


async def explicit(session: AsyncSession, device_ids: list[str], *, device_type: str) -> Selection:
    """Explicit devices: every one must exist, be in service and be of the bundle's type."""
    ids = sorted(set(device_ids))
    # Only the columns checked: loading 10,000 whole devices took half a second.
    devices = {
        device_id: (status, kind)
        for device_id, status, kind in await session.exec(
            select(Device.id, Device.status, Device.device_type).where(
                col(Device.id) == sa.any_(_id_array(ids))
            )
        )
    }
    unknown = [i for i in ids if i not in devices]
    if unknown:
        raise InvalidInput(
            f"{len(unknown)} unknown device(s)", unknown_devices=unknown[:MAX_SAMPLE]
        )
    retired = [i for i, (status, _) in devices.items() if status == DeviceStatus.DECOMMISSIONED]
    if retired:
        raise InvalidInput(
            "decommissioned devices cannot be deployed to", devices=retired[:MAX_SAMPLE]
        )
    wrong_type = [i for i, (_, kind) in devices.items() if kind != device_type]
    if wrong_type:
        raise InvalidInput(
            f"the bundle is for device type {device_type}", devices=wrong_type[:MAX_SAMPLE]
        )
    return Selection(ids, busy=await busy_with(session, ids))


async def selected(
    session: AsyncSession,
    selector: Selector,
    *,
    device_type: str,
    now: dt.datetime,
    besides: uuid.UUID | None = None,
    exclude: set[str] | None = None,
) -> Selection:
    """The devices a selector names, narrowed, with the left-out ones by reason. `besides` and
    `exclude` serve a running dynamic deployment: its own devices are neither busy nor new."""
    if selector.device_type is not None and selector.device_type != device_type:
        raise InvalidInput(
            f"the selector names device type {selector.device_type}, the bundle is for "
            f"{device_type}",
            field="selector.device_type",
        )
    named: list[Any] = []
    if selector.tags:
        named.append(col(Device.tags).contains(selector.tags))
    rows = (
        await session.exec(
            select(Device.id, Device.device_type, Device.status, Device.last_seen_at)
            .where(*named)
            .order_by(col(Device.id))
        )
    ).all()
    offline_since = _offline_since(selector, now)
    excluded: dict[str, list[str]] = defaultdict(list)
    devices: list[str] = []
    for device_id, kind, status, last_seen in rows:
        if exclude and device_id in exclude:
            continue
        if kind != device_type:
            excluded["wrong_type"].append(device_id)
        elif status == DeviceStatus.DECOMMISSIONED:
            excluded["decommissioned"].append(device_id)
        elif offline_since is not None and last_seen is not None and last_seen < offline_since:
            excluded["offline"].append(device_id)
        else:
            devices.append(device_id)
    busy = await busy_with(session, devices, besides=besides)
    return Selection(devices, dict(excluded), busy)


def without_busy(selection: Selection) -> Selection:
    """The selection with busy devices moved to the "busy" exclusion (a dynamic deployment
    does not take devices from another one)."""
    free = [d for d in selection.devices if d not in selection.busy]
    excluded = dict(selection.excluded)
    if selection.busy:
        excluded["busy"] = sorted(selection.busy)
    return Selection(free, excluded, {})

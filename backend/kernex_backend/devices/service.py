"""Device registration, inventory queries and lifecycle."""

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.audit import service as audit
from kernex_backend.core.db import utc_now
from kernex_backend.core.errors import Conflict, NotFound
from kernex_backend.core.pagination import Page, paginate
from kernex_backend.devices.models import Device, DeviceStatus, PresenceEvent
from kernex_backend.devices.schemas import DeviceCreate, DeviceUpdate, PresenceEventPublic
from kernex_backend.webhooks import outbox
from kernex_backend.webhooks.models import EventType


class DeviceNotFound(NotFound):
    """No device has that ID."""

    slug = "device-not-found"
    title = "Device not found"


class DeviceAlreadyExists(Conflict):
    """A device with that ID is registered already."""

    slug = "device-exists"
    title = "Device already exists"


class DeviceDecommissioned(Conflict):
    """The device is retired and can no longer change."""

    slug = "device-decommissioned"
    title = "Device decommissioned"


@dataclass(frozen=True, slots=True)
class DeviceFilters:
    """Inventory filters; each one given must match."""

    status: DeviceStatus | None = None
    online: bool | None = None
    device_type: str | None = None
    version: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    search: str | None = None  # a substring of the ID or the name (the dashboard's search box)

    def conditions(self) -> list[Any]:
        """SQL conditions for these filters."""
        conditions: list[Any] = []
        if self.status is not None:
            conditions.append(col(Device.status) == self.status)
        if self.online is not None:
            conditions.append(col(Device.online).is_(self.online))
        if self.device_type is not None:
            conditions.append(col(Device.device_type) == self.device_type)
        if self.version is not None:
            conditions.append(col(Device.current_version) == self.version)
        if self.tags:
            conditions.append(col(Device.tags).contains(self.tags))  # jsonb @>, uses the GIN index
        if self.search:
            pattern = "%" + re.sub(r"([%_\\])", r"\\\1", self.search) + "%"
            conditions.append(
                or_(
                    col(Device.id).ilike(pattern, escape="\\"),
                    col(Device.name).ilike(pattern, escape="\\"),
                )
            )
        return conditions


async def register(*, session: AsyncSession, data: DeviceCreate, actor: str) -> Device:
    """Register a new device."""
    now = utc_now()
    device = Device(
        id=data.id,
        name=data.name,
        device_type=data.device_type,
        tags=data.tags,
        created_at=now,
        updated_at=now,
    )
    session.add(device)
    audit.record(
        session,
        actor=actor,
        action="device.register",
        object_type="device",
        object_id=device.id,
        details={"device_type": device.device_type, "name": device.name, "tags": device.tags},
    )
    outbox.add(
        session,
        EventType.DEVICE_REGISTERED,
        device.id,
        device_id=device.id,
        device_type=device.device_type,
    )
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise DeviceAlreadyExists(f"a device with ID {data.id!r} is already registered") from None
    return device


async def get(*, session: AsyncSession, device_id: str, for_update: bool = False) -> Device:
    """The device with `device_id`."""
    device = await session.get(Device, device_id, with_for_update=for_update)
    if device is None:
        raise DeviceNotFound(f"no device with ID {device_id!r}")
    return device


async def list_devices(
    *, session: AsyncSession, filters: DeviceFilters, page: Page
) -> tuple[list[Device], int]:
    """Devices matching `filters`, ordered by ID, and how many match in all."""
    conditions = filters.conditions()
    return await paginate(session, Device, page, where=conditions, order_by=[col(Device.id)])


async def presence_history(
    *, session: AsyncSession, device_id: str, limit: int
) -> list[PresenceEventPublic]:
    """The device's last `limit` presence changes, newest first."""
    rows = await session.exec(
        select(PresenceEvent)
        .where(col(PresenceEvent.device_id) == device_id)
        .order_by(col(PresenceEvent.at).desc(), col(PresenceEvent.id).desc())
        .limit(limit)
    )
    return [PresenceEventPublic.model_validate(e, from_attributes=True) for e in rows]


async def update(
    *, session: AsyncSession, device_id: str, data: DeviceUpdate, actor: str
) -> Device:
    """Change a device's name and/or tags."""
    device = await get(session=session, device_id=device_id, for_update=True)
    if device.status == DeviceStatus.DECOMMISSIONED:
        raise DeviceDecommissioned(f"device {device_id!r} is decommissioned and cannot be changed")
    changes = data.model_dump(exclude_unset=True)
    before = {name: getattr(device, name) for name in changes}
    if "name" in changes:
        device.name = data.name
    if "tags" in changes:
        device.tags = data.tags or {}  # an explicit null clears the tags
    device.updated_at = utc_now()
    session.add(device)
    audit.record(
        session,
        actor=actor,
        action="device.update",
        object_type="device",
        object_id=device.id,
        details={"before": before, "after": {name: getattr(device, name) for name in changes}},
    )
    await session.commit()
    return device


async def decommission(*, session: AsyncSession, device_id: str, actor: str) -> Device:
    """Retire a device for good."""
    device = await get(session=session, device_id=device_id, for_update=True)
    if device.status == DeviceStatus.DECOMMISSIONED:
        raise DeviceDecommissioned(f"device {device_id!r} is already decommissioned")
    device.status = DeviceStatus.DECOMMISSIONED
    device.online = False
    device.updated_at = utc_now()
    session.add(device)
    audit.record(
        session,
        actor=actor,
        action="device.decommission",
        object_type="device",
        object_id=device.id,
    )
    await session.commit()
    return device

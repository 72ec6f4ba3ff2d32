"""Device endpoints."""

import dataclasses
import datetime as dt
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, status
from sqlmodel import col, select

from kernex_backend.core.access import OptionalWriteAccess, ReadAccess, WriteAccess
from kernex_backend.core.db import utc_now
from kernex_backend.core.errors import InvalidInput
from kernex_backend.core.messaging import SessionEnder
from kernex_backend.core.pagination import PageDep
from kernex_backend.core.runtime import SessionDep, optional_component
from kernex_backend.core.text import TAG_KEY_PATTERN
from kernex_backend.devices import certificates, quarantine, service
from kernex_backend.devices.certificates import Pki
from kernex_backend.devices.models import Device, DeviceStatus
from kernex_backend.devices.schemas import (
    CertificatePublic,
    CertificateRequest,
    DeviceCreate,
    DevicePublic,
    DevicesPublic,
    DeviceUpdate,
    HeartbeatPublic,
    HeartbeatsPublic,
    PresenceHistoryPublic,
    QuarantinePublic,
    RevocationPublic,
    RevokeRequest,
)
from kernex_backend.telemetry.models import Heartbeat
from kernex_protocol.ids import DEVICE_ID_PATTERN

# The CA the backend issues and revokes with; None when none is configured (503 then).
PkiDep = Annotated[Pki | None, Depends(optional_component(Pki))]
SessionsDep = Annotated[SessionEnder | None, Depends(optional_component(SessionEnder))]

router = APIRouter(prefix="/devices", tags=["devices"])

DeviceIdPath = Annotated[
    str, Path(pattern=DEVICE_ID_PATTERN, description="1-64 characters: A-Z a-z 0-9 . _ -")
]


def _public(device: Device) -> DevicePublic:
    return DevicePublic.model_validate(device, from_attributes=True)


# key:value with the tag key rules (core/text.py); the value at most 128 characters.
TAG_FILTER_PATTERN = TAG_KEY_PATTERN.rstrip("$") + r":[^\x00-\x1f\x7f]{0,128}$"


def _parse_tags(raw: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition(":")
        if not sep or not re.fullmatch(TAG_FILTER_PATTERN, item):
            raise InvalidInput(f"tag filter {item[:80]!r} must look like key:value")
        tags[key] = value
    return tags


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DevicePublic)
async def register_device(
    body: DeviceCreate, session: SessionDep, principal: WriteAccess
) -> DevicePublic:
    """Register a device so it can be provisioned and targeted."""
    return _public(await service.register(session=session, data=body, actor=principal.actor))


@router.get("", response_model=DevicesPublic)
async def list_devices(
    session: SessionDep,
    _: ReadAccess,
    page: PageDep,
    status_: Annotated[DeviceStatus | None, Query(alias="status")] = None,
    online: bool | None = None,
    device_type: Annotated[str | None, Query(max_length=64)] = None,
    version: Annotated[str | None, Query(max_length=64)] = None,
    tag: Annotated[
        list[str],
        Query(
            max_length=16,
            description="key:value; repeat to require several (at most 16)",
            json_schema_extra={"items": {"type": "string", "pattern": TAG_FILTER_PATTERN}},
        ),
    ] = [],  # noqa: B006 - FastAPI copies defaults per request
) -> DevicesPublic:
    """List devices, filtered and paginated."""
    if len(tag) > 16:
        raise InvalidInput("at most 16 tag filters may be combined")
    filters = service.DeviceFilters(
        status=status_,
        online=online,
        device_type=device_type,
        version=version,
        tags=_parse_tags(tag),
    )
    devices, count = await service.list_devices(session=session, filters=filters, page=page)
    return DevicesPublic(data=[_public(d) for d in devices], count=count)


@router.get("/{device_id}", response_model=DevicePublic)
async def get_device(device_id: DeviceIdPath, session: SessionDep, _: ReadAccess) -> DevicePublic:
    """One device."""
    return _public(await service.get(session=session, device_id=device_id))


# How many of a device's newest heartbeats or presence changes one request returns.
RecentLimit = Annotated[int, Query(ge=1, le=500)]


@router.get("/{device_id}/heartbeats", response_model=HeartbeatsPublic)
async def list_heartbeats(
    device_id: DeviceIdPath,
    session: SessionDep,
    _: ReadAccess,
    limit: RecentLimit = 50,
) -> HeartbeatsPublic:
    """A device's recent heartbeats, newest first (the last `limit`, from the last 24 hours)."""
    await service.get(session=session, device_id=device_id)  # 404 for an unknown device
    since = utc_now() - dt.timedelta(hours=24)
    rows = await session.exec(
        select(Heartbeat)
        .where(col(Heartbeat.device_id) == device_id, col(Heartbeat.received_at) >= since)
        .order_by(col(Heartbeat.received_at).desc())
        .limit(limit)
    )
    data = [HeartbeatPublic.model_validate(h, from_attributes=True) for h in rows]
    return HeartbeatsPublic(data=data, count=len(data))


@router.get("/{device_id}/presence", response_model=PresenceHistoryPublic)
async def presence_history(
    device_id: DeviceIdPath,
    session: SessionDep,
    _: ReadAccess,
    limit: RecentLimit = 50,
) -> PresenceHistoryPublic:
    """A device's presence changes, newest first (the last `limit`, from the retention period:
    `KERNEX_TELEMETRY__PRESENCE_RETENTION_DAYS`)."""
    await service.get(session=session, device_id=device_id)  # 404 for an unknown device
    data = await service.presence_history(session=session, device_id=device_id, limit=limit)
    return PresenceHistoryPublic(data=data, count=len(data))


@router.patch("/{device_id}", response_model=DevicePublic)
async def update_device(
    device_id: DeviceIdPath, body: DeviceUpdate, session: SessionDep, principal: WriteAccess
) -> DevicePublic:
    """Rename a device or replace its tags."""
    return _public(
        await service.update(session=session, device_id=device_id, data=body, actor=principal.actor)
    )


@router.post("/{device_id}/decommission", response_model=DevicePublic)
async def decommission_device(
    device_id: DeviceIdPath, session: SessionDep, principal: WriteAccess
) -> DevicePublic:
    """Retire a device: it is no longer targeted and may no longer change."""
    return _public(
        await service.decommission(session=session, device_id=device_id, actor=principal.actor)
    )


@router.post(
    "/{device_id}/certificate",
    status_code=status.HTTP_201_CREATED,
    response_model=CertificatePublic,
    # The key is optional here: a device renews with a proof instead of a key.
    openapi_extra={"security": [{"HTTPBearer": []}, {}]},
)
async def issue_certificate(
    device_id: DeviceIdPath,
    body: CertificateRequest,
    pki_or_none: PkiDep,
    session: SessionDep,
    principal: OptionalWriteAccess,
) -> CertificatePublic:
    """Sign a device CSR. With a write-scoped API key this provisions a device (registering it if
    `device_type` is given); without one, the device renews itself by proving it holds its
    current certificate (`current_certificate` plus `proof`). The key never leaves the device."""
    pki = certificates.require(pki_or_none)
    issued = await certificates.issue(
        session=session,
        pki=pki,
        device_id=device_id,
        request=body,
        operator=principal.actor if principal else None,
    )
    return CertificatePublic.model_validate(dataclasses.asdict(issued))


@router.post("/{device_id}/revoke", response_model=RevocationPublic)
async def revoke_certificate(
    device_id: DeviceIdPath,
    pki_or_none: PkiDep,
    sessions: SessionsDep,
    session: SessionDep,
    principal: WriteAccess,
    body: RevokeRequest | None = None,
) -> RevocationPublic:
    """Revoke one certificate by serial (after a rotation) or every certificate of the device,
    which cuts it off: refused at the handshake, its open session loses all access and is
    ended (where the backend knows the broker: `KERNEX_MQTT__HOST`, `…__CA_FILE`)."""
    pki = certificates.require(pki_or_none)
    body = body or RevokeRequest()
    result = await certificates.revoke(
        session=session,
        pki=pki,
        sessions=sessions,
        device_id=device_id,
        serial=body.serial,
        reason=body.reason,
        actor=principal.actor,
    )
    return RevocationPublic.model_validate(dataclasses.asdict(result))


@router.delete("/{device_id}/quarantine", response_model=QuarantinePublic)
async def release_quarantine(
    device_id: DeviceIdPath, pki_or_none: PkiDep, session: SessionDep, principal: WriteAccess
) -> QuarantinePublic:
    """Let a device that was cut off for flooding its traffic budget back in now (idempotent)."""
    result = await quarantine.release(session, pki_or_none, device_id, actor=principal.actor)
    return QuarantinePublic.model_validate(dataclasses.asdict(result))

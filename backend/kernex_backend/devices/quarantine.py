"""Quarantine: a device that floods its traffic budget is cut off at the broker for a while.

The budgets (mqtt/budgets.py) already drop a flooding device's surplus before it costs a parse,
but the broker still forwards every message to the backend, where it takes its place in the one
queue all devices share. Cutting the device off at the broker removes it from that queue. It is
done the way a revocation is: the device's identity is listed as denied in the ACL and its
certificates as on hold in the CRL, and the broker reloads both. The ACL takes effect on the
live session, but the broker would still read and discard every message of it, so the session
is ended too (`end_sessions`, the MQTT adapter's session takeover), and the hold makes the
broker refuse the device's handshakes until it is released. Unlike a revocation, the
certificate stays valid: `quarantined_until` passes (the release job lifts the hold and
re-renders the ACL) or an operator releases the device earlier. Both are audited.

Without a broker folder to write (no `KERNEX_PKI__BROKER_DIR`), quarantine is recorded and the
budgets keep dropping the traffic, but the broker is not told; the API says so.
"""

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.audit import service as audit
from kernex_backend.core.db import utc_now
from kernex_backend.devices import broker_access
from kernex_backend.devices.certificates import Pki
from kernex_backend.devices.models import Device, DeviceStatus
from kernex_backend.devices.service import DeviceNotFound

log = structlog.get_logger(__name__)

SYSTEM_ACTOR = "system:traffic-budget"


@dataclass(frozen=True, slots=True)
class QuarantineChange:
    """What a quarantine or release did."""

    device_id: str
    quarantined_until: dt.datetime | None
    broker_reloaded: bool


def _publish(pki: Pki | None, quarantined: list[str]) -> bool:
    return pki is not None and broker_access.publish(
        pki.authority,
        pki.broker,
        quarantined,
        reload=pki.settings.broker_reload,
        crl_valid_days=pki.settings.crl_valid_days,
    )


class QuarantineService:
    """Quarantines flooding devices, releases them, and keeps the broker's ACL in step."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        pki: Pki | None,
        *,
        duration: dt.timedelta,
        end_sessions: Callable[[list[str]], Awaitable[int]] | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._pki = pki
        self._duration = duration
        # Ends devices' live broker sessions (the MQTT adapter's); None: the ACL alone cuts.
        self._end_sessions = end_sessions
        # The quarantined devices as this replica last read them from the database: the broker
        # is cut off from these plus a new offender before the database is written, because
        # every second a flood goes on queues more of it ahead of everyone else's traffic.
        self._known: set[str] = set()

    @property
    def known(self) -> set[str]:
        """The devices this replica knows to be quarantined now."""
        return self._known

    async def quarantine(self, device_ids: set[str], *, reason: str) -> list[QuarantineChange]:
        """Cut `device_ids` off until now + the duration (known, non-decommissioned ones)."""
        if not device_ids:
            return []
        reloaded = await anyio.to_thread.run_sync(
            _publish, self._pki, sorted(self._known | device_ids)
        )
        log.warning("quarantine_broker_cut", devices=sorted(device_ids), broker_reloaded=reloaded)
        until = utc_now() + self._duration
        async with self._sessionmaker() as session:
            rows = await session.exec(
                sa.update(Device)
                .where(
                    col(Device.id).in_(sorted(device_ids)),
                    col(Device.status) != DeviceStatus.DECOMMISSIONED,
                )
                .values(quarantined_until=until, online=False, updated_at=utc_now())
                .returning(col(Device.id))
            )
            changed = sorted(rows.scalars().all())
            _audit(
                session,
                changed,
                "device.quarantine",
                {"until": until.isoformat(), "reason": reason},
            )
            await session.commit()
            blocked = await broker_access.quarantined_ids(session)
        if set(blocked) != self._known | device_ids:  # unknown IDs, or another replica's
            await anyio.to_thread.run_sync(_publish, self._pki, blocked)
        self._known = set(blocked)
        if reloaded and self._end_sessions is not None:
            await self._end_sessions(sorted(device_ids))
        for device_id in changed:
            log.warning(
                "device_quarantined",
                device_id=device_id,
                until=until.isoformat(),
                reason=reason,
                broker_reloaded=reloaded,
            )
        return [QuarantineChange(d, until, reloaded) for d in changed]

    async def release_expired(self) -> int:
        """Clear quarantines whose time is up and let those devices back in at the broker."""
        now = utc_now()
        async with self._sessionmaker() as session:
            rows = await session.exec(
                sa.update(Device)
                .where(col(Device.quarantined_until) <= now)
                .values(quarantined_until=None, updated_at=now)
                .returning(col(Device.id))
            )
            released = sorted(rows.scalars().all())
            _audit(session, released, "device.quarantine_release", {"reason": "expired"})
            await session.commit()
            blocked = await broker_access.quarantined_ids(session)
        self._known = set(blocked)
        if released:
            await anyio.to_thread.run_sync(_publish, self._pki, blocked)
            log.info("device_quarantine_expired", devices=released)
        return len(released)


def _audit(
    session: AsyncSession, device_ids: list[str], action: str, details: dict[str, Any]
) -> None:
    """One audit event per device, by the system (the traffic guard or the expiry sweep)."""
    for device_id in device_ids:
        audit.record(
            session,
            actor=SYSTEM_ACTOR,
            action=action,
            object_type="device",
            object_id=device_id,
            details=details,
        )


async def release(
    session: AsyncSession, pki: Pki | None, device_id: str, *, actor: str
) -> QuarantineChange:
    """An operator lets a quarantined device back in before its time is up (idempotent)."""
    device = await session.get(Device, device_id, with_for_update=True)
    if device is None:
        raise DeviceNotFound(f"no device with ID {device_id!r}")
    was = device.quarantined_until
    device.quarantined_until = None
    device.updated_at = utc_now()
    session.add(device)
    audit.record(
        session,
        actor=actor,
        action="device.quarantine_release",
        object_type="device",
        object_id=device_id,
        details={"was_until": was.isoformat() if was else None},
    )
    await session.commit()
    blocked = await broker_access.quarantined_ids(session)
    reloaded = await anyio.to_thread.run_sync(_publish, pki, blocked)
    return QuarantineChange(device_id, None, reloaded)

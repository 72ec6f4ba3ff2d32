"""What the dashboard's pages show that no single service call gives: fleet aggregates, a
device's recent heartbeats and its deployment history."""

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.core.db import utc_now


@dataclass(slots=True)
class FleetOverview:
    """Counts for the overview page."""

    total: int = 0
    online: int = 0
    offline: int = 0
    decommissioned: int = 0
    by_version: list[tuple[str, int]] = field(default_factory=list)
    by_type: list[tuple[str, int]] = field(default_factory=list)
    fresh: int = 0  # heard from within the offline threshold
    stopped_reporting: list[dict[str, Any]] = field(default_factory=list)


async def overview(session: AsyncSession, *, offline_after_s: float) -> FleetOverview:
    """The fleet at a glance; "stopped reporting" lists active devices that went quiet."""
    result = FleetOverview()
    conn = await session.connection()
    cutoff = utc_now() - dt.timedelta(seconds=offline_after_s)
    row = (
        await conn.execute(
            sa.text(
                """
                SELECT count(*) FILTER (WHERE in_service),
                       count(*) FILTER (WHERE in_service AND online),
                       count(*) FILTER (WHERE in_service AND NOT online),
                       count(*) FILTER (WHERE NOT in_service),
                       count(*) FILTER (WHERE in_service AND last_seen_at >= :cutoff)
                FROM (SELECT *, status <> 'decommissioned' AS in_service FROM devices) d
                """
            ),
            {"cutoff": cutoff},
        )
    ).one()
    result.total, result.online, result.offline, result.decommissioned, result.fresh = row
    for column, target in (("current_version", result.by_version), ("device_type", result.by_type)):
        rows = await conn.execute(
            sa.text(
                f"SELECT coalesce({column}, '(none)'), count(*) FROM devices "  # noqa: S608 - fixed names
                f"WHERE status <> 'decommissioned' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 12"
            )
        )
        target.extend((str(name), int(count)) for name, count in rows.all())
    quiet = await conn.execute(
        sa.text(
            """
            SELECT id, device_type, last_seen_at, current_version FROM devices
            WHERE status <> 'decommissioned' AND NOT online
            ORDER BY last_seen_at DESC NULLS LAST LIMIT 20
            """
        )
    )
    result.stopped_reporting = [dict(r._mapping) for r in quiet.all()]
    return result


async def recent_heartbeats(session: AsyncSession, device_id: str, limit: int = 10) -> list[Any]:
    """The device's newest heartbeats."""
    conn = await session.connection()
    rows = await conn.execute(
        sa.text(
            "SELECT received_at, sequence, metrics FROM heartbeats WHERE device_id = :d "
            "ORDER BY received_at DESC LIMIT :n"
        ),
        {"d": device_id, "n": limit},
    )
    return [dict(r._mapping) for r in rows.all()]


async def deployment_history(session: AsyncSession, device_id: str, limit: int = 20) -> list[Any]:
    """The deployments that targeted the device, newest first, with how each went there."""
    conn = await session.connection()
    rows = await conn.execute(
        sa.text(
            """
            SELECT d.id, d.name, d.status, e.state, e.error_code, e.updated_at, b.version
            FROM deployment_executions e
            JOIN deployments d ON d.id = e.deployment_id
            LEFT JOIN bundles b ON b.id = d.bundle_id
            WHERE e.device_id = :d ORDER BY e.created_at DESC LIMIT :n
            """
        ),
        {"d": device_id, "n": limit},
    )
    return [dict(r._mapping) for r in rows.all()]


async def bundle_usage(session: AsyncSession) -> dict[str, int]:
    """How many active devices run each bundle (by name and version)."""
    conn = await session.connection()
    rows = await conn.execute(
        sa.text(
            "SELECT current_version, count(*) FROM devices WHERE status <> 'decommissioned' "
            "AND current_version IS NOT NULL GROUP BY 1"
        )
    )
    return {str(version): int(count) for version, count in rows.all()}

"""Daily partitions of the heartbeats table: created ahead of time, dropped after retention.

Several backend replicas may run this at once; a transaction-scoped advisory lock makes one of
them do the work and the others skip it.
"""

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kernex_backend.core.config import TelemetrySettings

PARENT = "heartbeats"
_NAME_RE = re.compile(r"^heartbeats_p(\d{8})$")
# An arbitrary constant naming this job's advisory lock.
_ADVISORY_LOCK_KEY = 0x4B45524E_4842  # "KERNHB"

log = structlog.get_logger(__name__)


def partition_name(day: date) -> str:
    """The name of the partition holding `day` (UTC)."""
    return f"{PARENT}_p{day:%Y%m%d}"


def _day_start(day: date) -> str:
    return datetime.combine(day, time.min, tzinfo=UTC).isoformat()


@dataclass(frozen=True, slots=True)
class MaintenanceResult:
    """What one maintenance pass did."""

    ran: bool
    created: list[str]
    dropped: list[str]


async def existing_partitions(conn: AsyncConnection) -> dict[str, date]:
    """The heartbeat partitions that exist, by name, with the day each holds."""
    rows = await conn.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
            "WHERE p.relname = :parent"
        ),
        {"parent": PARENT},
    )
    found: dict[str, date] = {}
    for (name,) in rows:
        match = _NAME_RE.match(name)
        if match:
            found[name] = datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=UTC).date()
    return found


async def maintain(
    conn: AsyncConnection, *, today: date, days_ahead: int, retention_days: int
) -> MaintenanceResult:
    """Create partitions for today..today+days_ahead, drop those older than the retention.

    Runs in the caller's transaction; commit it to make the changes and release the lock.
    """
    locked = (
        await conn.execute(sa.select(sa.func.pg_try_advisory_xact_lock(_ADVISORY_LOCK_KEY)))
    ).scalar_one()
    if not locked:
        return MaintenanceResult(ran=False, created=[], dropped=[])
    existing = await existing_partitions(conn)
    created: list[str] = []
    for offset in range(days_ahead + 1):
        day = today + timedelta(days=offset)
        name = partition_name(day)
        if name in existing:
            continue
        # Names and bounds come from dates we formatted ourselves, never from input.
        await conn.execute(
            sa.text(
                f'CREATE TABLE "{name}" PARTITION OF "{PARENT}" '
                f"FOR VALUES FROM ('{_day_start(day)}') "
                f"TO ('{_day_start(day + timedelta(days=1))}')"
            )
        )
        created.append(name)
    oldest_kept = today - timedelta(days=retention_days)
    dropped: list[str] = []
    for name, day in sorted(existing.items(), key=lambda item: item[1]):
        if day < oldest_kept:
            await conn.execute(sa.text(f'DROP TABLE "{name}"'))
            dropped.append(name)
    if created or dropped:
        log.info("heartbeat_partitions_maintained", created=created, dropped=dropped)
    return MaintenanceResult(ran=True, created=created, dropped=dropped)


async def maintain_now(engine: AsyncEngine, settings: TelemetrySettings) -> MaintenanceResult:
    """`maintain` for today with the configured horizon and retention, in its own transaction:
    what `migrate`, the API's periodic job and `worker` all run."""
    async with engine.begin() as conn:
        return await maintain(
            conn,
            today=datetime.now(UTC).date(),
            days_ahead=settings.partitions_ahead_days,
            retention_days=settings.heartbeat_retention_days,
        )

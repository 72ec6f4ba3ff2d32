"""The periodic jobs the app's lifespan runs. Each is safe to run on several replicas at once:
the database jobs take advisory locks or write idempotently."""

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable

from fastapi import FastAPI

from kernex_backend.bundles.retention import run_retention
from kernex_backend.core.background import run_periodically
from kernex_backend.core.config import Settings
from kernex_backend.core.db import utc_now
from kernex_backend.devices.certificates import sync_from_index
from kernex_backend.telemetry import partitions

# Certificates issued offline (kernex-provision) reach the device rows within this time.
CERTIFICATE_SYNC_INTERVAL_S = 300.0


def start(app: FastAPI, settings: Settings) -> list[asyncio.Task[None]]:
    """Start every periodic job that the settings enable; cancel the returned tasks to stop."""
    jobs: list[tuple[str, float, Callable[[], Awaitable[object]], bool]] = []

    async def maintain_partitions() -> None:
        async with app.state.engine.begin() as conn:
            await partitions.maintain(
                conn,
                today=utc_now().date(),
                days_ahead=settings.telemetry.partitions_ahead_days,
                retention_days=settings.telemetry.heartbeat_retention_days,
            )

    async def flush_last_used() -> None:
        await app.state.last_used.flush(app.state.engine)

    jobs.append(
        (
            "heartbeat_partitions",
            settings.telemetry.maintenance_interval_s,
            maintain_partitions,
            True,
        )
    )
    # Nothing to flush at start-up: the first run waits one interval.
    jobs.append(
        ("api_key_last_used", settings.auth.last_used_flush_interval_s, flush_last_used, False)
    )

    retention_days = settings.storage.retention_days
    if retention_days is not None:

        async def bundle_retention() -> None:
            await run_retention(
                sessionmaker=app.state.sessionmaker,
                storage=app.state.storage,
                older_than=dt.timedelta(days=retention_days),
                dry_run=settings.storage.retention_dry_run,
            )

        jobs.append(
            ("bundle_retention", settings.storage.retention_interval_s, bundle_retention, True)
        )

    pki = app.state.pki
    if pki is not None:

        async def sync_certificates() -> None:
            async with app.state.sessionmaker() as session:
                await sync_from_index(session=session, pki=pki)

        jobs.append(("certificate_sync", CERTIFICATE_SYNC_INTERVAL_S, sync_certificates, True))

    return [
        asyncio.create_task(run_periodically(name, interval, job, run_first=first))
        for name, interval, job, first in jobs
    ]

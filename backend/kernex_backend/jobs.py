"""The periodic jobs the app's lifespan runs. Each is safe to run on several replicas at once:
the database jobs take advisory locks or write idempotently."""

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable

from kernex_backend.api_keys.last_used import LastUsedTracker
from kernex_backend.bundles.retention import run_retention
from kernex_backend.bundles.storage import BundleStorage
from kernex_backend.core.background import run_periodically
from kernex_backend.core.runtime import Runtime
from kernex_backend.devices import presence
from kernex_backend.devices.certificates import Pki, sync_from_index
from kernex_backend.telemetry import partitions

# Certificates issued offline (kernex-provision) reach the device rows within this time.
CERTIFICATE_SYNC_INTERVAL_S = 300.0


def start(runtime: Runtime, *, api_jobs: bool) -> list[asyncio.Task[None]]:
    """Start every periodic job that the settings enable (with `api_jobs`, those of a process
    serving the API too); cancel the returned tasks to stop."""
    settings = runtime.settings
    jobs: list[tuple[str, float, Callable[[], Awaitable[object]], bool]] = [
        (
            "heartbeat_partitions",
            settings.telemetry.maintenance_interval_s,
            lambda: partitions.maintain_now(runtime.engine, settings.telemetry),
            True,
        ),
        (
            "presence_history",
            settings.telemetry.maintenance_interval_s,
            lambda: presence.prune_history(
                runtime.engine, retention_days=settings.telemetry.presence_retention_days
            ),
            True,
        ),
    ]
    if api_jobs:
        jobs += _api_jobs(runtime)
    return [
        asyncio.create_task(run_periodically(name, interval, job, run_first=first))
        for name, interval, job, first in jobs
    ]


def _api_jobs(runtime: Runtime) -> list[tuple[str, float, Callable[[], Awaitable[object]], bool]]:
    settings = runtime.settings
    last_used = runtime.get(LastUsedTracker)
    # Nothing to flush at start-up: the first run waits one interval.
    jobs: list[tuple[str, float, Callable[[], Awaitable[object]], bool]] = [
        (
            "api_key_last_used",
            settings.auth.last_used_flush_interval_s,
            lambda: last_used.flush(runtime.engine),
            False,
        )
    ]
    retention_days = settings.storage.retention_days
    if retention_days is not None:
        storage = runtime.get(BundleStorage)  # type: ignore[type-abstract]

        async def bundle_retention() -> None:
            await run_retention(
                sessionmaker=runtime.sessionmaker,
                storage=storage,
                older_than=dt.timedelta(days=retention_days),
                dry_run=settings.storage.retention_dry_run,
            )

        jobs.append(
            ("bundle_retention", settings.storage.retention_interval_s, bundle_retention, True)
        )
    pki = runtime.find(Pki)
    if pki is not None:

        async def sync_certificates() -> None:
            async with runtime.sessionmaker() as session:
                await sync_from_index(session=session, pki=pki)

        jobs.append(("certificate_sync", CERTIFICATE_SYNC_INTERVAL_S, sync_certificates, True))
    return jobs

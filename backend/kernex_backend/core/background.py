"""Periodic background jobs owned by the app's lifespan."""

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


async def run_periodically(
    name: str, interval_s: float, job: Callable[[], Awaitable[object]], *, run_first: bool = True
) -> None:
    """Run `job` every `interval_s` seconds until cancelled; a failure is logged, not fatal."""
    if not run_first:
        await asyncio.sleep(interval_s)
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background_job_failed", job=name)
        await asyncio.sleep(interval_s)

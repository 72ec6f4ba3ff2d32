"""Periodic background jobs owned by the app's lifespan."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


async def run_periodically(
    name: str,
    interval_s: float,
    job: Callable[[], Awaitable[object]],
    *,
    run_first: bool = True,
    wake: asyncio.Event | None = None,
) -> None:
    """Run `job` every `interval_s` seconds until cancelled; a failure is logged, not fatal.
    Setting `wake` runs it at once (again, if it was running when set)."""
    if not run_first:
        await _pause(interval_s, wake)
    while True:
        if wake is not None:
            wake.clear()
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background_job_failed", job=name)
        await _pause(interval_s, wake)


async def _pause(interval_s: float, wake: asyncio.Event | None) -> None:
    if wake is None:
        await asyncio.sleep(interval_s)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), interval_s)

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


class Supervisor:
    """Keeps long-running tasks alive: one that ends or raises is logged loudly and started
    again with backoff; `problems` names those that are down now (for the readiness check)."""

    def __init__(self, *, backoff_s: tuple[float, float] = (1.0, 30.0)) -> None:
        self._backoff_s = backoff_s
        self.tasks: list[asyncio.Task[None]] = []
        self.restarts: dict[str, int] = {}
        self._down: dict[str, str] = {}

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run `factory()` under supervision until `stop`."""
        self.restarts[name] = 0
        self.tasks.append(asyncio.create_task(self._keep(name, factory), name=name))

    async def _keep(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        base, ceiling = self._backoff_s
        while True:
            try:
                await factory()
                error = "ended by itself"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.error("background_task_crashed", task=name, exc_info=exc)
            self.restarts[name] += 1
            self._down[name] = error
            delay = min(ceiling, base * 2 ** min(self.restarts[name] - 1, 10))
            log.error(
                "background_task_restarting",
                task=name,
                error=error,
                restarts=self.restarts[name],
                retry_s=delay,
            )
            await asyncio.sleep(delay)
            self._down.pop(name, None)

    def problems(self) -> list[str]:
        """The supervised tasks that are down now, with what ended them."""
        return [f"{name} down ({error})" for name, error in sorted(self._down.items())]

    async def stop(self) -> None:
        """Cancel every task and wait for them."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

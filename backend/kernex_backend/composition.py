"""The one composition root: what a backend process builds, starts and stops.

`kernex-backend serve` (main.create_app's lifespan), `kernex-backend worker` and the tests all
call `running(settings, ...)`: it builds the typed Runtime (core/runtime.py) with every
component the domains need, starts the periodic jobs and, with the MQTT bridge on, the
fleet-state machinery, and undoes all of it on exit. Nothing else wires components together.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog

from kernex_backend import jobs
from kernex_backend.api_keys.last_used import LastUsedTracker
from kernex_backend.api_keys.verifier import ApiKeyVerifier
from kernex_backend.bundles.storage import (
    BundleStorage,
    S3Storage,
    StorageError,
    create_storage,
)
from kernex_backend.bundles.upload import TrustedReleaseKeys
from kernex_backend.core.access import KeyVerifier
from kernex_backend.core.background import run_periodically
from kernex_backend.core.config import Settings
from kernex_backend.core.db import create_engine, create_sessionmaker
from kernex_backend.core.messaging import SessionEnder, TrafficCounters
from kernex_backend.core.runtime import Runtime
from kernex_backend.deployments.notices import NoticeService
from kernex_backend.deployments.rollout import RolloutController
from kernex_backend.devices.certificates import Pki
from kernex_backend.metrics.service import MetricsService
from kernex_backend.mqtt import handlers as fleet_state
from kernex_backend.mqtt.takeover import SessionTakeover
from kernex_backend.webhooks.dispatcher import WebhookDispatcher
from kernex_protocol.manifest import load_trusted_keys

log = structlog.get_logger(__name__)


def build_runtime(settings: Settings) -> Runtime:
    """The runtime with every component the settings call for (nothing connects yet)."""
    engine = create_engine(settings)
    runtime = Runtime(settings, engine, create_sessionmaker(engine))
    storage = create_storage(settings.storage)
    runtime.provide(BundleStorage, storage)  # type: ignore[type-abstract]
    last_used = LastUsedTracker()
    runtime.provide(LastUsedTracker, last_used)
    runtime.provide(KeyVerifier, ApiKeyVerifier(last_used))  # type: ignore[type-abstract]
    keys_dir = settings.release.trusted_keys_dir
    runtime.provide(
        TrustedReleaseKeys, TrustedReleaseKeys(load_trusted_keys(keys_dir) if keys_dir else {})
    )
    pki = Pki.from_settings(settings.pki)
    if pki is not None:
        runtime.provide(Pki, pki)
        if settings.mqtt.ca_file is not None:  # the broker is known: revocations end sessions
            takeover = SessionTakeover(settings.mqtt, pki.authority, TrafficCounters())
            runtime.provide(SessionEnder, takeover)  # type: ignore[type-abstract]
    storage_stats = storage.stats if isinstance(storage, S3Storage) else None
    runtime.provide(MetricsService, MetricsService(settings.metrics, engine, pki, storage_stats))
    runtime.provide(
        RolloutController,
        RolloutController(
            runtime.sessionmaker, dynamic_interval_s=settings.rollout.dynamic_interval_s
        ),
    )

    async def storage_ready() -> str | None:
        try:
            await storage.check()
        except StorageError as exc:
            return type(exc).__name__
        return None

    runtime.readiness["storage"] = storage_ready
    return runtime


@contextlib.asynccontextmanager
async def running(settings: Settings, *, serve_api: bool) -> AsyncIterator[Runtime]:
    """Build the runtime, start this process's jobs (the API's own ones with `serve_api`) and
    the fleet-state machinery when the bridge is on; stop everything on exit."""
    runtime = build_runtime(settings)
    storage = runtime.get(BundleStorage)  # type: ignore[type-abstract]
    try:
        await storage.ensure_ready()
    except StorageError as exc:
        # Not fatal: /ready reports it and uploads answer 503 until the store is back.
        log.warning("storage_not_ready", error=str(exc))
    tasks = jobs.start(runtime, api_jobs=serve_api)
    controller = runtime.get(RolloutController)
    fleet = None
    if settings.mqtt.enabled:
        fleet = fleet_state.start(
            settings=settings,
            engine=runtime.engine,
            sessionmaker=runtime.sessionmaker,
            storage=storage,
            pki=runtime.find(Pki),
            on_finished=controller.wake,
        )
        runtime.provide(fleet_state.FleetState, fleet)
        runtime.provide(NoticeService, fleet.notices)
        controller.on_admitted = fleet.notices.wake
        controller.on_withdrawn = fleet.notices.refresh_devices

        async def device_traffic() -> str | None:
            return "; ".join(fleet.problems()) or None

        runtime.readiness["device_traffic"] = device_traffic
    metrics = runtime.get(MetricsService)
    metrics.fleet = fleet
    tasks.append(asyncio.create_task(metrics.run(), name="metrics"))
    metrics.serve_port()
    webhooks = WebhookDispatcher(runtime.engine, settings.webhooks)
    tasks.append(
        asyncio.create_task(
            run_periodically("webhooks", settings.webhooks.interval_s, webhooks.tick)
        )
    )
    tasks.append(
        asyncio.create_task(
            run_periodically(
                "webhook_prune",
                settings.webhooks.prune_interval_s,
                webhooks.prune,
                run_first=False,  # nothing is old at start-up
            )
        )
    )
    tasks.append(
        asyncio.create_task(
            run_periodically(
                "rollout",
                settings.rollout.interval_s,
                controller.tick,
                wake=controller.wake_event,
            )
        )
    )
    try:
        yield runtime
    finally:
        metrics.stop()
        if fleet is not None:
            await fleet.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        takeover = runtime.find(SessionEnder)  # type: ignore[type-abstract]
        if isinstance(takeover, SessionTakeover):
            await takeover.aclose()
        await webhooks.close()
        if serve_api:
            with contextlib.suppress(Exception):
                await runtime.get(LastUsedTracker).flush(runtime.engine)
        await runtime.engine.dispose()


__all__ = ["build_runtime", "running"]

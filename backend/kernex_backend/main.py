"""The FastAPI application factory; its lifespan owns the engine and the background jobs."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi import APIRouter, FastAPI

from kernex_backend import __version__
from kernex_backend.api_keys.last_used import LastUsedTracker
from kernex_backend.api_keys.router import router as api_keys_router
from kernex_backend.audit.router import router as audit_router
from kernex_backend.bundles.router import router as bundles_router
from kernex_backend.core import health
from kernex_backend.core.background import run_periodically
from kernex_backend.core.config import Settings, get_settings
from kernex_backend.core.db import create_engine, create_sessionmaker, utc_now
from kernex_backend.core.errors import install_error_handlers
from kernex_backend.core.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from kernex_backend.deployments.router import router as deployments_router
from kernex_backend.devices.certificates import Pki
from kernex_backend.devices.router import router as devices_router
from kernex_backend.telemetry import partitions

API_PREFIX = "/api/v1"
log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; nothing connects until the lifespan starts."""
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        tracker: LastUsedTracker = app.state.last_used

        async def maintain_partitions() -> None:
            async with engine.begin() as conn:
                await partitions.maintain(
                    conn,
                    today=utc_now().date(),
                    days_ahead=settings.telemetry.partitions_ahead_days,
                    retention_days=settings.telemetry.heartbeat_retention_days,
                )

        async def flush_last_used() -> None:
            await tracker.flush(engine)

        tasks = [
            asyncio.create_task(
                run_periodically(
                    "heartbeat_partitions",
                    settings.telemetry.maintenance_interval_s,
                    maintain_partitions,
                )
            ),
            asyncio.create_task(
                run_periodically(
                    "api_key_last_used",
                    settings.auth.last_used_flush_interval_s,
                    flush_last_used,
                    run_first=False,
                )
            ),
        ]
        log.info("backend_started", version=__version__, environment=settings.environment)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await tracker.flush(engine)
            await engine.dispose()
            log.info("backend_stopped")

    app = FastAPI(
        title="Kernex",
        version=__version__,
        summary="Fleet management and safe software rollouts for IoT devices over MQTT.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.last_used = LastUsedTracker()
    app.state.pki = Pki.from_settings(settings.pki)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.api.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)

    api = APIRouter(prefix=API_PREFIX)
    api.include_router(health.router)
    for router in (
        devices_router,
        bundles_router,
        deployments_router,
        api_keys_router,
        audit_router,
    ):
        api.include_router(router)
    app.include_router(api)
    return app

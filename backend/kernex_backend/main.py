"""The FastAPI application factory; its lifespan owns the engine and the background jobs."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi import APIRouter, FastAPI

from kernex_backend import __version__, jobs
from kernex_backend.api_keys.last_used import LastUsedTracker
from kernex_backend.api_keys.router import router as api_keys_router
from kernex_backend.audit.router import router as audit_router
from kernex_backend.bundles.local_downloads import router as local_downloads_router
from kernex_backend.bundles.router import router as bundles_router
from kernex_backend.bundles.storage import StorageError, create_storage
from kernex_backend.core import health
from kernex_backend.core.config import Settings, get_settings
from kernex_backend.core.db import create_engine, create_sessionmaker
from kernex_backend.core.errors import install_error_handlers
from kernex_backend.core.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from kernex_backend.deployments.router import router as deployments_router
from kernex_backend.devices.certificates import Pki
from kernex_backend.devices.router import router as devices_router
from kernex_backend.mqtt import handlers as fleet_state
from kernex_backend.mqtt.router import router as mqtt_router
from kernex_protocol.manifest import load_trusted_keys

API_PREFIX = "/api/v1"
log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; nothing connects until the lifespan starts."""
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        app.state.engine = engine
        try:
            await app.state.storage.ensure_ready()
        except StorageError as exc:
            # Not fatal: /ready reports it and uploads answer 503 until the store is back.
            log.warning("storage_not_ready", error=str(exc))
        app.state.sessionmaker = create_sessionmaker(engine)
        tasks = jobs.start(app, settings)
        app.state.fleet = None
        if settings.mqtt.enabled:
            app.state.fleet = fleet_state.start(
                settings=settings,
                engine=engine,
                sessionmaker=app.state.sessionmaker,
                storage=app.state.storage,
                pki=app.state.pki,
            )
        log.info("backend_started", version=__version__, environment=settings.environment)
        try:
            yield
        finally:
            if app.state.fleet is not None:
                await app.state.fleet.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await app.state.last_used.flush(engine)
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
    app.state.storage = create_storage(settings.storage)
    app.state.release_keys = (
        load_trusted_keys(settings.release.trusted_keys_dir)
        if settings.release.trusted_keys_dir
        else {}
    )
    if settings.release.allow_unsigned:
        log.warning(
            "unsigned_bundles_allowed", note="development only: devices may get unsigned code"
        )
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.api.max_body_bytes,
        # Bundle uploads stream straight to storage; the manifest's size is checked there too.
        overrides={f"{API_PREFIX}/bundles": settings.storage.max_bundle_bytes},
    )
    app.add_middleware(RequestContextMiddleware)

    api = APIRouter(prefix=API_PREFIX)
    api.include_router(health.router)
    for router in (
        devices_router,
        bundles_router,
        local_downloads_router,
        deployments_router,
        mqtt_router,
        api_keys_router,
        audit_router,
    ):
        api.include_router(router)
    app.include_router(api)
    return app

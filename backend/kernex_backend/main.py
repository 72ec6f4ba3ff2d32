"""The FastAPI application factory: the routes and middleware; its lifespan runs the one
composition root (composition.py), which owns the engine, the components and the jobs."""

import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi import APIRouter, Depends, FastAPI
from prometheus_client import CollectorRegistry

from kernex_backend import __version__, composition
from kernex_backend.api_keys.router import router as api_keys_router
from kernex_backend.audit.router import router as audit_router
from kernex_backend.bundles.local_downloads import router as local_downloads_router
from kernex_backend.bundles.router import router as bundles_router
from kernex_backend.core import health
from kernex_backend.core.config import Settings, get_settings
from kernex_backend.core.errors import install_error_handlers
from kernex_backend.core.http_metrics import RequestLatency
from kernex_backend.core.input_guard import refuse_nul
from kernex_backend.core.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from kernex_backend.core.openapi import install_contract
from kernex_backend.core.runtime import attach
from kernex_backend.core.security_headers import SecurityHeadersMiddleware
from kernex_backend.deployments.router import router as deployments_router
from kernex_backend.devices.crl_router import router as crl_router
from kernex_backend.devices.router import router as devices_router
from kernex_backend.metrics.router import router as metrics_router
from kernex_backend.metrics.service import MetricsService
from kernex_backend.mqtt.router import router as mqtt_router
from kernex_backend.ui.app import mount_dashboard
from kernex_backend.webhooks.router import router as webhooks_router

API_PREFIX = "/api/v1"
log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; nothing connects until the lifespan starts."""
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with composition.running(settings, serve_api=True) as runtime:
            runtime.get(MetricsService).registry.register(http_registry)
            attach(app, runtime)
            log.info("backend_started", version=__version__, environment=settings.environment)
            yield
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
    app.add_middleware(SecurityHeadersMiddleware, https=settings.api.https)
    http_registry = CollectorRegistry(auto_describe=True)
    latency = RequestLatency(http_registry)
    app.add_middleware(RequestContextMiddleware, on_finished=latency.observe)

    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(refuse_nul)])
    api.include_router(health.router)
    for router in (
        devices_router,
        crl_router,
        bundles_router,
        local_downloads_router,
        deployments_router,
        mqtt_router,
        api_keys_router,
        audit_router,
        webhooks_router,
        *([metrics_router] if settings.metrics.enabled else []),
    ):
        api.include_router(router)
    app.include_router(api)
    mount_dashboard(app)
    install_contract(app, page_size_max=settings.api.page_size_max)
    return app

"""One process's metrics: the registry, the periodic database reading, and the optional
unauthenticated listener on its own port (how `kernex-backend worker` is scraped)."""

import asyncio
import threading
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import CollectorRegistry, start_http_server
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.bundles.storage import StorageStats
from kernex_backend.core.config import MetricsSettings
from kernex_backend.devices.certificates import Pki
from kernex_backend.metrics import snapshot
from kernex_backend.metrics.collector import KernexCollector
from kernex_backend.mqtt.handlers import FleetState

log = structlog.get_logger(__name__)


class MetricsService:
    """Owns the registry; `fleet` is set once the bridge runs (None without one)."""

    def __init__(
        self,
        settings: MetricsSettings,
        engine: AsyncEngine,
        pki: Pki | None,
        storage: StorageStats | None = None,
    ) -> None:
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=True)
        self.fleet: FleetState | None = None
        self._engine = engine
        self._pki = pki
        self._snapshot = snapshot.FleetSnapshot()
        self.registry.register(
            KernexCollector(
                snapshot=lambda: self._snapshot,
                fleet=lambda: self.fleet,
                engine=engine,
                storage=storage,
            )
        )
        self._server: tuple[WSGIServer, threading.Thread] | None = None

    async def refresh(self) -> None:
        """Read the database figures (run periodically)."""
        try:
            self._snapshot = await snapshot.read(self._engine, self._pki)
        except (SQLAlchemyError, OSError) as exc:
            # The previous figures stay; their age grows, which is what the alert watches.
            log.warning("metrics_refresh_failed", error=str(exc)[:200])

    async def run(self) -> None:
        """Refresh every refresh_interval_s until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(self.settings.refresh_interval_s)

    def serve_port(self) -> None:
        """Start the plain listener if a port is configured."""
        if self.settings.port is None:
            return
        self._server = start_http_server(
            self.settings.port, addr=self.settings.bind, registry=self.registry
        )
        log.info("metrics_listening", bind=self.settings.bind, port=self.settings.port)

    def stop(self) -> None:
        """Stop the listener."""
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(5)
            self._server = None

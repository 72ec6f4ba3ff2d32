"""Wiring device traffic to the domains, and the periodic fleet-state work.

`start` builds the bridge with one handler per device channel (heartbeats and progress to
their buffered writers, presence, URL requests) and starts the tasks a replica runs: the
bridge itself, the heartbeat and progress writers, notice publishing, reconciliation, the
offline sweeper and the execution timeout. Every periodic job is safe on several replicas
(SKIP LOCKED, advisory locks, or idempotent updates).
"""

import asyncio
import contextlib
import datetime as dt
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.bundles.storage import BundleStorage
from kernex_backend.core.background import run_periodically
from kernex_backend.core.config import Settings
from kernex_backend.deployments.notices import NoticeService
from kernex_backend.deployments.progress import ProgressIngest
from kernex_backend.devices.presence import PresenceTracker
from kernex_backend.mqtt.bridge import BridgeUnavailable, MqttBridge
from kernex_backend.telemetry.ingest import HeartbeatIngest
from kernex_protocol.topics import Channel


@dataclass
class FleetState:
    """The running fleet-state machinery of one replica."""

    bridge: MqttBridge
    heartbeats: HeartbeatIngest
    notices: NoticeService
    tasks: list[asyncio.Task[None]]

    async def stop(self) -> None:
        """Cancel every task and wait for them."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def start(
    *,
    settings: Settings,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    storage: BundleStorage,
) -> FleetState:
    """Build the bridge and start this replica's fleet-state tasks."""
    mqtt = settings.mqtt
    bridge = MqttBridge(mqtt, handlers={})
    stats = bridge.stats
    heartbeats = HeartbeatIngest(
        engine,
        stats,
        batch_size=mqtt.heartbeat_batch_size,
        interval_s=mqtt.heartbeat_flush_interval_s,
        capacity=mqtt.heartbeat_buffer,
    )
    presence = PresenceTracker(engine, stats)
    notices = NoticeService(
        sessionmaker=sessionmaker, bridge=bridge, storage=storage, settings=settings, stats=stats
    )

    async def after_final(device_ids: list[str]) -> None:
        # If the broker is gone, the reconciler withdraws the notices once it is back.
        with contextlib.suppress(BridgeUnavailable):
            await notices.refresh_devices(device_ids)

    async def reconcile_now() -> None:
        # Disconnected again: the next connect runs it.
        with contextlib.suppress(BridgeUnavailable):
            await notices.reconcile()

    progress = ProgressIngest(
        sessionmaker,
        stats,
        on_final=after_final,
        batch_size=mqtt.progress_batch_size,
        interval_s=mqtt.progress_flush_interval_s,
    )
    bridge.handlers.update(
        {
            Channel.HEARTBEAT: heartbeats.submit,
            Channel.PRESENCE: presence.apply,
            Channel.PROGRESS: progress.submit,
            Channel.URL_REQUEST: notices.answer_url_request,
        }
    )

    bridge.on_connected = reconcile_now

    async def publish_pending() -> None:
        if bridge.connected.is_set():
            await notices.publish_pending()

    async def reconcile() -> None:
        if bridge.connected.is_set():
            await notices.reconcile()

    async def sweep() -> None:
        await presence.sweep(dt.timedelta(seconds=mqtt.offline_after_s))
        await notices.time_out_silent()

    tasks = [
        asyncio.create_task(bridge.run(), name="mqtt_bridge"),
        asyncio.create_task(heartbeats.run(), name="heartbeat_ingest"),
        asyncio.create_task(progress.run(), name="progress_ingest"),
        asyncio.create_task(
            run_periodically(
                "notify", mqtt.notify_interval_s, publish_pending, wake=notices.pending
            )
        ),
        asyncio.create_task(
            run_periodically("reconcile", mqtt.reconcile_interval_s, reconcile, run_first=False)
        ),
        asyncio.create_task(run_periodically("sweep", mqtt.sweep_interval_s, sweep)),
    ]
    return FleetState(bridge, heartbeats, notices, tasks)

"""Wiring device traffic to the domains, and the periodic fleet-state work.

`start` builds the bridge with one route per device channel (its parser and handler:
heartbeats and progress to their buffered writers, presence, URL requests), the per-device
traffic budgets, and starts the tasks a replica runs under a supervisor (a task that ends or
raises is logged loudly and restarted with backoff): the bridge itself, the heartbeat and
progress writers, notice publishing, reconciliation, the offline sweeper with the execution
timeout, and quarantine of devices far over budget. Every periodic job is safe on several
replicas (SKIP LOCKED, advisory locks, or idempotent updates). `problems` says what is down or
stuck, for the readiness check.
"""

import contextlib
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.bundles.storage import BundleStorage
from kernex_backend.core.background import Supervisor, run_periodically
from kernex_backend.core.config import MqttSettings, Settings
from kernex_backend.core.db_events import NOTICES_PENDING, Listener
from kernex_backend.core.messaging import PublishFailed
from kernex_backend.deployments import lifecycle
from kernex_backend.deployments.notices import NoticeService, load_notice_key
from kernex_backend.deployments.progress import ProgressIngest
from kernex_backend.deployments.url_requests import UrlRequests
from kernex_backend.devices.certificates import Pki
from kernex_backend.devices.presence import PresenceTracker
from kernex_backend.devices.quarantine import QuarantineService
from kernex_backend.mqtt.bridge import MqttBridge
from kernex_backend.mqtt.budgets import Budget, TrafficBudgets
from kernex_backend.mqtt.takeover import SessionTakeover
from kernex_backend.telemetry.ingest import HeartbeatIngest
from kernex_protocol.payloads import Heartbeat, Presence, Progress, UrlRequest
from kernex_protocol.topics import Channel


@dataclass
class FleetState:
    """The running fleet-state machinery of one replica."""

    bridge: MqttBridge
    heartbeats: HeartbeatIngest
    progress: ProgressIngest
    notices: NoticeService
    budgets: TrafficBudgets
    quarantine: QuarantineService
    supervisor: Supervisor
    takeover: SessionTakeover | None = None

    def problems(self) -> list[str]:
        """What keeps device traffic from flowing now: tasks down, bridge, stuck writers."""
        found = [
            self.bridge.problem(),
            self.heartbeats.problem(),
            self.progress.problem(),
        ]
        return [*self.supervisor.problems(), *(p for p in found if p is not None)]

    async def stop(self) -> None:
        """Cancel every task and wait for them."""
        await self.supervisor.stop()
        if self.takeover is not None:
            await self.takeover.aclose()


def traffic_budgets(mqtt: MqttSettings) -> TrafficBudgets:
    """The per-device budgets the settings describe."""
    rates = {
        Channel.HEARTBEAT: mqtt.heartbeat_budget_per_s,
        Channel.PROGRESS: mqtt.progress_budget_per_s,
        Channel.PRESENCE: mqtt.presence_budget_per_s,
        Channel.URL_REQUEST: mqtt.url_request_budget_per_s,
    }
    return TrafficBudgets(
        {
            channel: Budget(rate, max(2.0, rate * mqtt.budget_burst_s))
            for channel, rate in rates.items()
        },
        quarantine_after=mqtt.quarantine_after_drops,
        quarantine_window_s=mqtt.quarantine_window_s,
    )


def _progress_ingest(
    sessionmaker: async_sessionmaker[AsyncSession],
    bridge: MqttBridge,
    notices: NoticeService,
    mqtt: MqttSettings,
    on_finished: Callable[[], None],
) -> ProgressIngest:
    """The progress writer; after final reports it wakes the rollout controller and refreshes
    the devices' notices."""

    async def after_final(device_ids: list[str]) -> None:
        on_finished()
        # If the broker is gone, the reconciler withdraws the notices once it is back.
        with contextlib.suppress(PublishFailed):
            await notices.refresh_devices(device_ids)

    return ProgressIngest(
        sessionmaker,
        bridge.stats,
        on_final=after_final,
        batch_size=mqtt.progress_batch_size,
        interval_s=mqtt.progress_flush_interval_s,
    )


def start(
    *,
    settings: Settings,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    storage: BundleStorage,
    pki: Pki | None,
    on_finished: Callable[[], None] = lambda: None,
) -> FleetState:
    """Build the bridge and start this replica's fleet-state tasks; `on_finished` is called
    after devices finished (the rollout controller steps at once)."""
    mqtt = settings.mqtt
    budgets = traffic_budgets(mqtt)
    bridge = MqttBridge(mqtt, budgets)
    stats = bridge.stats
    heartbeats = HeartbeatIngest(
        engine,
        stats,
        batch_size=mqtt.heartbeat_batch_size,
        interval_s=mqtt.heartbeat_flush_interval_s,
        capacity=mqtt.heartbeat_buffer,
        stale_after_s=mqtt.offline_after_s,
        duplicate_horizon_s=settings.telemetry.duplicate_horizon_s,
    )
    presence = PresenceTracker(engine, stats, stale_after_s=mqtt.offline_after_s)
    assert settings.notice.key_file is not None  # the settings refuse the bridge without it
    notices = NoticeService(
        sessionmaker=sessionmaker,
        publisher=bridge,
        storage=storage,
        settings=settings,
        stats=stats,
        signing_key=load_notice_key(settings.notice.key_file),
    )
    takeover = SessionTakeover(mqtt, pki.authority, stats) if pki is not None else None
    quarantine = QuarantineService(
        sessionmaker,
        pki,
        duration=dt.timedelta(seconds=mqtt.quarantine_s),
        end_sessions=takeover.end_sessions if takeover is not None else None,
    )

    progress = _progress_ingest(sessionmaker, bridge, notices, mqtt, on_finished)

    async def reconcile_now() -> None:
        # Disconnected again: the next connect runs it.
        with contextlib.suppress(PublishFailed):
            await notices.reconcile()

    bridge.route_inline(Channel.HEARTBEAT, Heartbeat.parse, heartbeats.submit)
    bridge.route_inline(Channel.PROGRESS, Progress.parse, progress.submit)
    bridge.route(Channel.PRESENCE, Presence.parse, presence.apply)
    url_requests = UrlRequests(
        sessionmaker=sessionmaker, publisher=bridge, storage=storage, settings=settings, stats=stats
    )
    bridge.route(Channel.URL_REQUEST, UrlRequest.parse, url_requests.answer)
    bridge.on_connected = reconcile_now

    async def publish_pending() -> None:
        if bridge.connected.is_set():
            await notices.publish_pending()

    async def reconcile() -> None:
        if bridge.connected.is_set():
            await notices.reconcile()

    async def sweep() -> None:
        await presence.sweep(dt.timedelta(seconds=mqtt.offline_after_s))
        timed_out = await lifecycle.time_out_silent(
            sessionmaker, silent_for=dt.timedelta(seconds=mqtt.execution_timeout_s)
        )
        if timed_out:
            on_finished()
        # Without the broker now, the reconciler withdraws those notices later.
        with contextlib.suppress(PublishFailed):
            await notices.refresh_devices(timed_out)
        await quarantine.release_expired()

    async def guard() -> None:
        budgets.rotate()
        flagged = budgets.take_flagged() - quarantine.known  # its backlog is still arriving
        if flagged:
            reason = (
                f"over {mqtt.quarantine_after_drops} messages beyond its budget "
                f"within {mqtt.quarantine_window_s:g} s"
            )
            await quarantine.quarantine(flagged, reason=reason)

    supervisor = Supervisor()
    supervisor.start("mqtt_bridge", bridge.run)
    supervisor.start("heartbeat_ingest", heartbeats.run)
    supervisor.start("progress_ingest", progress.run)
    # Admissions committed by any replica wake this one's notifier too (its poll stays).
    supervisor.start("notice_wakeups", Listener(engine, NOTICES_PENDING, notices.wake).run)
    supervisor.start(
        "notify",
        lambda: run_periodically(
            "notify", mqtt.notify_interval_s, publish_pending, wake=notices.pending
        ),
    )
    supervisor.start(
        "reconcile",
        lambda: run_periodically(
            "reconcile", mqtt.reconcile_interval_s, reconcile, run_first=False
        ),
    )
    supervisor.start("sweep", lambda: run_periodically("sweep", mqtt.sweep_interval_s, sweep))
    supervisor.start(
        "traffic_guard",
        lambda: run_periodically("traffic_guard", 1.0, guard, wake=budgets.flagged_event),
    )
    return FleetState(
        bridge, heartbeats, progress, notices, budgets, quarantine, supervisor, takeover
    )

"""The collector Prometheus reads on each scrape: live counters of this replica's bridge and
ingest (cheap, in memory), the latest database snapshot, and the connection pool.

Names follow Prometheus conventions: a `kernex_` prefix, units in names, `_total` counters,
and bounded label values (channels, reasons, states), never a device or deployment ID."""

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.bundles.storage import StorageStats
from kernex_backend.deployments.models import DeploymentStatus, ExecutionState
from kernex_backend.devices.models import DeviceStatus
from kernex_backend.metrics.snapshot import FleetSnapshot
from kernex_backend.mqtt.handlers import FleetState

# TrafficCounters names "<prefix>.<rest>" -> (metric, help, label): one family per prefix.
_TRAFFIC: dict[str, tuple[str, str, str]] = {
    "received": (
        "kernex_mqtt_messages_received_total",
        "Device messages received by this replica's bridge.",
        "channel",
    ),
    "dropped": (
        "kernex_mqtt_messages_dropped_total",
        "Device messages dropped before handling (over budget, malformed, oversized...).",
        "reason",
    ),
    "failed": (
        "kernex_mqtt_handler_failures_total",
        "Device messages whose handler failed (a bug or the database: see the logs).",
        "channel",
    ),
    "heartbeats": ("kernex_heartbeats_total", "Heartbeats by outcome.", "outcome"),
    "presence": ("kernex_presence_updates_total", "Presence messages by outcome.", "outcome"),
    "notices": ("kernex_notices_total", "Deployment notices by outcome.", "outcome"),
    "url_requests": ("kernex_url_requests_total", "Download URL requests by outcome.", "outcome"),
    "bridge": ("kernex_mqtt_bridge_events_total", "Bridge sessions and errors.", "event"),
}


def _label(value: str) -> str:
    return value.replace(".", "_")


class KernexCollector(Collector):
    """Reads the process's state when Prometheus scrapes."""

    def __init__(
        self,
        *,
        snapshot: Callable[[], FleetSnapshot],
        fleet: Callable[[], FleetState | None],
        engine: AsyncEngine,
        storage: StorageStats | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._fleet = fleet
        self._engine = engine
        self._storage = storage

    def collect(self) -> Iterator[Metric]:
        yield from self._traffic()
        yield from self._fleet_from_database(self._snapshot())
        yield from self._pool()
        yield from self._object_store()

    def _object_store(self) -> Iterator[Metric]:
        if self._storage is None:
            return
        stats = self._storage
        duration = SummaryMetricFamily(
            "kernex_storage_operation_duration_seconds",
            "Object store calls by operation (count and total seconds).",
            labels=["operation"],
        )
        errors = CounterMetricFamily(
            "kernex_storage_errors",
            "Object store calls that failed (unreachable, refused), by operation.",
            labels=["operation"],
        )
        for operation in sorted(stats.calls):
            duration.add_metric([operation], stats.calls[operation], stats.seconds[operation])
            errors.add_metric([operation], stats.errors[operation])
        yield duration
        yield errors

    def _traffic(self) -> Iterator[Metric]:
        fleet = self._fleet()
        connected = GaugeMetricFamily(
            "kernex_mqtt_bridge_connected",
            "1 when this replica's MQTT bridge is connected (absent without a bridge).",
        )
        if fleet is None:
            return
        connected.add_metric([], 1.0 if fleet.bridge.connected.is_set() else 0.0)
        yield connected
        backlog = GaugeMetricFamily(
            "kernex_ingest_backlog_messages",
            "Device messages received and not yet written to PostgreSQL.",
            labels=["kind"],
        )
        backlog.add_metric(["heartbeat"], fleet.heartbeats.backlog)
        backlog.add_metric(["progress"], fleet.progress.backlog)
        yield backlog
        lag = GaugeMetricFamily(
            "kernex_ingest_lag_seconds",
            "From receiving the oldest heartbeat of the last batch written to storing it.",
        )
        lag.add_metric([], fleet.heartbeats.lag_s)
        yield lag
        problems = GaugeMetricFamily(
            "kernex_ingest_problems", "Things keeping device traffic from flowing now."
        )
        problems.add_metric([], len(fleet.problems()))
        yield problems
        families: dict[str, CounterMetricFamily] = {}
        other = CounterMetricFamily(
            "kernex_device_traffic_other_total", "Other device traffic counters.", labels=["name"]
        )
        for name, value in sorted(fleet.bridge.stats.counts.items()):
            prefix, _, rest = name.partition(".")
            spec = _TRAFFIC.get(prefix)
            if spec is None or not rest:
                other.add_metric([_label(name)], value)
                continue
            metric, help_text, label = spec
            if metric not in families:
                families[metric] = CounterMetricFamily(
                    metric.removesuffix("_total"), help_text, labels=[label]
                )
            families[metric].add_metric([_label(rest)], value)
        yield from families.values()
        yield other

    def _fleet_from_database(self, snapshot: FleetSnapshot) -> Iterator[Metric]:
        if not snapshot.taken_at:
            return  # not read yet: no series rather than zeros that look like an empty fleet
        devices = GaugeMetricFamily(
            "kernex_devices", "Devices by status and online state.", labels=["status", "online"]
        )
        # Every combination, zeros included: an absent series is not 0 to PromQL, and an alert
        # comparing "offline now" with "offline ten minutes ago" needs both to exist.
        for status in DeviceStatus:
            for online in (True, False):
                count = snapshot.devices.get((status.value, online), 0)
                devices.add_metric([status.value, "true" if online else "false"], count)
        yield devices
        deployments = GaugeMetricFamily(
            "kernex_deployments", "Deployments by status.", labels=["status"]
        )
        for deployment_status in DeploymentStatus:
            value = deployment_status.value
            deployments.add_metric([value], snapshot.deployments.get(value, 0))
        yield deployments
        executions = GaugeMetricFamily(
            "kernex_executions_active",
            "Executions of scheduled, running and paused deployments, by state.",
            labels=["state"],
        )
        for state in ExecutionState:
            executions.add_metric([state.value], snapshot.executions.get(state.value, 0))
        yield executions
        events = CounterMetricFamily(
            "kernex_deployment_events",
            "Rollout events ever recorded (started, wave_started, paused, aborted, retried, "
            "timed_out...): the same on every replica.",
            labels=["kind"],
        )
        for kind, count in sorted(snapshot.deployment_events.items()):
            events.add_metric([kind], count)
        yield events
        expiry = GaugeMetricFamily(
            "kernex_certificate_expiry_timestamp_seconds",
            "When each certificate (and the CRL's nextUpdate) stops being valid.",
            labels=["certificate"],
        )
        for name, when in sorted(snapshot.certificate_expiry.items()):
            expiry.add_metric([name], when)
        yield expiry
        age = GaugeMetricFamily(
            "kernex_metrics_snapshot_age_seconds",
            "Age of the database figures above (a stuck refresher shows here).",
        )
        age.add_metric([], time.time() - snapshot.taken_at)
        yield age

    def _pool(self) -> Iterator[Metric]:
        pool = self._engine.pool
        in_use = getattr(pool, "checkedout", None)
        idle = getattr(pool, "checkedin", None)
        if not (callable(in_use) and callable(idle)):
            return
        connections = GaugeMetricFamily(
            "kernex_db_pool_connections", "Database connections by state.", labels=["state"]
        )
        connections.add_metric(["in_use"], in_use())
        connections.add_metric(["idle"], idle())
        yield connections

"""The Kernex Grafana dashboards, as code (grafanalib): fleet overview, rollouts, and API and
bridge health. `make dashboards` writes them to deploy/grafana/dashboards/*.json, which the
compose stack provisions; tests/unit/test_dashboards.py checks the committed JSON is what this
file generates and that every panel's PromQL parses (promtool).

Series read from PostgreSQL are the same on every replica (max()); traffic is per replica
(sum())."""

import json
import sys
from pathlib import Path

from grafanalib._gen import DashboardEncoder
from grafanalib.core import Dashboard, GridPos, Stat, Target, TimeSeries

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "5m"


def _rate_by(label: str, metric: str) -> str:
    return f"sum by ({label}) (rate({metric}[{RATE}]))"


def _series(
    title: str, y: int, x: int, *targets: tuple[str, str], unit: str = "short"
) -> TimeSeries:
    return TimeSeries(
        title=title,
        dataSource=DATASOURCE,
        targets=[
            Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + n), datasource=DATASOURCE)
            for n, (expr, legend) in enumerate(targets)
        ],
        gridPos=GridPos(h=8, w=12, x=x, y=y),
        unit=unit,
    )


def _stat(title: str, expr: str, x: int, unit: str = "short") -> Stat:
    return Stat(
        title=title,
        dataSource=DATASOURCE,
        targets=[Target(expr=expr, refId="A", datasource=DATASOURCE, instant=True)],
        gridPos=GridPos(h=4, w=6, x=x, y=0),
        format=unit,
    )


def fleet() -> Dashboard:
    """How many devices, online or not, and what their traffic looks like."""
    return Dashboard(
        title="Kernex: fleet",
        uid="kernex-fleet",
        tags=["kernex"],
        timezone="utc",
        panels=[
            _stat("Active devices", "kernex:devices_active:max", 0),
            _stat("Offline", "kernex:devices_offline:max", 6),
            _stat(
                "Offline share",
                "kernex:devices_offline:max / kernex:devices_active:max",
                12,
                unit="percentunit",
            ),
            _stat("Bridges connected", "sum(kernex_mqtt_bridge_connected)", 18),
            _series(
                "Devices by status",
                4,
                0,
                ("max by (status, online) (kernex_devices)", "{{status}} online={{online}}"),
            ),
            _series(
                "Device messages received /s",
                4,
                12,
                (
                    _rate_by("channel", "kernex_mqtt_messages_received_total"),
                    "{{channel}}",
                ),
                unit="ops",
            ),
            _series(
                "Messages dropped /s",
                12,
                0,
                (
                    _rate_by("reason", "kernex_mqtt_messages_dropped_total"),
                    "{{reason}}",
                ),
                unit="ops",
            ),
            _series(
                "Ingest backlog",
                12,
                12,
                ("max by (kind) (kernex_ingest_backlog_messages)", "{{kind}}"),
            ),
            _series(
                "Presence changes /s",
                20,
                0,
                (_rate_by("outcome", "kernex_presence_updates_total"), "{{outcome}}"),
                unit="ops",
            ),
            _series(
                "Heartbeats /s",
                20,
                12,
                (_rate_by("outcome", "kernex_heartbeats_total"), "{{outcome}}"),
                unit="ops",
            ),
        ],
    ).auto_panel_ids()


def rollouts() -> Dashboard:
    """What the running deployments are doing."""
    return Dashboard(
        title="Kernex: rollouts",
        uid="kernex-rollouts",
        tags=["kernex"],
        timezone="utc",
        panels=[
            _stat("Running", 'max(kernex_deployments{status="running"})', 0),
            _stat("Paused", 'max(kernex_deployments{status="paused"})', 6),
            _stat(
                "Aborted (24 h)",
                'max(increase(kernex_deployment_events_total{kind="aborted"}[1d]))',
                12,
            ),
            _stat(
                "Failed share (running)",
                "kernex:executions_failed:max / kernex:executions_active:max",
                18,
                unit="percentunit",
            ),
            _series(
                "Executions of active deployments by state",
                4,
                0,
                ("max by (state) (kernex_executions_active)", "{{state}}"),
            ),
            _series(
                "Rollout events /min",
                4,
                12,
                ("max by (kind) (rate(kernex_deployment_events_total[5m])) * 60", "{{kind}}"),
            ),
            _series(
                "Notices and download URLs /s",
                12,
                0,
                (_rate_by("outcome", "kernex_notices_total"), "notices {{outcome}}"),
                (_rate_by("outcome", "kernex_url_requests_total"), "urls {{outcome}}"),
                unit="ops",
            ),
            _series(
                "Deployments by status",
                12,
                12,
                ("max by (status) (kernex_deployments)", "{{status}}"),
            ),
        ],
    ).auto_panel_ids()


def health() -> Dashboard:
    """The backend itself: API latency and errors, the bridge, the database pool, the PKI."""
    latency = (
        "histogram_quantile({q}, sum by (le) "
        "(rate(kernex_http_request_duration_seconds_bucket[5m])))"
    )
    return Dashboard(
        title="Kernex: API and bridge health",
        uid="kernex-health",
        tags=["kernex"],
        timezone="utc",
        panels=[
            _stat("Targets up", 'sum(up{job=~"kernex.*"})', 0),
            _stat("Ingest problems", "sum(kernex_ingest_problems)", 6),
            _stat(
                "CRL valid for",
                'min(kernex_certificate_expiry_timestamp_seconds{certificate=~".*crl.*"}) - time()',
                12,
                unit="s",
            ),
            _stat(
                "Broker certificate valid for",
                'min(kernex_certificate_expiry_timestamp_seconds{certificate="broker"}) - time()',
                18,
                unit="s",
            ),
            _series(
                "API requests /s by status class",
                4,
                0,
                (
                    "sum by (status_class) (rate(kernex_http_request_duration_seconds_count[5m]))",
                    "{{status_class}}",
                ),
                unit="reqps",
            ),
            _series(
                "API latency",
                4,
                12,
                (latency.format(q="0.5"), "p50"),
                (latency.format(q="0.95"), "p95"),
                (latency.format(q="0.99"), "p99"),
                unit="s",
            ),
            _series(
                "Slowest routes (p95)",
                12,
                0,
                (
                    "topk(5, histogram_quantile(0.95, sum by (le, route) "
                    "(rate(kernex_http_request_duration_seconds_bucket[5m]))))",
                    "{{route}}",
                ),
                unit="s",
            ),
            _series(
                "Database connections",
                12,
                12,
                ("sum by (state) (kernex_db_pool_connections)", "{{state}}"),
            ),
            _series(
                "Handler failures /s",
                20,
                0,
                (
                    _rate_by("channel", "kernex_mqtt_handler_failures_total"),
                    "{{channel}}",
                ),
                unit="ops",
            ),
            _series(
                "Bridge connected",
                20,
                12,
                ("kernex_mqtt_bridge_connected", "{{instance}}"),
            ),
            _series(
                "Object store: mean call time",
                28,
                0,
                (
                    "sum by (operation) (rate(kernex_storage_operation_duration_seconds_sum[5m]))"
                    " / sum by (operation) "
                    "(rate(kernex_storage_operation_duration_seconds_count[5m]))",
                    "{{operation}}",
                ),
                unit="s",
            ),
            _series(
                "Object store errors /s and ingest lag",
                28,
                12,
                (_rate_by("operation", "kernex_storage_errors_total"), "errors {{operation}}"),
                ("max(kernex_ingest_lag_seconds)", "heartbeat lag (s)"),
            ),
        ],
    ).auto_panel_ids()


DASHBOARDS = {"kernex-fleet": fleet, "kernex-rollouts": rollouts, "kernex-health": health}


def render(name: str) -> str:
    """The JSON Grafana provisions for dashboard `name`."""
    return (
        json.dumps(
            DASHBOARDS[name]().to_json_data(), cls=DashboardEncoder, indent=2, sort_keys=True
        )
        + "\n"
    )


def main(out: Path) -> None:
    """Write every dashboard into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for name in DASHBOARDS:
        (out / f"{name}.json").write_text(render(name))
        sys.stdout.write(f"dashboards: wrote {out / (name + '.json')}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "dashboards")

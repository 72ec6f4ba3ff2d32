"""/metrics: the Prometheus text format behind a read key, with fleet figures from the
database, request latency by route template (never a raw ID), and the plain listener."""

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from kernex_backend.core.runtime import runtime_of
from kernex_backend.metrics.service import MetricsService
from kernex_devstack.ports import free_port
from tests.conftest import make_settings


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_need_a_key_and_show_the_fleet_and_the_api(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    read_headers: dict[str, str],
) -> None:
    assert (await client.get("/api/v1/metrics")).status_code == 401
    for n in range(3):
        created = await client.post(
            "/api/v1/devices",
            json={"id": f"metrics-{n}", "device_type": "gateway"},
            headers=admin_headers,
        )
        assert created.status_code == 201
    assert (await client.get("/api/v1/devices/metrics-1", headers=read_headers)).status_code == 200
    await runtime_of(app).get(MetricsService).refresh()

    response = await client.get("/api/v1/metrics", headers=read_headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert found[("kernex_devices", (("online", "false"), ("status", "registered")))] == 3
    latency = (
        "kernex_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "/api/v1/devices/{device_id}"), ("status_class", "2xx")),
    )
    assert found[latency] == 1
    assert "metrics-1" not in response.text  # no device ID ever becomes a label
    assert found[("kernex_db_pool_connections", (("state", "in_use"),))] >= 0
    assert found[("kernex_metrics_snapshot_age_seconds", ())] < 60


async def test_plain_listener_serves_the_same_registry(database_url: str) -> None:
    from kernex_backend import composition

    port = free_port()
    settings = make_settings(database_url, metrics={"port": port, "refresh_interval_s": 0.2})
    async with composition.running(settings, serve_api=False), httpx.AsyncClient() as plain:
        text = ""
        for _ in range(50):
            text = (await plain.get(f"http://127.0.0.1:{port}/metrics")).text
            if "kernex_devices" in text or "kernex_deployments" in text:
                break
            import asyncio

            await asyncio.sleep(0.1)
        assert "kernex_deployments" in text and "kernex_metrics_snapshot_age_seconds" in text
    # Stopped with the process: the port is free again.
    async with httpx.AsyncClient() as plain:
        try:
            await plain.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
            raise AssertionError("the metrics listener outlived its process")
        except httpx.ConnectError:
            pass

"""Read endpoints for bundles, deployments and executions, on rows written to the database."""

import uuid

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.deployments.models import DeploymentStatus, ExecutionState
from kernex_backend.devices.models import DeviceStatus
from tests.factories import add_bundle, add_deployment, add_devices


async def seed(engine: AsyncEngine) -> tuple[uuid.UUID, uuid.UUID]:
    bundle_id = await add_bundle(
        engine,
        signed=False,
        name="firmware",
        version="1.2.0",
        size_bytes=1024,
        storage_key="bundles/" + "a" * 64,
    )
    await add_devices(engine, "d-0", "d-1", "d-2", status=DeviceStatus.REGISTERED)
    states = [ExecutionState.SUCCEEDED, ExecutionState.DOWNLOADING, ExecutionState.PENDING]
    deployment_id = await add_deployment(
        engine,
        {f"d-{i}": state for i, state in enumerate(states)},
        bundle_id=bundle_id,
        status=DeploymentStatus.SCHEDULED,
        name="fw 1.2.0",
    )
    return bundle_id, deployment_id


async def test_bundle_reads(
    client: httpx.AsyncClient, engine: AsyncEngine, read_headers: dict[str, str]
) -> None:
    bundle_id, _ = await seed(engine)
    listed = await client.get("/api/v1/bundles", headers=read_headers)
    assert listed.status_code == 200
    assert listed.json()["count"] == 1
    one = await client.get(f"/api/v1/bundles/{bundle_id}", headers=read_headers)
    assert one.json()["version"] == "1.2.0"
    assert "storage_key" not in one.json()
    assert (
        await client.get("/api/v1/bundles", params={"name": "other"}, headers=read_headers)
    ).json()["count"] == 0
    missing = await client.get(f"/api/v1/bundles/{uuid.uuid4()}", headers=read_headers)
    assert missing.status_code == 404
    assert missing.json()["type"] == "urn:kernex:problem:bundle-not-found"
    assert (await client.get("/api/v1/bundles/not-a-uuid", headers=read_headers)).status_code == 422


async def test_deployment_reads(
    client: httpx.AsyncClient, engine: AsyncEngine, read_headers: dict[str, str]
) -> None:
    _, deployment_id = await seed(engine)
    listed = await client.get("/api/v1/deployments", headers=read_headers)
    assert listed.json()["count"] == 1
    detail = await client.get(f"/api/v1/deployments/{deployment_id}", headers=read_headers)
    assert detail.status_code == 200
    counts = detail.json()["execution_counts"]
    assert counts["succeeded"] == 1 and counts["downloading"] == 1 and counts["pending"] == 1
    assert counts["failed"] == 0

    executions = await client.get(
        f"/api/v1/deployments/{deployment_id}/executions", headers=read_headers
    )
    assert [e["device_id"] for e in executions.json()["data"]] == ["d-0", "d-1", "d-2"]
    only_pending = await client.get(
        f"/api/v1/deployments/{deployment_id}/executions",
        params={"state": "pending"},
        headers=read_headers,
    )
    assert [e["device_id"] for e in only_pending.json()["data"]] == ["d-2"]
    missing = await client.get(
        f"/api/v1/deployments/{uuid.uuid4()}/executions", headers=read_headers
    )
    assert missing.status_code == 404
    by_status = await client.get(
        "/api/v1/deployments", params={"status": "completed"}, headers=read_headers
    )
    assert by_status.json()["count"] == 0

"""POST /deployments and cancel: what is refused (with problem+json), what is created."""

import uuid

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.devices.models import DeviceStatus
from tests.factories import add_bundle, add_devices


async def seed(engine: AsyncEngine, *, signed: bool = True) -> uuid.UUID:
    bundle_id = await add_bundle(engine, signed=signed)
    await add_devices(engine, "dc-1")
    await add_devices(engine, "dc-2", status=DeviceStatus.REGISTERED)
    await add_devices(engine, "dc-other", device_type="sensor")
    await add_devices(engine, "dc-retired", status=DeviceStatus.DECOMMISSIONED)
    return bundle_id


def problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    return body


async def test_create_follow_and_cancel_a_deployment(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    write_headers: dict[str, str],
    read_headers: dict[str, str],
) -> None:
    bundle_id = await seed(engine)
    body = {"name": "first", "bundle_id": str(bundle_id), "device_ids": ["dc-1", "dc-2", "dc-1"]}
    assert (
        await client.post("/api/v1/deployments", json=body, headers=read_headers)
    ).status_code == 403
    created = await client.post("/api/v1/deployments", json=body, headers=write_headers)
    assert created.status_code == 201, created.text
    deployment = created.json()
    assert deployment["status"] == "running"
    assert deployment["target"] == {"device_ids": ["dc-1", "dc-2"]}
    assert deployment["execution_counts"]["pending"] == 2

    # A device in an unfinished deployment is busy.
    busy = await client.post("/api/v1/deployments", json=body, headers=write_headers)
    assert problem(busy, 409)["type"] == "urn:kernex:problem:devices-busy"

    canceled = await client.post(
        f"/api/v1/deployments/{deployment['id']}/cancel", headers=write_headers
    )
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    assert canceled.json()["execution_counts"]["canceled"] == 2
    # Canceling again changes nothing (controls are idempotent).
    again = await client.post(
        f"/api/v1/deployments/{deployment['id']}/cancel", headers=write_headers
    )
    assert again.status_code == 200, again.text
    assert again.json()["finished_at"] == canceled.json()["finished_at"]
    # Once canceled, the devices are free again.
    assert (
        await client.post("/api/v1/deployments", json=body, headers=write_headers)
    ).status_code == 201
    async with engine.connect() as conn:
        actions = (
            (await conn.execute(sa.text("SELECT action FROM audit_events ORDER BY id")))
            .scalars()
            .all()
        )
    assert actions.count("deployment.create") == 2 and actions.count("deployment.cancel") == 1


async def test_refusals_are_problem_json(
    client: httpx.AsyncClient, engine: AsyncEngine, write_headers: dict[str, str]
) -> None:
    bundle_id = await seed(engine)
    unsigned = await seed_unsigned(engine)

    async def post(**changes: object) -> httpx.Response:
        body = {"name": "x", "bundle_id": str(bundle_id), "device_ids": ["dc-1"], **changes}
        return await client.post("/api/v1/deployments", json=body, headers=write_headers)

    assert problem(await post(device_ids=["dc-1", "nobody"]), 422)["unknown_devices"] == ["nobody"]
    assert problem(await post(device_ids=["dc-other"]), 422)["devices"] == ["dc-other"]
    assert problem(await post(device_ids=["dc-retired"]), 422)["devices"] == ["dc-retired"]
    problem(await post(device_ids=[]), 422)
    problem(await post(device_ids=["a/b"]), 422)
    problem(await post(bundle_id=str(uuid.uuid4())), 404)
    problem(await post(bundle_id="not-a-uuid"), 422)
    problem(await post(extra="field"), 422)
    assert problem(await post(bundle_id=str(unsigned)), 409)["type"] == (
        "urn:kernex:problem:bundle-not-deployable"
    )
    problem(
        await client.post(f"/api/v1/deployments/{uuid.uuid4()}/cancel", headers=write_headers), 404
    )


async def seed_unsigned(engine: AsyncEngine) -> uuid.UUID:
    return await add_bundle(
        engine, signed=False, version="0.1.0", sha256="b" * 64, storage_key="bundles/unsigned"
    )

"""The rollout API: validation as problem+json naming the field, preview, the controls
(idempotent, audited), progress per wave, and the Server-Sent Events stream with resume."""

import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import add_bundle, add_devices

pytestmark = pytest.mark.integration

IDS = [f"ra-{i}" for i in range(10)]


async def seed(engine: AsyncEngine) -> uuid.UUID:
    await add_devices(engine, *IDS)
    return await add_bundle(engine, version="2.0.0")


def body(bundle: uuid.UUID, **changes: Any) -> dict[str, Any]:
    return {"name": "r", "bundle_id": str(bundle), "device_ids": IDS, **changes}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"strategy": {"waves": ["10%", "50%"]}}, "waves"),
        ({"strategy": {"success_threshold_percent": 101}}, "success_threshold_percent"),
        (
            {"strategy": {"schedule": {"windows": [{"cron": "0 2 * * *", "duration_s": 59}]}}},
            "duration_s",
        ),
        (
            {"strategy": {"schedule": {"windows": [{"cron": "0 0 31 2 *", "duration_s": 600}]}}},
            "cron",
        ),
        (
            {
                "strategy": {
                    "schedule": {
                        "windows": [
                            {"cron": "* * * * *", "duration_s": 600, "timezone": "Nowhere/City"}
                        ]
                    }
                }
            },
            "timezone",
        ),
        (
            {"abort_criteria": [{"failure_types": ["failed"], "threshold_percent": 120}]},
            "threshold_percent",
        ),
        ({"strategy": {"retry": {"max_retries": 11}}}, "max_retries"),
        ({"strategy": {"timeouts": {"in_progress_s": 59}}}, "in_progress_s"),
        ({"selector": {"all": True}}, "exactly one"),
        ({"dynamic": True}, "dynamic"),
    ],
)
async def test_invalid_strategies_are_422_naming_the_field(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    write_headers: dict[str, str],
    changes: dict[str, Any],
    field: str,
) -> None:
    bundle = await seed(engine)
    for path in ("/api/v1/deployments", "/api/v1/deployments/preview"):
        response = await client.post(path, json=body(bundle, **changes), headers=write_headers)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert field in response.text


async def test_rollback_of_another_type_is_refused(
    client: httpx.AsyncClient, engine: AsyncEngine, write_headers: dict[str, str]
) -> None:
    bundle = await seed(engine)
    other = await add_bundle(engine, version="1.0.0", device_type="sensor")
    response = await client.post(
        "/api/v1/deployments",
        json=body(
            bundle,
            abort_criteria=[{"failure_types": ["all"], "threshold_percent": 10}],
            rollback={"bundle_id": str(other), "approval": {}},
        ),
        headers=write_headers,
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"] == "urn:kernex:problem:rollback-invalid"
    assert problem["field"] == "rollback.bundle_id"


async def test_controls_progress_and_events(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    write_headers: dict[str, str],
    read_headers: dict[str, str],
) -> None:
    bundle = await seed(engine)
    preview = await client.post(
        "/api/v1/deployments/preview",
        json=body(bundle, strategy={"waves": [2, "100%"]}),
        headers=read_headers,
    )
    assert preview.status_code == 200, preview.text
    assert preview.json()["devices"] == 10
    assert [w["size"] for w in preview.json()["waves"]] == [2, 8]
    created = await client.post(
        "/api/v1/deployments",
        json=body(bundle, strategy={"waves": [2, "100%"]}),
        headers=write_headers,
    )
    assert created.status_code == 201, created.text
    detail = created.json()
    d = detail["id"]
    # The first wave is admitted at once; the second waits for the first's success.
    assert detail["execution_counts"]["pending"] == 2
    assert [w["devices"] for w in detail["waves"]] == [2, 8]
    assert detail["waiting_for"].startswith("threshold: wave 0")

    url = f"/api/v1/deployments/{d}"
    for _ in range(2):  # idempotent
        paused = await client.post(f"{url}/pause", headers=write_headers)
        assert paused.status_code == 200 and paused.json()["status"] == "paused"
    for _ in range(2):
        resumed = await client.post(f"{url}/resume", headers=write_headers)
        assert resumed.status_code == 200 and resumed.json()["status"] == "running"
    approved = await client.post(f"{url}/approve", json={}, headers=write_headers)
    assert approved.status_code == 200, approved.text
    for _ in range(2):
        canceled = await client.post(f"{url}/cancel", headers=write_headers)
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    for control in ("pause", "resume", "approve", "retry"):
        refused = await client.post(f"{url}/{control}", headers=write_headers)
        assert refused.status_code == 409, (control, refused.text)
        assert refused.headers["content-type"] == "application/problem+json"
    async with engine.connect() as conn:
        actions = (
            (
                await conn.execute(
                    sa.text("SELECT action FROM audit_events WHERE object_id = :d"), {"d": d}
                )
            )
            .scalars()
            .all()
        )
    assert sorted(actions) == sorted(
        [
            "deployment.create",
            "deployment.pause",
            "deployment.resume",
            "deployment.approve",
            "deployment.cancel",
        ]
    )

    # The finished deployment's events stream in full, then the stream ends.
    stream = await client.get(f"{url}/events", headers=read_headers)
    assert stream.status_code == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in stream.text.split("\n\n") if f.startswith("id: ")]
    kinds = [f.split("\n")[1].removeprefix("event: ") for f in frames]
    assert kinds[0] == "created" and kinds[-1] == "canceled"
    assert {"admitted", "paused", "resumed", "approved"} <= set(kinds)
    # Resuming after the third event sends only the rest.
    third = frames[2].split("\n")[0].removeprefix("id: ")
    resumed_stream = await client.get(
        f"{url}/events", headers={**read_headers, "Last-Event-ID": third}
    )
    rest = [f for f in resumed_stream.text.split("\n\n") if f.startswith("id: ")]
    assert rest == frames[3:]
    # "²" (as Latin-1 bytes) is a digit to str.isdigit, no number to int(): it was a 500.
    for bad_id in (b"x", "²".encode("latin-1"), b"1" * 19):
        headers = [(k.encode(), v.encode()) for k, v in read_headers.items()]
        bad = await client.get(f"{url}/events", headers=[*headers, (b"Last-Event-ID", bad_id)])
        assert bad.status_code == 422, (bad_id, bad.text)


async def test_the_list_shows_each_deployments_outcome(
    client: httpx.AsyncClient, engine: AsyncEngine, write_headers: dict[str, str]
) -> None:
    # A deployment in which every device rolled back must not read as a plain "completed" in a
    # list: each listed deployment carries its outcome from its devices' states.
    bundle = await seed(engine)
    ended = {
        "failed": ("rolled_back", "timed_out"),
        "partial": ("succeeded", "failed"),
        "succeeded": ("succeeded", "succeeded"),
        "none": ("pending", "downloading"),
    }
    created: dict[str, str] = {}
    for index, (outcome, states) in enumerate(ended.items()):
        devices = IDS[2 * index : 2 * index + 2]
        response = await client.post(
            "/api/v1/deployments",
            json={**body(bundle, device_ids=devices), "name": outcome},
            headers=write_headers,
        )
        assert response.status_code == 201, response.text
        created[outcome] = response.json()["id"]
        async with engine.begin() as conn:
            for device_id, state in zip(devices, states, strict=True):
                await conn.execute(
                    sa.text(
                        "UPDATE deployment_executions SET state = :state"
                        " WHERE deployment_id = :d AND device_id = :device"
                    ),
                    {"state": state, "d": created[outcome], "device": device_id},
                )
    listed = await client.get("/api/v1/deployments", headers=write_headers)
    assert listed.status_code == 200, listed.text
    outcomes = {row["id"]: row["outcome"] for row in listed.json()["data"]}
    assert outcomes == {d: outcome for outcome, d in created.items()}
    # The detail agrees with the list.
    for outcome, d in created.items():
        detail = await client.get(f"/api/v1/deployments/{d}", headers=write_headers)
        assert detail.json()["outcome"] == outcome


async def test_openapi_declares_the_rollout_contract(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for control in ("pause", "resume", "approve", "retry", "cancel"):
        responses = paths[f"/api/v1/deployments/{{deployment_id}}/{control}"]["post"]["responses"]
        assert {"404", "409"} <= set(responses), control
    assert "/api/v1/deployments/preview" in paths
    assert "text/event-stream" in str(paths["/api/v1/deployments/{deployment_id}/events"])
    strategy = spec["components"]["schemas"]["RolloutStrategy"]["properties"]
    assert strategy["jitter_s"]["maximum"] == 3600
    assert (
        spec["components"]["schemas"]["RetryPolicy"]["properties"]["max_retries"]["maximum"] == 10
    )

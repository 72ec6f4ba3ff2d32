"""API key administration and the audit trail of state changes."""

import httpx
import pytest


async def test_create_list_revoke(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    created = await client.post(
        "/api/v1/api-keys", json={"name": "ci", "scopes": ["read", "write"]}, headers=admin_headers
    )
    assert created.status_code == 201, created.text
    body = created.json()
    token = body["token"]
    assert token.startswith(f"kx_{body['id']}_")
    assert body["scopes"] == ["read", "write"]

    # The new key works, and the listing never shows a secret.
    own = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/v1/devices", headers=own)).status_code == 200
    listed = await client.get("/api/v1/api-keys", headers=admin_headers)
    assert listed.status_code == 200
    assert token not in listed.text
    assert token.split("_", 2)[2] not in listed.text
    assert body["id"] in {k["id"] for k in listed.json()["data"]}

    revoked = await client.post(f"/api/v1/api-keys/{body['id']}/revoke", headers=admin_headers)
    assert revoked.status_code == 200
    assert (await client.get("/api/v1/devices", headers=own)).status_code == 401
    twice = await client.post(f"/api/v1/api-keys/{body['id']}/revoke", headers=admin_headers)
    assert twice.status_code == 409
    unknown = await client.post("/api/v1/api-keys/0123456789abcdef/revoke", headers=admin_headers)
    assert unknown.status_code == 404
    malformed = await client.post("/api/v1/api-keys/NOT-AN-ID/revoke", headers=admin_headers)
    assert malformed.status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["root"]},
        {"name": "", "scopes": ["read"]},
        {"name": "x\x00", "scopes": ["read"]},
        {"scopes": ["read"]},
    ],
)
async def test_bad_key_requests_are_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str], body: dict[str, object]
) -> None:
    response = await client.post("/api/v1/api-keys", json=body, headers=admin_headers)
    assert response.status_code == 422


async def test_every_state_change_is_audited(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await client.post(
        "/api/v1/devices", json={"id": "aud-1", "device_type": "gw"}, headers=admin_headers
    )
    await client.patch("/api/v1/devices/aud-1", json={"name": "renamed"}, headers=admin_headers)
    await client.post("/api/v1/devices/aud-1/decommission", headers=admin_headers)
    key = (
        await client.post(
            "/api/v1/api-keys", json={"name": "tmp", "scopes": ["read"]}, headers=admin_headers
        )
    ).json()
    await client.post(f"/api/v1/api-keys/{key['id']}/revoke", headers=admin_headers)
    # A refused change leaves no event.
    await client.post(
        "/api/v1/devices", json={"id": "aud-1", "device_type": "gw"}, headers=admin_headers
    )

    response = await client.get(
        "/api/v1/audit-events", params={"object_id": "aud-1"}, headers=admin_headers
    )
    assert response.status_code == 200
    events = response.json()["data"]
    assert [e["action"] for e in events] == [
        "device.decommission",
        "device.update",
        "device.register",
    ]
    assert all(e["actor"].startswith("api-key:") for e in events)
    assert all(e["request_id"] for e in events)
    assert events[1]["details"] == {"before": {"name": None}, "after": {"name": "renamed"}}

    keys = await client.get(
        "/api/v1/audit-events",
        params={"object_type": "api_key", "object_id": key["id"]},
        headers=admin_headers,
    )
    assert [e["action"] for e in keys.json()["data"]] == ["api_key.revoke", "api_key.create"]

    by_action = await client.get(
        "/api/v1/audit-events", params={"action": "device.register"}, headers=admin_headers
    )
    assert by_action.json()["count"] == 1
    naive = await client.get(
        "/api/v1/audit-events", params={"since": "2026-01-01T00:00:00"}, headers=admin_headers
    )
    assert naive.status_code == 422  # a time without a zone is ambiguous
    future = await client.get(
        "/api/v1/audit-events", params={"since": "2999-01-01T00:00:00Z"}, headers=admin_headers
    )
    assert future.json()["count"] == 0

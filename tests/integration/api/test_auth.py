"""The API key matrix: missing, malformed, unknown, revoked keys and scopes."""

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.api_keys.last_used import LastUsedTracker
from kernex_backend.core.runtime import runtime_of
from kernex_backend.core.scopes import Scope
from tests.integration.conftest import KeyFactory

PROBLEM = "application/problem+json"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_health_needs_no_key(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_the_crl_needs_no_key_and_says_when_there_is_no_ca(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/v1/pki/crl")  # these settings configure no CA
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert "KERNEX_PKI__CA_DIR" in response.json()["detail"]


async def test_ready_checks_the_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "storage": "ok"}


async def test_ready_is_503_when_storage_is_gone(client: httpx.AsyncClient, app: FastAPI) -> None:
    import shutil

    shutil.rmtree(runtime_of(app).settings.storage.local_dir)
    response = await client.get("/api/v1/ready")
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["checks"] == {"database": "ok", "storage": "StorageError"}
    assert (await client.get("/api/v1/health")).status_code == 200  # liveness is unaffected


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer not-a-kernex-key"},
        {"Authorization": "Bearer kx_0123456789abcdef_wrongsecret"},
    ],
    ids=["missing", "basic-scheme", "empty", "malformed", "unknown"],
)
async def test_requests_without_a_valid_key_get_401(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await client.get("/api/v1/devices", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["type"] == "urn:kernex:problem:unauthorized"


async def test_wrong_secret_for_a_real_key_id_gets_401(
    client: httpx.AsyncClient, make_key: KeyFactory
) -> None:
    token = await make_key(Scope.ADMIN)
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert (await client.get("/api/v1/devices", headers=bearer(token))).status_code == 200
    assert (await client.get("/api/v1/devices", headers=bearer(tampered))).status_code == 401


async def test_revoked_key_is_refused_at_once(
    client: httpx.AsyncClient, make_key: KeyFactory, admin_headers: dict[str, str]
) -> None:
    token = await make_key(Scope.READ)
    key_id = token.split("_")[1]
    assert (await client.get("/api/v1/devices", headers=bearer(token))).status_code == 200
    revoked = await client.post(f"/api/v1/api-keys/{key_id}/revoke", headers=admin_headers)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    response = await client.get("/api/v1/devices", headers=bearer(token))
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("scope", "method", "path", "expected"),
    [
        (Scope.READ, "GET", "/api/v1/devices", 200),
        (Scope.READ, "POST", "/api/v1/devices", 403),
        (Scope.READ, "GET", "/api/v1/api-keys", 403),
        (Scope.WRITE, "GET", "/api/v1/devices", 200),
        (Scope.WRITE, "POST", "/api/v1/devices", 201),
        (Scope.WRITE, "GET", "/api/v1/api-keys", 403),
        (Scope.WRITE, "POST", "/api/v1/api-keys", 403),
        (Scope.WRITE, "GET", "/api/v1/audit-events", 403),
        (Scope.ADMIN, "POST", "/api/v1/devices", 201),
        (Scope.ADMIN, "GET", "/api/v1/api-keys", 200),
        (Scope.ADMIN, "GET", "/api/v1/audit-events", 200),
    ],
)
async def test_scope_matrix(
    client: httpx.AsyncClient,
    make_key: KeyFactory,
    scope: Scope,
    method: str,
    path: str,
    expected: int,
) -> None:
    token = await make_key(scope)
    body: dict[str, object] | None = None
    if method == "POST" and path.endswith("/devices"):
        body = {"id": f"matrix-{scope.value}", "device_type": "gateway"}
    elif method == "POST":
        body = {"name": "x", "scopes": ["read"]}
    response = await client.request(method, path, headers=bearer(token), json=body)
    assert response.status_code == expected, response.text
    if expected == 403:
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["type"] == "urn:kernex:problem:forbidden"


async def test_last_used_is_recorded_in_batches_not_per_request(
    client: httpx.AsyncClient, make_key: KeyFactory, app: FastAPI, engine: AsyncEngine
) -> None:
    token = await make_key(Scope.READ)
    key_id = token.split("_")[1]

    async def stored_last_used() -> object:
        async with engine.connect() as conn:
            return (
                await conn.execute(
                    sa.text("SELECT last_used_at FROM api_keys WHERE id = :id"), {"id": key_id}
                )
            ).scalar_one()

    for _ in range(3):
        assert (await client.get("/api/v1/devices", headers=bearer(token))).status_code == 200
    assert await stored_last_used() is None  # nothing written by the requests themselves
    assert runtime_of(app).get(LastUsedTracker).pending >= 1
    assert await runtime_of(app).get(LastUsedTracker).flush(engine) >= 1
    assert await stored_last_used() is not None

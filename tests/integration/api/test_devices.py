"""Device endpoints: registration, listing with filters and pages, updates, decommissioning."""

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.factories import register_device

PROBLEM = "application/problem+json"


async def test_register_get_and_list(
    client: httpx.AsyncClient, write_headers: dict[str, str]
) -> None:
    created = await register_device(
        client, write_headers, "dev-001", name="Pump 1", tags={"site": "north"}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["id"] == "dev-001"
    assert body["status"] == "registered"
    assert body["online"] is False
    assert body["tags"] == {"site": "north"}

    fetched = await client.get("/api/v1/devices/dev-001", headers=write_headers)
    assert fetched.status_code == 200
    assert fetched.json() == body

    listed = await client.get("/api/v1/devices", headers=write_headers)
    assert listed.status_code == 200
    assert listed.json()["count"] == 1
    assert [d["id"] for d in listed.json()["data"]] == ["dev-001"]


async def test_duplicate_registration_is_409(
    client: httpx.AsyncClient, write_headers: dict[str, str]
) -> None:
    assert (await register_device(client, write_headers, "dup-1")).status_code == 201
    again = await register_device(client, write_headers, "dup-1")
    assert again.status_code == 409
    assert again.headers["content-type"] == PROBLEM
    assert again.json()["type"] == "urn:kernex:problem:device-exists"


async def test_unknown_device_is_404(
    client: httpx.AsyncClient, read_headers: dict[str, str]
) -> None:
    response = await client.get("/api/v1/devices/nope", headers=read_headers)
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "urn:kernex:problem:device-not-found"


@pytest.mark.parametrize(
    "device_id",
    ["a/b", "a+b", "#", "$SYS", "", "x" * 65, "nul\x00id", "has space", "-leading", ".hidden", "ü"],
    ids=[
        "slash",
        "plus",
        "hash",
        "dollar",
        "empty",
        "65-chars",
        "nul",
        "space",
        "dash",
        "dot",
        "unicode",
    ],
)
async def test_bad_device_ids_are_refused(
    client: httpx.AsyncClient, write_headers: dict[str, str], device_id: str
) -> None:
    response = await register_device(client, write_headers, device_id)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert "device ID" in response.json()["detail"]
    listed = await client.get("/api/v1/devices", headers=write_headers)
    assert listed.json()["count"] == 0


@pytest.mark.parametrize("device_id", ["a", "A1", "dev_1.b-2", "x" * 64])
async def test_good_device_ids_are_accepted(
    client: httpx.AsyncClient, write_headers: dict[str, str], device_id: str
) -> None:
    assert (await register_device(client, write_headers, device_id)).status_code == 201


@pytest.mark.parametrize(
    "path", ["/api/v1/devices/a+b", "/api/v1/devices/%24SYS", "/api/v1/devices/nul%00"]
)
async def test_bad_device_id_in_path_is_422_not_500(
    client: httpx.AsyncClient, read_headers: dict[str, str], path: str
) -> None:
    response = await client.get(path, headers=read_headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"name": "x" * 129}, "name too long"),
        ({"name": "bell\x07"}, "control character in name"),
        ({"name": "nul\x00"}, "NUL in name"),
        ({"tags": {f"k{i}": "v" for i in range(33)}}, "too many tags"),
        ({"tags": {"bad key": "v"}}, "space in tag key"),
        ({"tags": {"k": "v" * 129}}, "tag value too long"),
        ({"tags": {"k": "nul\x00"}}, "NUL in tag value"),
        ({"device_type": "a/b"}, "slash in device type"),
        ({"unexpected": 1}, "unknown field"),
    ],
)
async def test_bad_fields_are_422(
    client: httpx.AsyncClient, write_headers: dict[str, str], fields: dict[str, object], why: str
) -> None:
    response = await register_device(client, write_headers, "field-test", **fields)
    assert response.status_code == 422, why
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["errors"], why


async def test_malformed_json_is_400(
    client: httpx.AsyncClient, write_headers: dict[str, str]
) -> None:
    response = await client.post(
        "/api/v1/devices",
        content=b'{"id": "x", ',
        headers={**write_headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "urn:kernex:problem:malformed-json"


async def test_oversized_body_is_413(
    client: httpx.AsyncClient, write_headers: dict[str, str]
) -> None:
    huge = b'{"id": "big", "device_type": "gw", "name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    response = await client.post(
        "/api/v1/devices",
        content=huge,
        headers={**write_headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM


async def test_oversized_streamed_body_without_length_is_413(
    client: httpx.AsyncClient, write_headers: dict[str, str]
) -> None:
    async def chunks() -> AsyncIterator[
        bytes
    ]:  # no Content-Length: the limit must hold while streaming
        for _ in range(40):
            yield b"x" * 65536

    response = await client.post(
        "/api/v1/devices",
        content=chunks(),
        headers={**write_headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM


async def test_filters(client: httpx.AsyncClient, write_headers: dict[str, str]) -> None:
    await register_device(client, write_headers, "f-1", tags={"site": "north", "ring": "canary"})
    await register_device(client, write_headers, "f-2", tags={"site": "north", "ring": "stable"})
    await register_device(client, write_headers, "f-3", tags={"site": "south"})
    await client.post(
        "/api/v1/devices", json={"id": "f-4", "device_type": "sensor"}, headers=write_headers
    )
    await client.post("/api/v1/devices/f-3/decommission", headers=write_headers)

    async def ids(**params: str | list[str]) -> list[str]:
        response = await client.get("/api/v1/devices", params=params, headers=write_headers)
        assert response.status_code == 200, response.text
        data = response.json()
        assert data["count"] == len(data["data"])
        return [d["id"] for d in data["data"]]

    assert await ids(tag="site:north") == ["f-1", "f-2"]
    assert await ids(tag=["site:north", "ring:canary"]) == ["f-1"]
    assert await ids(device_type="sensor") == ["f-4"]
    assert await ids(status="decommissioned") == ["f-3"]
    assert await ids(status="registered", device_type="gateway") == ["f-1", "f-2"]
    assert await ids(online="false") == ["f-1", "f-2", "f-3", "f-4"]
    assert await ids(online="true") == []
    assert await ids(version="1.0.0") == []

    bad = await client.get("/api/v1/devices", params={"tag": "no-colon"}, headers=write_headers)
    assert bad.status_code == 422
    bad_status = await client.get(
        "/api/v1/devices", params={"status": "zombie"}, headers=write_headers
    )
    assert bad_status.status_code == 422


async def test_pagination_and_its_hard_cap(
    client: httpx.AsyncClient, write_headers: dict[str, str]
) -> None:
    for i in range(7):
        await register_device(client, write_headers, f"p-{i}")
    first = (await client.get("/api/v1/devices?limit=3", headers=write_headers)).json()
    second = (await client.get("/api/v1/devices?limit=3&offset=3", headers=write_headers)).json()
    last = (await client.get("/api/v1/devices?limit=3&offset=6", headers=write_headers)).json()
    assert first["count"] == second["count"] == last["count"] == 7
    assert [d["id"] for d in first["data"] + second["data"] + last["data"]] == [
        f"p-{i}" for i in range(7)
    ]

    too_big = await client.get("/api/v1/devices?limit=501", headers=write_headers)
    assert too_big.status_code == 422
    assert too_big.headers["content-type"] == PROBLEM
    assert too_big.json()["max_limit"] == 500
    assert (await client.get("/api/v1/devices?limit=500", headers=write_headers)).status_code == 200
    assert (await client.get("/api/v1/devices?limit=0", headers=write_headers)).status_code == 422
    assert (await client.get("/api/v1/devices?offset=-1", headers=write_headers)).status_code == 422


async def test_patch_name_and_tags(
    client: httpx.AsyncClient, write_headers: dict[str, str]
) -> None:
    await register_device(client, write_headers, "patch-1", name="old", tags={"a": "1"})
    renamed = await client.patch(
        "/api/v1/devices/patch-1", json={"name": "new"}, headers=write_headers
    )
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "new"
    assert renamed.json()["tags"] == {"a": "1"}  # untouched when not sent

    retagged = await client.patch(
        "/api/v1/devices/patch-1", json={"tags": {"b": "2"}}, headers=write_headers
    )
    assert retagged.json()["tags"] == {"b": "2"}
    assert retagged.json()["name"] == "new"

    forbidden_field = await client.patch(
        "/api/v1/devices/patch-1", json={"status": "active"}, headers=write_headers
    )
    assert forbidden_field.status_code == 422
    missing = await client.patch("/api/v1/devices/nope", json={"name": "x"}, headers=write_headers)
    assert missing.status_code == 404


async def test_decommission(client: httpx.AsyncClient, write_headers: dict[str, str]) -> None:
    await register_device(client, write_headers, "old-1")
    response = await client.post("/api/v1/devices/old-1/decommission", headers=write_headers)
    assert response.status_code == 200
    assert response.json()["status"] == "decommissioned"

    again = await client.post("/api/v1/devices/old-1/decommission", headers=write_headers)
    assert again.status_code == 409
    assert again.json()["type"] == "urn:kernex:problem:device-decommissioned"
    patch = await client.patch("/api/v1/devices/old-1", json={"name": "x"}, headers=write_headers)
    assert patch.status_code == 409


async def test_unknown_route_and_method_are_problems(
    client: httpx.AsyncClient, read_headers: dict[str, str]
) -> None:
    missing = await client.get("/api/v1/nothing-here", headers=read_headers)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM
    wrong_method = await client.delete("/api/v1/devices", headers=read_headers)
    assert wrong_method.status_code == 405
    # Allow names every method the path serves (GET and POST are separate routes here).
    assert wrong_method.headers["allow"] == "GET, POST"
    keys = await client.put("/api/v1/api-keys", headers=read_headers)
    assert keys.status_code == 405 and keys.headers["allow"] == "GET, POST"
    # A literal path is not taken for the template it also fits (/deployments/{id}).
    for method in ("GET", "PUT"):
        preview = await client.request(method, "/api/v1/deployments/preview", headers=read_headers)
        assert preview.status_code == 405 and preview.headers["allow"] == "POST", method

    assert wrong_method.headers["content-type"] == PROBLEM


async def test_request_id_is_echoed_or_generated(
    client: httpx.AsyncClient, read_headers: dict[str, str]
) -> None:
    given = await client.get("/api/v1/devices", headers={**read_headers, "X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    hostile = await client.get(
        "/api/v1/devices", headers={**read_headers, "X-Request-ID": "evil\nheader"}
    )
    assert hostile.headers["x-request-id"] != "evil\nheader"
    assert len(hostile.headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/bundles?device_type=gw%00x",
        "/api/v1/devices?version=1%00",
        "/api/v1/audit-events?actor=a%00b",
        "/api/v1/devices?na%00me=1",
    ],
)
async def test_a_nul_anywhere_in_the_query_is_a_422_not_a_server_error(
    client: httpx.AsyncClient, read_headers: dict[str, str], url: str
) -> None:
    response = await client.get(url, headers=read_headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert "NUL" in response.json()["detail"]


async def test_times_must_be_iso_date_times_not_numbers(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    numeric = await client.get("/api/v1/audit-events?until=0.5", headers=admin_headers)
    assert numeric.status_code == 422 and "ISO 8601" in numeric.text
    iso = await client.get("/api/v1/audit-events?until=2030-01-01T00:00:00Z", headers=admin_headers)
    assert iso.status_code == 200

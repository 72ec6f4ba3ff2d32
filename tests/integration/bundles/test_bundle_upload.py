"""Upload, download and delete bundles through the API, on S3 and on local storage."""

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.bundles.storage import BundleStorage, bundle_key
from kernex_backend.core.db import create_sessionmaker
from kernex_backend.core.runtime import runtime_of
from kernex_backend.deployments.models import Deployment, DeploymentStatus
from tests.conftest import Mount, fill
from tests.integration.bundles.conftest import ReleaseFactory
from tests.integration.conftest import storage_of

PROBLEM = "application/problem+json"
MiB = 1024 * 1024


async def upload(
    client: httpx.AsyncClient, headers: dict[str, str], payload: bytes, release: dict[str, str]
) -> httpx.Response:
    return await client.post("/api/v1/bundles", content=payload, headers={**headers, **release})


async def no_leftovers(app: FastAPI, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """No bundle row and no object (temporary or final) remains."""
    assert (await client.get("/api/v1/bundles", headers=headers)).json()["count"] == 0
    storage: Any = storage_of(app)  # the backends' own internals, to list what they hold
    if hasattr(storage, "_client"):
        objects = list(storage._client.list_objects(storage._bucket, recursive=True))
        assert [o.object_name for o in objects] == []
        pending = storage._client._list_multipart_uploads(storage._bucket).uploads
        assert [u.object_name for u in pending] == []  # every failed multipart was aborted
    else:
        root = storage._root
        assert [p for p in root.rglob("*") if p.is_file()] == []


async def test_round_trip(
    app: FastAPI,
    client: httpx.AsyncClient,
    write_headers: dict[str, str],
    make_release: ReleaseFactory,
) -> None:
    payload = os.urandom(3 * MiB + 17)
    response = await upload(client, write_headers, payload, make_release(payload))
    assert response.status_code == 201, response.text
    bundle = response.json()
    assert bundle["sha256"] == hashlib.sha256(payload).hexdigest()
    assert bundle["size_bytes"] == len(payload)
    assert bundle["signing_key_id"] and bundle["signature"]

    content = await client.get(f"/api/v1/bundles/{bundle['id']}/content", headers=write_headers)
    assert content.status_code == 200
    assert content.content == payload
    assert content.headers["x-content-sha256"] == bundle["sha256"]

    storage: BundleStorage = storage_of(app)
    assert await storage.exists(bundle_key(bundle["sha256"]))
    deleted = await client.delete(f"/api/v1/bundles/{bundle['id']}", headers=write_headers)
    assert deleted.status_code == 204
    assert not await storage.exists(bundle_key(bundle["sha256"]))
    assert (
        await client.get(f"/api/v1/bundles/{bundle['id']}", headers=write_headers)
    ).status_code == 404
    await no_leftovers(app, client, write_headers)


async def test_large_bundle_streams_up_and_down(
    client: httpx.AsyncClient, write_headers: dict[str, str], make_release: ReleaseFactory
) -> None:
    size = 100 * MiB
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    for i in range(100):
        digest.update(block[i:] + block[:i])

    async def body() -> AsyncIterator[bytes]:
        for i in range(100):
            yield block[i:] + block[:i]

    release = make_release(b"", size=size, sha256=digest.hexdigest())
    response = await client.post(
        "/api/v1/bundles",
        content=body(),
        headers={**write_headers, **release, "Content-Length": str(size)},
    )
    assert response.status_code == 201, response.text
    bundle_id = response.json()["id"]

    received = hashlib.sha256()
    count = 0
    async with client.stream(
        "GET", f"/api/v1/bundles/{bundle_id}/content", headers=write_headers
    ) as stream:
        async for chunk in stream.aiter_bytes():
            received.update(chunk)
            count += len(chunk)
    assert count == size
    assert received.hexdigest() == digest.hexdigest()


async def test_twenty_concurrent_uploads_and_downloads(
    client: httpx.AsyncClient, write_headers: dict[str, str], make_release: ReleaseFactory
) -> None:
    payloads = [os.urandom(256 * 1024 + i) for i in range(20)]
    responses = await asyncio.gather(
        *(
            upload(client, write_headers, p, make_release(p, name=f"app{i}", version=f"1.0.{i}"))
            for i, p in enumerate(payloads)
        )
    )
    assert [r.status_code for r in responses] == [201] * 20
    ids = [r.json()["id"] for r in responses]
    downloads = await asyncio.gather(
        *(client.get(f"/api/v1/bundles/{i}/content", headers=write_headers) for i in ids)
    )
    assert [d.content for d in downloads] == payloads


async def test_duplicate_release_is_409_and_same_content_is_shared(
    client: httpx.AsyncClient, write_headers: dict[str, str], make_release: ReleaseFactory
) -> None:
    payload = os.urandom(1000)
    assert (await upload(client, write_headers, payload, make_release(payload))).status_code == 201
    again = await upload(client, write_headers, payload, make_release(payload))
    assert again.status_code == 409
    assert again.json()["type"] == "urn:kernex:problem:bundle-exists"
    other = await upload(client, write_headers, payload, make_release(payload, version="1.0.1"))
    assert other.status_code == 201  # same bytes, another release: one stored object


class SlowBody:
    """A request body that stops after its first chunk until released, so a test can act while
    an upload is in the middle of its stream."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.streaming = asyncio.Event()
        self.release = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.payload[:1024]
        self.streaming.set()
        await self.release.wait()
        yield self.payload[1024:]


async def test_a_delete_waits_for_an_upload_of_the_same_content(
    app: FastAPI,
    client: httpx.AsyncClient,
    write_headers: dict[str, str],
    make_release: ReleaseFactory,
) -> None:
    # The second release's upload finds the content stored already and only hashes its body;
    # deleting the first release meanwhile must not take the object from under it.
    payload = os.urandom(2 * MiB)
    first = await upload(client, write_headers, payload, make_release(payload))
    assert first.status_code == 201, first.text
    body = SlowBody(payload)
    second = asyncio.create_task(
        client.post(
            "/api/v1/bundles",
            content=aiter(body),
            headers={**write_headers, **make_release(payload, version="1.0.1")},
        )
    )
    await asyncio.wait_for(body.streaming.wait(), 10)
    delete = asyncio.create_task(
        client.delete(f"/api/v1/bundles/{first.json()['id']}", headers=write_headers)
    )
    await asyncio.sleep(0.5)  # the delete's row goes; its object waits for the content lock
    body.release.set()
    assert (await second).status_code == 201, (await second).text
    assert (await delete).status_code == 204
    content = await client.get(
        f"/api/v1/bundles/{(await second).json()['id']}/content", headers=write_headers
    )
    assert content.status_code == 200 and content.content == payload
    storage: BundleStorage = storage_of(app)
    assert await storage.exists(bundle_key(hashlib.sha256(payload).hexdigest()))


async def test_a_wrong_upload_never_replaces_a_right_one_of_the_same_digest(
    app: FastAPI,
    client: httpx.AsyncClient,
    write_headers: dict[str, str],
    make_release: ReleaseFactory,
) -> None:
    # Both claim the same digest and the content is not stored yet: the wrong one streams to
    # the content address first; the right one waits for it to fail, then stores its own.
    payload = os.urandom(9 * MiB)
    release = make_release(payload)
    wrong = SlowBody(os.urandom(len(payload)))
    first = asyncio.create_task(
        client.post("/api/v1/bundles", content=aiter(wrong), headers={**write_headers, **release})
    )
    await asyncio.wait_for(wrong.streaming.wait(), 10)
    second = asyncio.create_task(
        upload(client, write_headers, payload, make_release(payload, version="1.0.1"))
    )
    await asyncio.sleep(0.5)
    wrong.release.set()
    refused, stored = await first, await second
    assert refused.status_code == 422, refused.text
    assert refused.json()["type"] == "urn:kernex:problem:bundle-content-mismatch"
    assert stored.status_code == 201, stored.text
    content = await client.get(
        f"/api/v1/bundles/{stored.json()['id']}/content", headers=write_headers
    )
    assert content.content == payload


@pytest.mark.parametrize(
    "problem",
    [
        "unsigned",
        "unknown-key",
        "tampered-manifest",
        "bad-signature-encoding",
        "no-header",
        "garbage-header",
    ],
)
async def test_signature_problems_are_refused(
    app: FastAPI,
    client: httpx.AsyncClient,
    write_headers: dict[str, str],
    make_release: ReleaseFactory,
    problem: str,
) -> None:
    payload = os.urandom(2048)
    release = make_release(payload)
    if problem == "unsigned":
        release = make_release(payload, signed=False)
    elif problem == "unknown-key":
        release = make_release(payload, key=Ed25519PrivateKey.generate())
    elif problem == "tampered-manifest":
        document = json.loads(release["Kernex-Release"])
        document["manifest"]["version"] = "9.9.9"  # the signature covered 1.0.0
        release["Kernex-Release"] = json.dumps(document)
    elif problem == "bad-signature-encoding":
        document = json.loads(release["Kernex-Release"])
        document["signature"] = "!!not base64!!"
        release["Kernex-Release"] = json.dumps(document)
    elif problem == "no-header":
        del release["Kernex-Release"]
    else:
        release["Kernex-Release"] = "{not json"
    response = await upload(client, write_headers, payload, release)
    # A missing header breaks the schema (it is required there): 422 like any other input.
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    if problem == "no-header":
        assert response.json()["type"] == "urn:kernex:problem:validation-failed"
        assert "kernex-release" in response.json()["detail"]
    elif problem != "garbage-header":
        assert response.json()["type"] == "urn:kernex:problem:bundle-signature-invalid"
    await no_leftovers(app, client, write_headers)


@pytest.mark.parametrize(
    "problem", ["longer-body", "shorter-body", "wrong-digest", "content-length-mismatch"]
)
async def test_content_that_differs_from_the_manifest_leaves_nothing(
    app: FastAPI,
    client: httpx.AsyncClient,
    write_headers: dict[str, str],
    make_release: ReleaseFactory,
    problem: str,
) -> None:
    payload = os.urandom(9 * MiB)  # more than one S3 part, so multipart aborts are exercised
    release = make_release(payload)
    headers = {**write_headers, **release}
    if problem == "longer-body":
        body: bytes | AsyncIterator[bytes]
        headers["Content-Length"] = str(len(payload))  # lie consistently with the manifest

        async def longer() -> AsyncIterator[bytes]:
            yield payload
            yield b"extra"

        body = longer()
    elif problem == "shorter-body":

        async def shorter() -> AsyncIterator[bytes]:
            yield payload[: 5 * MiB]

        body = shorter()
    elif problem == "wrong-digest":
        body = payload
        release = make_release(payload, sha256="0" * 64)
        headers = {**write_headers, **release}
    else:
        body = payload[:-1]
    response = await client.post("/api/v1/bundles", content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["type"] == "urn:kernex:problem:bundle-content-mismatch"
    await no_leftovers(app, client, write_headers)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "../etc"),
        ("name", "a/b"),
        ("name", "x" * 65),
        ("version", "1.0"),
        ("version", "v1.0.0"),
        ("version", "1.0.0/../../x"),
        ("device_type", "#"),
    ],
)
async def test_odd_names_and_versions_are_refused(
    client: httpx.AsyncClient,
    write_headers: dict[str, str],
    make_release: ReleaseFactory,
    field: str,
    value: str,
) -> None:
    payload = b"data"
    document = json.loads(make_release(payload)["Kernex-Release"])
    document["manifest"][field] = value
    headers = {**write_headers, "Kernex-Release": json.dumps(document)}
    response = await client.post("/api/v1/bundles", content=payload, headers=headers)
    assert response.status_code == 422
    assert field in response.json()["detail"] or "version" in response.json()["detail"]


async def test_oversize_is_413(
    app: FastAPI,
    client: httpx.AsyncClient,
    write_headers: dict[str, str],
    make_release: ReleaseFactory,
) -> None:
    runtime_of(app).settings.storage.max_bundle_bytes = 1 * MiB
    payload = os.urandom(MiB + 1)
    response = await upload(client, write_headers, payload, make_release(payload))
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    await no_leftovers(app, client, write_headers)


async def test_read_key_cannot_upload_or_delete(
    client: httpx.AsyncClient, read_headers: dict[str, str], make_release: ReleaseFactory
) -> None:
    payload = b"x"
    assert (await upload(client, read_headers, payload, make_release(payload))).status_code == 403
    assert (
        await client.delete(f"/api/v1/bundles/{uuid.uuid4()}", headers=read_headers)
    ).status_code == 403


async def test_delete_is_refused_while_an_unfinished_deployment_uses_the_bundle(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    admin_headers: dict[str, str],
    make_release: ReleaseFactory,
) -> None:
    payload = os.urandom(100)
    bundle = (await upload(client, admin_headers, payload, make_release(payload))).json()
    async with create_sessionmaker(engine)() as session:
        deployment = Deployment(name="d", bundle_id=uuid.UUID(bundle["id"]), created_by="t")
        session.add(deployment)
        await session.commit()
        deployment_id = deployment.id

    refused = await client.delete(f"/api/v1/bundles/{bundle['id']}", headers=admin_headers)
    assert refused.status_code == 409
    assert refused.json()["type"] == "urn:kernex:problem:bundle-in-use"

    async with create_sessionmaker(engine)() as session:
        row = await session.get(Deployment, deployment_id)
        assert row is not None
        row.status = DeploymentStatus.COMPLETED
        session.add(row)
        await session.commit()
    assert (
        await client.delete(f"/api/v1/bundles/{bundle['id']}", headers=admin_headers)
    ).status_code == 204
    kept = await client.get(f"/api/v1/deployments/{deployment_id}", headers=admin_headers)
    assert kept.status_code == 200 and kept.json()["bundle_id"] is None  # history stays
    events = await client.get(
        "/api/v1/audit-events", params={"object_id": bundle["id"]}, headers=admin_headers
    )
    assert [e["action"] for e in events.json()["data"]] == ["bundle.delete", "bundle.upload"]


def files_in(directory: Path, *, but: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file() and p != but)


@pytest.fixture
def bundle_disk(tmp_path: Path, small_disk: Mount) -> Path:
    """The local bundle directory on a 16 MiB disk of its own (mounted before the app starts)."""
    directory = tmp_path / "bundles"
    small_disk(directory, 16 * MiB)
    return directory


@pytest.mark.reliability(
    "Faults",
    "the backend's bundle disk full during an upload (local storage)",
    "the upload answered 503 with Retry-After, no partial file left, stored bundles intact;"
    " with room again the same upload succeeds",
)
@pytest.mark.parametrize("backend_kind", ["local"], indirect=True)
async def test_a_full_bundle_disk_refuses_the_upload_and_leaves_nothing(
    bundle_disk: Path,
    app: FastAPI,
    client: httpx.AsyncClient,
    write_headers: dict[str, str],
    make_release: ReleaseFactory,
) -> None:
    kept = os.urandom(MiB)
    first = await upload(client, write_headers, kept, make_release(kept, version="1.0.0"))
    assert first.status_code == 201, first.text
    filler = fill(bundle_disk)
    payload = os.urandom(4 * MiB)
    release = make_release(payload, version="2.0.0")
    refused = await upload(client, write_headers, payload, release)
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) > 0
    files = files_in(bundle_disk, but=filler)
    assert files == [bundle_key(first.json()["sha256"]).rsplit("/", 1)[-1]], files
    content = await client.get(
        f"/api/v1/bundles/{first.json()['id']}/content", headers=write_headers
    )
    assert content.content == kept
    filler.unlink()
    again = await upload(client, write_headers, payload, release)
    assert again.status_code == 201, again.text

"""Presigned download URLs: they work (with Range), expire, and refuse tampering.

S3 URLs are fetched from the real S3 server over HTTP; local-backend URLs are served by the app.
"""

import asyncio
import datetime as dt
import hashlib
import os
import time
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from kernex_backend.bundles.local_downloads import parse_range
from kernex_backend.bundles.storage import BundleStorage, LocalStorage, bundle_key
from kernex_backend.core.errors import KernexError
from tests.integration.bundles.conftest import ReleaseFactory
from tests.integration.conftest import storage_of


async def fetch(client: httpx.AsyncClient, url: str, **headers: str) -> httpx.Response:
    """GET a download URL: over the network for S3, through the app for the local backend."""
    parts = urlsplit(url)
    if parts.netloc == "kernex.test":
        return await client.get(f"{parts.path}?{parts.query}", headers=headers)
    async with httpx.AsyncClient(timeout=10) as direct:
        return await direct.get(url, headers=headers)


async def uploaded(
    client: httpx.AsyncClient, headers: dict[str, str], make_release: ReleaseFactory
) -> tuple[dict[str, str], bytes]:
    payload = os.urandom(200_000)
    response = await client.post(
        "/api/v1/bundles", content=payload, headers={**headers, **make_release(payload)}
    )
    assert response.status_code == 201, response.text
    return response.json(), payload


async def test_url_works_with_ranges(
    client: httpx.AsyncClient, write_headers: dict[str, str], make_release: ReleaseFactory
) -> None:
    bundle, payload = await uploaded(client, write_headers, make_release)
    answer = await client.post(
        f"/api/v1/bundles/{bundle['id']}/download-url", headers=write_headers
    )
    assert answer.status_code == 200
    url = answer.json()["url"]
    expires_at = dt.datetime.fromisoformat(answer.json()["expires_at"])
    assert (
        dt.timedelta(minutes=14) < expires_at - dt.datetime.now(dt.UTC) <= dt.timedelta(minutes=15)
    )

    whole = await fetch(client, url)
    assert whole.status_code == 200, whole.text
    assert hashlib.sha256(whole.content).hexdigest() == bundle["sha256"]

    part = await fetch(client, url, Range="bytes=1000-1999")
    assert part.status_code == 206
    assert part.content == payload[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(payload)}"
    tail = await fetch(client, url, Range="bytes=150000-")  # resume from an offset
    assert tail.status_code == 206 and tail.content == payload[150000:]


async def test_url_expires_and_refuses_tampering(
    app: FastAPI,
    client: httpx.AsyncClient,
    write_headers: dict[str, str],
    make_release: ReleaseFactory,
) -> None:
    bundle, _ = await uploaded(client, write_headers, make_release)
    other, _ = await uploaded(client, write_headers, lambda p: make_release(p, version="2.0.0"))
    storage: BundleStorage = storage_of(app)
    short = await storage.download_url(bundle_key(bundle["sha256"]), dt.timedelta(seconds=2))
    assert (await fetch(client, short.url)).status_code == 200

    # Pointing a valid signature at another object, or altering the signature, fails.
    swapped = short.url.replace(bundle["sha256"], other["sha256"])
    assert (await fetch(client, swapped)).status_code == 403
    parts = urlsplit(short.url)
    query = parts.query.replace("ignature=", "ignature=AAAA", 1)
    assert (
        await fetch(client, f"{parts.scheme}://{parts.netloc}{parts.path}?{query}")
    ).status_code == 403

    await asyncio.sleep(3.1)
    assert (await fetch(client, short.url)).status_code == 403


async def test_expiry_limits_of_the_api(
    client: httpx.AsyncClient, write_headers: dict[str, str], make_release: ReleaseFactory
) -> None:
    bundle, _ = await uploaded(client, write_headers, make_release)
    path = f"/api/v1/bundles/{bundle['id']}/download-url"
    assert (
        await client.post(path, json={"expires_s": 59}, headers=write_headers)
    ).status_code == 422
    assert (
        await client.post(path, json={"expires_s": 3601}, headers=write_headers)
    ).status_code == 422
    assert (
        await client.post(path, json={"expires_s": 60}, headers=write_headers)
    ).status_code == 200


@pytest.mark.parametrize("backend_kind", ["local"])  # the S3 store serves its own URLs
@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/bundle-downloads/bundles/..%2F..%2Fetc%2Fpasswd",
        "/api/v1/bundle-downloads/bundles/%2E%2E",
        "/api/v1/bundle-downloads/uploads/abc",
        "/api/v1/bundle-downloads/bundles/abc",
    ],
)
async def test_local_download_path_tricks_are_refused(
    app: FastAPI, client: httpx.AsyncClient, path: str
) -> None:
    assert isinstance(storage_of(app), LocalStorage)
    response = await client.get(path, params={"expires": int(time.time()) + 60, "signature": "x"})
    assert response.status_code in (403, 404)
    assert response.headers["content-type"] == "application/problem+json"


def test_range_parsing() -> None:
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=50-500", 100) == (50, 99)
    assert parse_range("bytes=0-1,5-6", 100) is None  # multi-range: whole object
    assert parse_range("items=0-1", 100) is None
    with pytest.raises(KernexError):
        parse_range("bytes=100-", 100)
    with pytest.raises(KernexError):
        parse_range("bytes=-0", 100)

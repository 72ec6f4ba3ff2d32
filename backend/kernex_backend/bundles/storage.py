"""Bundle storage behind one Protocol: any S3 API through the minio SDK, or a local directory.

Objects are content-addressed (`bundles/<sha256>`) and written once. A write makes its object
appear whole or not at all (an S3 multipart upload completes atomically; a local file is renamed
into place), so the upload streams straight to the content address and removes the object again
if the digest does not check out; no row refers to it before it did (see upload.py). The minio
SDK is synchronous: every call runs in a worker thread, and the request body is handed to it
part by part, never held whole.
"""

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import io
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Protocol, TypeVar
from urllib.parse import urlencode

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import Depends
from minio import Minio
from minio.datatypes import Part
from minio.error import S3Error
from urllib3.exceptions import HTTPError as Urllib3Error

from kernex_backend.core.config import StorageSettings
from kernex_backend.core.runtime import component

T = TypeVar("T")

UPLOAD_PREFIX = "uploads/"
BUNDLE_PREFIX = "bundles/"
_CHUNK = 256 * 1024
# Parts of a multipart upload: while up to _S3_PARTS_IN_FLIGHT go to the store in worker threads,
# the event loop keeps receiving the request into the next one, so at most (in flight + 1) parts
# are in memory: 32 MiB however large the bundle (measured in bench/upload_1gib.py).
_S3_PART_SIZE = 8 * 1024 * 1024
_S3_PARTS_IN_FLIGHT = 3


def bundle_key(sha256: str) -> str:
    """The content address of a bundle."""
    return f"{BUNDLE_PREFIX}{sha256}"


class StorageError(RuntimeError):
    """The object store failed or is unreachable."""


class ObjectMissing(StorageError):
    """No object under that key."""


@dataclass(frozen=True, slots=True)
class DownloadUrl:
    """A short-lived bearer URL for one object. Never log it."""

    url: str
    expires_at: dt.datetime


class BundleStorage(Protocol):
    """What the backend needs from an object store."""

    async def ensure_ready(self) -> None:
        """Create the bucket or directory if needed."""

    async def check(self) -> None:
        """Raise StorageError unless the store answers (readiness)."""

    async def write(self, key: str, chunks: AsyncIterator[bytes], size: int) -> None:
        """Store exactly `size` bytes from `chunks` under `key`, which shows them whole or not at
        all; a body that ends early raises StorageError and leaves nothing."""

    async def delete(self, key: str) -> None:
        """Remove an object; a missing one is fine."""

    async def exists(self, key: str) -> bool:
        """Whether an object exists."""

    def read(self, key: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream an object's bytes (or a range of them)."""

    async def download_url(self, key: str, expires: dt.timedelta) -> DownloadUrl:
        """A presigned GET URL valid for `expires`."""


async def _parts(chunks: AsyncIterator[bytes], size: int, part_size: int) -> AsyncIterator[bytes]:
    """The first `size` bytes of `chunks` cut into parts of `part_size` (the last one shorter);
    StorageError if the chunks end before `size` bytes."""
    buffer = bytearray()
    remaining = size
    async for chunk in chunks:
        buffer += chunk
        while len(buffer) >= min(part_size, remaining) > 0:
            take = min(part_size, remaining)
            part = bytes(buffer[:take])
            del buffer[:take]
            remaining -= take
            yield part
        if remaining == 0:
            return
    if remaining:
        raise StorageError(f"the body ended {remaining} bytes short of {size}")


@dataclass
class StorageStats:
    """Calls to the object store by operation: how many, how long in all, how many failed
    (exported as kernex_storage_operation_duration_seconds and kernex_storage_errors_total)."""

    calls: Counter[str] = field(default_factory=Counter)
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    errors: Counter[str] = field(default_factory=Counter)

    def observe(self, operation: str, seconds: float, *, failed: bool) -> None:
        """Record one call."""
        self.calls[operation] += 1
        self.seconds[operation] += seconds
        if failed:
            self.errors[operation] += 1


def s3_client(settings: StorageSettings) -> Minio:
    """A minio SDK client for the configured store (bundles, and backups beside them)."""
    return Minio(
        settings.endpoint,
        access_key=settings.access_key.get_secret_value(),
        secret_key=settings.secret_key.get_secret_value(),
        secure=settings.secure,
        region=settings.region,
    )


class S3Storage:
    """Any S3-compatible store (MinIO, SeaweedFS, AWS S3) through the minio SDK."""

    def __init__(self, client: Minio, bucket: str, *, region_known: bool = False) -> None:
        self._client = client
        self._bucket = bucket
        # Presigning is local arithmetic (~30 us) once the SDK knows the bucket's region; only
        # the first call may have to ask the store. A rollout presigns a URL per device, and
        # a hop to a worker thread costs several times the signing itself, so once the region
        # is known (configured, or learnt by the first call) URLs are signed inline.
        self._presign_inline = region_known
        self.stats = StorageStats()

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> "S3Storage":
        """Build the client from settings."""
        client = s3_client(settings)
        return cls(client, settings.bucket, region_known=settings.region is not None)

    async def _call(self, fn: Callable[[], T], operation: str) -> T:
        started = time.perf_counter()
        failed = True
        try:
            result = await anyio.to_thread.run_sync(fn)
            failed = False
            return result
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                failed = False  # an answer, not a failure of the store
                raise ObjectMissing(exc.code) from None
            raise StorageError(f"object store error: {exc.code}") from None
        except (OSError, Urllib3Error) as exc:  # urllib3 gives up with MaxRetryError
            raise StorageError(f"object store unreachable: {type(exc).__name__}") from None
        finally:
            self.stats.observe(operation, time.perf_counter() - started, failed=failed)

    async def ensure_ready(self) -> None:
        def create() -> None:
            if not self._client.bucket_exists(self._bucket):
                with contextlib.suppress(S3Error):  # a concurrent replica may have made it
                    self._client.make_bucket(self._bucket)

        await self._call(create, "ensure_bucket")

    async def check(self) -> None:
        await self._call(lambda: self._client.bucket_exists(self._bucket), "check")

    async def write(self, key: str, chunks: AsyncIterator[bytes], size: int) -> None:
        parts = _parts(chunks, size, _S3_PART_SIZE)
        if size <= _S3_PART_SIZE:
            data = b"".join([part async for part in parts])
            await self._call(
                lambda: self._client.put_object(self._bucket, key, io.BytesIO(data), size), "put"
            )
            return
        # minio's put_object reads the body in its own thread and, with parallel parts, leaves
        # its pool's threads behind when the body fails mid-way; the SDK's multipart calls are
        # driven from here instead, so a failed upload is aborted and leaves no thread or part.
        headers: dict[str, str | list[str] | tuple[str]] = {
            "Content-Type": "application/octet-stream"
        }
        upload_id = await self._call(
            lambda: self._client._create_multipart_upload(self._bucket, key, headers),
            "create_multipart",
        )
        try:
            etags = await self._send_parts(key, upload_id, parts)
            done = [Part(number, etag) for number, etag in sorted(etags.items())]
            await self._call(
                lambda: self._client._complete_multipart_upload(self._bucket, key, upload_id, done),
                "complete_multipart",
            )
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(StorageError):
                await self._call(
                    lambda: self._client._abort_multipart_upload(self._bucket, key, upload_id),
                    "abort_multipart",
                )
            raise

    async def _send_parts(
        self, key: str, upload_id: str, parts: AsyncIterator[bytes]
    ) -> dict[int, str]:
        """Upload `parts` with up to _S3_PARTS_IN_FLIGHT at once; their etags by part number."""
        etags: dict[int, str] = {}
        in_flight: set[asyncio.Task[None]] = set()

        async def send(number: int, data: bytes) -> None:
            etags[number] = await self._call(
                lambda: self._client._upload_part(self._bucket, key, data, None, upload_id, number),
                "put_part",
            )

        try:
            number = 0
            async for part in parts:
                while len(in_flight) >= _S3_PARTS_IN_FLIGHT:
                    finished, in_flight = await asyncio.wait(
                        in_flight, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in finished:
                        task.result()  # a failed part fails the upload now
                number += 1
                in_flight.add(asyncio.create_task(send(number, part)))
            while in_flight:
                finished, in_flight = await asyncio.wait(in_flight)
                for task in finished:
                    task.result()
        finally:
            for task in in_flight:
                task.cancel()  # a part already in its thread finishes first
            await asyncio.gather(*in_flight, return_exceptions=True)
        return etags

    async def delete(self, key: str) -> None:
        with contextlib.suppress(ObjectMissing):
            await self._call(lambda: self._client.remove_object(self._bucket, key), "delete")

    async def exists(self, key: str) -> bool:
        try:
            await self._call(lambda: self._client.stat_object(self._bucket, key), "stat")
        except ObjectMissing:
            return False
        return True

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        response = await self._call(
            lambda: self._client.get_object(self._bucket, key, offset=offset, length=length or 0),
            "get",
        )
        stream = response.stream(_CHUNK)
        try:
            while chunk := await anyio.to_thread.run_sync(lambda: next(stream, b"")):
                yield chunk
        finally:
            response.close()
            response.release_conn()

    async def download_url(self, key: str, expires: dt.timedelta) -> DownloadUrl:
        expires_at = dt.datetime.now(dt.UTC) + expires

        def presign() -> str:
            return self._client.presigned_get_object(self._bucket, key, expires=expires)

        if self._presign_inline:
            return DownloadUrl(presign(), expires_at)
        url = await self._call(presign, "presign")
        self._presign_inline = True  # the SDK has cached the bucket's region
        return DownloadUrl(url, expires_at)


class LocalStorage:
    """A directory on the backend host; the backend serves HMAC-signed, expiring URLs itself."""

    def __init__(self, root: Path, *, public_base_url: str, signing_key: bytes) -> None:
        self._root = root
        self._base_url = public_base_url.rstrip("/")
        self._signing_key = signing_key

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> "LocalStorage":
        """Build from settings."""
        return cls(
            settings.local_dir,
            public_base_url=settings.public_base_url,
            signing_key=settings.download_signing_key.get_secret_value().encode(),
        )

    def path_for(self, key: str) -> Path:
        """The file of a key; refuses anything that is not one of our key shapes."""
        prefix, _, name = key.partition("/")
        if (
            f"{prefix}/" not in (UPLOAD_PREFIX, BUNDLE_PREFIX)
            or not name.isalnum()
            or len(name) > 64
        ):
            raise ObjectMissing(key)
        return self._root / prefix / name

    async def ensure_ready(self) -> None:
        for prefix in (UPLOAD_PREFIX, BUNDLE_PREFIX):
            await anyio.Path(self._root / prefix).mkdir(parents=True, exist_ok=True)

    async def check(self) -> None:
        if not await anyio.Path(self._root / BUNDLE_PREFIX).is_dir():
            raise StorageError(f"bundle directory {self._root} is missing")

    async def write(self, key: str, chunks: AsyncIterator[bytes], size: int) -> None:
        # Written beside, then renamed into place: the final name never shows a partial file.
        target = self.path_for(key)
        path = self.path_for(f"{UPLOAD_PREFIX}{uuid.uuid4().hex}")
        written = 0
        try:
            async with await anyio.open_file(path, "wb") as handle:
                async for chunk in chunks:
                    written += len(chunk)
                    await handle.write(chunk)
                await handle.flush()
                await anyio.to_thread.run_sync(os.fsync, handle.wrapped.fileno())
            if written != size:
                raise StorageError(f"the body ended {size - written} bytes short of {size}")
            os.replace(path, target)
        finally:
            path.unlink(missing_ok=True)

    async def delete(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    async def size(self, key: str) -> int:
        """An object's size in bytes."""
        try:
            return self.path_for(key).stat().st_size
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self.path_for(key)
        if not path.is_file():
            raise ObjectMissing(key)
        remaining = length
        async with await anyio.open_file(path, "rb") as handle:
            await handle.seek(offset)
            while remaining is None or remaining > 0:
                chunk = await handle.read(_CHUNK if remaining is None else min(_CHUNK, remaining))
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def _signature(self, key: str, expires: int) -> str:
        mac = hmac.new(self._signing_key, f"{key}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def verify(self, key: str, expires: int, signature: str, *, now: float) -> bool:
        """Whether a download URL's signature is ours and it has not expired."""
        expected = self._signature(key, expires)
        return hmac.compare_digest(expected, signature) and now < expires

    async def download_url(self, key: str, expires: dt.timedelta) -> DownloadUrl:
        expires_at = dt.datetime.now(dt.UTC) + expires
        deadline = int(expires_at.timestamp())
        query = urlencode({"expires": deadline, "signature": self._signature(key, deadline)})
        return DownloadUrl(f"{self._base_url}/api/v1/bundle-downloads/{key}?{query}", expires_at)


def create_storage(settings: StorageSettings) -> S3Storage | LocalStorage:
    """The configured storage backend."""
    if settings.backend == "local":
        return LocalStorage.from_settings(settings)
    return S3Storage.from_settings(settings)


# The bundle store of this process, as a route dependency.
StorageDep = Annotated[BundleStorage, Depends(component(BundleStorage))]

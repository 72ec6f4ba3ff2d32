"""Bundle storage behind one Protocol: any S3 API through the minio SDK, or a local directory.

Objects are content-addressed (`bundles/<sha256>`) and written once. Uploads stream into a
temporary key and are moved under their digest only after the digest checked out, so a bad
upload never touches a released object. The minio SDK is synchronous: every call runs in a
worker thread, and the request body is handed to it chunk by chunk, never held whole.
"""

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
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
from minio.commonconfig import CopySource
from minio.error import S3Error
from urllib3.exceptions import HTTPError as Urllib3Error

from kernex_backend.core.config import StorageSettings
from kernex_backend.core.runtime import component

T = TypeVar("T")

UPLOAD_PREFIX = "uploads/"
BUNDLE_PREFIX = "bundles/"
_CHUNK = 256 * 1024
_S3_PART_SIZE = 8 * 1024 * 1024


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

    async def write_temporary(self, chunks: AsyncIterator[bytes], size: int) -> str:
        """Store exactly `size` bytes from `chunks` under a new temporary key; returns the key."""

    async def promote(self, temporary_key: str, key: str) -> None:
        """Move a verified upload to its final key (kept as is if that key already exists)."""

    async def delete(self, key: str) -> None:
        """Remove an object; a missing one is fine."""

    async def exists(self, key: str) -> bool:
        """Whether an object exists."""

    def read(self, key: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream an object's bytes (or a range of them)."""

    async def download_url(self, key: str, expires: dt.timedelta) -> DownloadUrl:
        """A presigned GET URL valid for `expires`."""


class _SyncReader:
    """A file-like object for minio (in a worker thread) over an async chunk iterator.

    Each read hops to the event loop once and gathers as many request chunks as minio asked for
    (one 8 MiB part), because a hop costs far more than copying the bytes. Overlapping receiving
    with uploading through a queue of parts was measured too: no faster on 2 cores (the path is
    CPU-bound) and three times the memory, so this stays simple (see BENCHMARKS.md).
    """

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()
        self._done = False

    async def _fill(self, wanted: int) -> None:
        while not self._done and (wanted < 0 or len(self._buffer) < wanted):
            try:
                self._buffer += await anext(self._chunks)
            except StopAsyncIteration:
                self._done = True

    def read(self, size: int = -1) -> bytes:
        if not self._done and (size < 0 or len(self._buffer) < size):
            anyio.from_thread.run(self._fill, size)
        if size < 0:
            size = len(self._buffer)
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out


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

    async def write_temporary(self, chunks: AsyncIterator[bytes], size: int) -> str:
        key = f"{UPLOAD_PREFIX}{uuid.uuid4().hex}"
        reader = _SyncReader(chunks)
        await self._call(
            lambda: self._client.put_object(
                self._bucket,
                key,
                reader,  # type: ignore[arg-type]  # minio only calls read(n)
                length=size,
                part_size=_S3_PART_SIZE,
                num_parallel_uploads=1,  # one part in memory at a time
            ),
            "put",
        )
        return key

    async def promote(self, temporary_key: str, key: str) -> None:
        if not await self.exists(key):
            await self._call(
                lambda: self._client.copy_object(
                    self._bucket, key, CopySource(self._bucket, temporary_key)
                ),
                "copy",
            )
        await self.delete(temporary_key)

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

    async def write_temporary(self, chunks: AsyncIterator[bytes], size: int) -> str:
        key = f"{UPLOAD_PREFIX}{uuid.uuid4().hex}"
        path = self.path_for(key)
        written = 0
        try:
            async with await anyio.open_file(path, "wb") as handle:
                async for chunk in chunks:
                    written += len(chunk)
                    await handle.write(chunk)
                await handle.flush()
                await anyio.to_thread.run_sync(os.fsync, handle.wrapped.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if written != size:
            path.unlink(missing_ok=True)
            raise StorageError(f"stream having not enough data; expected {size}, got {written}")
        return key

    async def promote(self, temporary_key: str, key: str) -> None:
        source, target = self.path_for(temporary_key), self.path_for(key)
        if target.exists():
            source.unlink(missing_ok=True)
        else:
            os.replace(source, target)

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

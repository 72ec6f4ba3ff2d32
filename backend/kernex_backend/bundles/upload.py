"""Streaming bundle upload: verify the release signature, stream to the content address while
hashing, check digest and size, then record the row.

The upload holds the content address's lock (an advisory lock in its transaction) from before
the first byte to its commit, and a delete takes the same lock, so they never interleave. Under
it: content stored already is only hashed, never written again; new content streams straight to
its final key, as fast as a direct upload, because no row refers to that key until the digest
checked out and the row committed. Whatever fails, nothing is left behind: an object this upload
wrote stays only when a row refers to it.
"""

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.audit import service as audit
from kernex_backend.bundles.models import Bundle
from kernex_backend.bundles.service import delete_object_if_unreferenced, lock_content
from kernex_backend.bundles.storage import BundleStorage, StorageError, bundle_key
from kernex_backend.core.errors import (
    BadRequest,
    Conflict,
    InvalidInput,
    PayloadTooLarge,
    ServiceUnavailable,
)
from kernex_protocol.manifest import ManifestInvalid, SignatureInvalid, SignedRelease, verify

log = structlog.get_logger(__name__)


class BundleExists(Conflict):
    """(name, version) is released already."""

    slug = "bundle-exists"
    title = "Bundle already exists"


class SignatureRefused(InvalidInput):
    """The release signature is missing, unknown or wrong."""

    slug = "bundle-signature-invalid"
    title = "Release signature refused"


class ContentMismatch(InvalidInput):
    """The uploaded bytes are not what the manifest describes."""

    slug = "bundle-content-mismatch"
    title = "Bundle content does not match its manifest"


class _TooLong(Exception):
    pass


class _Measured:
    """Passes chunks through while hashing and counting; stops past `limit` bytes."""

    def __init__(self, chunks: AsyncIterator[bytes], limit: int) -> None:
        self._chunks = chunks
        self._limit = limit
        self.sha256 = hashlib.sha256()
        self.size = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            if not chunk:
                continue
            self.size += len(chunk)
            if self.size > self._limit:
                raise _TooLong
            self.sha256.update(chunk)
            yield chunk


async def _store_and_measure(
    storage: BundleStorage, measured: _Measured, key: str | None, size: int
) -> None:
    """Stream the body to `key` (or, with None, only through the hash). A body longer or
    shorter than `size` is refused, and then nothing is left under `key`."""
    chunks = aiter(measured)
    try:
        if key is not None:
            await storage.write(key, chunks, size)
        # A store that knows the length (S3) stops reading at `size`: whatever follows must
        # still be read, and is refused by the limit if it holds a single byte.
        async for _ in chunks:
            pass
    except _TooLong:
        raise ContentMismatch(f"the body is longer than the manifest's {size} bytes") from None
    except StorageError as exc:
        if measured.size < size:
            raise ContentMismatch(f"the body ended after {measured.size} of {size} bytes") from None
        raise ServiceUnavailable(str(exc)) from None
    if measured.size < size:
        raise ContentMismatch(f"the body ended after {measured.size} of {size} bytes")


def parse_release(header: str | None) -> SignedRelease:
    """The signed release from the upload's header (JSON, as kernex-release writes it)."""
    if not header:
        raise BadRequest(
            "missing Kernex-Release header: the signed release JSON from `kernex-release sign`"
        )
    try:
        return SignedRelease.from_json(header)
    except ManifestInvalid as exc:
        raise InvalidInput(f"release manifest: {exc}") from None


@dataclass(frozen=True, slots=True)
class TrustedReleaseKeys:
    """The release public keys uploads must be signed by, by key id."""

    keys: dict[str, Ed25519PublicKey]


def check_signature(
    release: SignedRelease, trusted: dict[str, Ed25519PublicKey], *, allow_unsigned: bool
) -> str | None:
    """The key id that signed the release; None only for an allowed unsigned upload."""
    if release.signature is None and allow_unsigned:
        log.warning(
            "unsigned_bundle_accepted", name=release.manifest.name, version=release.manifest.version
        )
        return None
    try:
        return verify(release, trusted)
    except SignatureInvalid as exc:
        raise SignatureRefused(str(exc)) from None


async def upload(
    *,
    session: AsyncSession,
    storage: BundleStorage,
    release: SignedRelease,
    key_id: str | None,
    body: AsyncIterator[bytes],
    declared_length: int | None,
    max_bytes: int,
    actor: str,
) -> Bundle:
    """Store a verified release and record it."""
    manifest = release.manifest
    if manifest.size > max_bytes:
        raise PayloadTooLarge(f"bundles are limited to {max_bytes} bytes", max_bytes=max_bytes)
    if declared_length is not None and declared_length != manifest.size:
        raise ContentMismatch(
            f"the body is {declared_length} bytes but the manifest says {manifest.size}"
        )
    existing = await session.exec(
        select(Bundle.id).where(Bundle.name == manifest.name, Bundle.version == manifest.version)
    )
    if existing.first() is not None:
        raise BundleExists(f"{manifest.name} {manifest.version} is released already")

    measured = _Measured(body, manifest.size)
    final = bundle_key(manifest.sha256)
    await lock_content(session=session, storage_key=final)
    written = False  # whether this upload wrote `final`, which it then owns until the commit
    try:
        if not await storage.exists(final):
            written = True  # a failed write leaves nothing, and deleting nothing is fine
            await _store_and_measure(storage, measured, final, manifest.size)
        else:
            await _store_and_measure(storage, measured, None, manifest.size)
        if measured.sha256.hexdigest() != manifest.sha256:
            raise ContentMismatch("the body's sha256 differs from the signed manifest")

        bundle = Bundle(
            name=manifest.name,
            version=manifest.version,
            device_type=manifest.device_type,
            sha256=manifest.sha256,
            size_bytes=manifest.size,
            storage_key=final,
            signature=release.signature,
            signing_key_id=key_id,
            manifest_created_at=manifest.created_at,
            created_by=actor,
        )
        session.add(bundle)
        audit.record(
            session,
            actor=actor,
            action="bundle.upload",
            object_type="bundle",
            object_id=str(bundle.id),
            details={
                "name": manifest.name,
                "version": manifest.version,
                "sha256": manifest.sha256,
                "size": manifest.size,
                "key_id": key_id,
            },
        )
        ours, written = written, False  # from the commit on, the rows decide
        try:
            await session.commit()  # ends the transaction, and with it the content lock
        except BaseException as exc:
            await session.rollback()
            if ours:  # the bytes checked out, and another release may share them by now
                await delete_object_if_unreferenced(
                    session=session, storage=storage, storage_key=final
                )
            if isinstance(exc, IntegrityError):
                raise BundleExists(
                    f"{manifest.name} {manifest.version} is released already"
                ) from None
            raise
        return bundle
    finally:
        if written:
            # Still under the lock, so no other upload can have found and kept this object:
            # whatever it holds (wrong bytes, or right ones without a row), it goes.
            await storage.delete(final)

"""Bundle endpoints: upload, list, get, content, download URLs, delete."""

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from kernex_backend.bundles import service, upload
from kernex_backend.bundles.schemas import BundlePublic, BundlesPublic
from kernex_backend.bundles.storage import StorageDep
from kernex_backend.bundles.upload import TrustedReleaseKeys
from kernex_backend.core.access import ReadAccess, WriteAccess
from kernex_backend.core.pagination import PageDep
from kernex_backend.core.runtime import SessionDep, SettingsDep, component
from kernex_protocol.manifest import MAX_SIGNED_RELEASE_BYTES

router = APIRouter(prefix="/bundles", tags=["bundles"])


def _public(bundle: object) -> BundlePublic:
    return BundlePublic.model_validate(bundle, from_attributes=True)


ReleaseKeysDep = Annotated[TrustedReleaseKeys, Depends(component(TrustedReleaseKeys))]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BundlePublic,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_bundle(
    request: Request,
    session: SessionDep,
    principal: WriteAccess,
    settings: SettingsDep,
    storage: StorageDep,
    release_keys: ReleaseKeysDep,
    kernex_release: Annotated[
        str,
        Header(
            description="the signed release JSON written by `kernex-release sign`",
            min_length=1,
            max_length=MAX_SIGNED_RELEASE_BYTES,
        ),
    ],
    # The transport's own header, set by every HTTP client from the body: not an API parameter
    # (the size limit is the 413 response's).
    content_length: Annotated[int | None, Header(include_in_schema=False)] = None,
) -> BundlePublic:
    """Upload a bundle as the raw request body, with its signed release manifest in the
    `Kernex-Release` header. The body is streamed to storage and hashed on the way; it is
    accepted only if its sha256 and size match the manifest and the signature verifies against a
    trusted release key."""
    release = upload.parse_release(kernex_release)
    key_id = upload.check_signature(
        release, release_keys.keys, allow_unsigned=settings.release.allow_unsigned
    )
    bundle = await upload.upload(
        session=session,
        storage=storage,
        release=release,
        key_id=key_id,
        body=request.stream(),
        declared_length=content_length,
        max_bytes=settings.storage.max_bundle_bytes,
        actor=principal.actor,
    )
    return _public(bundle)


@router.get("", response_model=BundlesPublic)
async def list_bundles(
    session: SessionDep,
    _: ReadAccess,
    page: PageDep,
    name: Annotated[str | None, Query(max_length=64)] = None,
    device_type: Annotated[str | None, Query(max_length=64)] = None,
) -> BundlesPublic:
    """List bundles, newest first."""
    bundles, count = await service.list_bundles(
        session=session, page=page, name=name, device_type=device_type
    )
    return BundlesPublic(data=[_public(b) for b in bundles], count=count)


@router.get("/{bundle_id}", response_model=BundlePublic)
async def get_bundle(bundle_id: uuid.UUID, session: SessionDep, _: ReadAccess) -> BundlePublic:
    """One bundle."""
    return _public(await service.get(session=session, bundle_id=bundle_id))


@router.get(
    "/{bundle_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def download_bundle(
    bundle_id: uuid.UUID, storage: StorageDep, session: SessionDep, _: ReadAccess
) -> StreamingResponse:
    """Stream a bundle's content back (operators; devices use presigned URLs)."""
    bundle = await service.get(session=session, bundle_id=bundle_id)
    return StreamingResponse(
        storage.read(bundle.storage_key),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(bundle.size_bytes),
            "Content-Disposition": f'attachment; filename="{bundle.name}-{bundle.version}.bin"',
            "X-Content-SHA256": bundle.sha256,
        },
    )


class DownloadUrlRequest(BaseModel):
    """How long the URL should live (bounded by the server's limits)."""

    expires_s: int | None = Field(default=None, ge=60, le=3600)


class DownloadUrlPublic(BaseModel):
    """A presigned URL: a bearer credential until it expires."""

    url: str
    expires_at: dt.datetime


@router.post("/{bundle_id}/download-url", response_model=DownloadUrlPublic)
async def create_download_url(
    bundle_id: uuid.UUID,
    settings: SettingsDep,
    storage: StorageDep,
    session: SessionDep,
    _: ReadAccess,
    body: DownloadUrlRequest | None = None,
) -> DownloadUrlPublic:
    """A short-lived presigned GET URL for the bundle's content (supports HTTP Range)."""
    bundle = await service.get(session=session, bundle_id=bundle_id)
    seconds = (body.expires_s if body else None) or settings.storage.url_expiry_s
    url = await service.download_url(
        storage=storage, bundle=bundle, expires=dt.timedelta(seconds=seconds)
    )
    return DownloadUrlPublic(url=url.url, expires_at=url.expires_at)


@router.delete("/{bundle_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_bundle(
    bundle_id: uuid.UUID, storage: StorageDep, session: SessionDep, principal: WriteAccess
) -> None:
    """Delete a bundle that no unfinished deployment uses (409 otherwise)."""
    await service.delete(
        session=session, storage=storage, bundle_id=bundle_id, actor=principal.actor
    )

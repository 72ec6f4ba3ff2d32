"""Bundle queries, deletion and download links."""

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.audit import service as audit
from kernex_backend.bundles.models import Bundle
from kernex_backend.bundles.storage import BundleStorage, DownloadUrl
from kernex_backend.bundles.usage import UNFINISHED_DEPLOYMENT_STATUSES, deployments
from kernex_backend.core.errors import Conflict, NotFound
from kernex_backend.core.pagination import Page, paginate


class BundleNotFound(NotFound):
    """No bundle has that id."""

    slug = "bundle-not-found"
    title = "Bundle not found"


class BundleInUse(Conflict):
    """An unfinished deployment still needs the bundle."""

    slug = "bundle-in-use"
    title = "Bundle in use"


async def get(*, session: AsyncSession, bundle_id: uuid.UUID, for_update: bool = False) -> Bundle:
    """The bundle with `bundle_id`."""
    bundle = await session.get(Bundle, bundle_id, with_for_update=for_update)
    if bundle is None:
        raise BundleNotFound(f"no bundle with id {bundle_id}")
    return bundle


async def list_bundles(
    *, session: AsyncSession, page: Page, name: str | None = None, device_type: str | None = None
) -> tuple[list[Bundle], int]:
    """Bundles, newest first."""
    conditions: list[Any] = []
    if name is not None:
        conditions.append(col(Bundle.name) == name)
    if device_type is not None:
        conditions.append(col(Bundle.device_type) == device_type)
    return await paginate(
        session,
        Bundle,
        page,
        where=conditions,
        order_by=[col(Bundle.created_at).desc(), col(Bundle.id)],
    )


async def unfinished_deployments(*, session: AsyncSession, bundle_id: uuid.UUID) -> list[uuid.UUID]:
    """Ids of deployments of this bundle that are not finished."""
    rows = await session.exec(
        sa.select(deployments.c.id).where(  # type: ignore[call-overload]
            deployments.c.bundle_id == bundle_id,
            deployments.c.status.in_(UNFINISHED_DEPLOYMENT_STATUSES),
        )
    )
    return list(rows.scalars())


# The class of the advisory locks on content addresses (two-key form, so apart from the
# single-key locks of retention, partitions and migrations).
_CONTENT_LOCK_CLASS = 0x4B42  # "KB"


async def lock_content(*, session: AsyncSession, storage_key: str) -> None:
    """Hold the lock on one content address until the session's transaction ends, so an upload
    writing the object and a delete removing it never interleave (other addresses go on)."""
    await session.exec(
        select(sa.func.pg_advisory_xact_lock(_CONTENT_LOCK_CLASS, sa.func.hashtext(storage_key)))
    )


async def delete_object_if_unreferenced(
    *, session: AsyncSession, storage: BundleStorage, storage_key: str
) -> bool:
    """Remove an object no bundle row refers to any more (content is shared by digest). Commits
    the session's transaction, which must hold no unsaved changes, to release the lock."""
    await lock_content(session=session, storage_key=storage_key)
    still_used = await session.exec(select(Bundle.id).where(Bundle.storage_key == storage_key))
    removed = still_used.first() is None
    if removed:
        await storage.delete(storage_key)
    await session.commit()
    return removed


async def delete_row(*, session: AsyncSession, bundle: Bundle, actor: str, reason: str) -> None:
    """Delete a bundle's row with its audit event, in the caller's transaction (the object is
    removed after commit, see delete_object_if_unreferenced)."""
    await session.delete(bundle)
    audit.record(
        session,
        actor=actor,
        action="bundle.delete",
        object_type="bundle",
        object_id=str(bundle.id),
        details={
            "name": bundle.name,
            "version": bundle.version,
            "sha256": bundle.sha256,
            "reason": reason,
        },
    )


async def delete(
    *,
    session: AsyncSession,
    storage: BundleStorage,
    bundle_id: uuid.UUID,
    actor: str,
    reason: str = "api",
) -> Bundle:
    """Delete a bundle nobody needs: its row, its audit event, then its object."""
    bundle = await get(session=session, bundle_id=bundle_id, for_update=True)
    blocking = await unfinished_deployments(session=session, bundle_id=bundle_id)
    if blocking:
        raise BundleInUse(
            f"{len(blocking)} unfinished deployment(s) use this bundle; "
            "finish or cancel them first",
            deployments=[str(d) for d in blocking],
        )
    await delete_row(session=session, bundle=bundle, actor=actor, reason=reason)
    await session.commit()
    await delete_object_if_unreferenced(
        session=session, storage=storage, storage_key=bundle.storage_key
    )
    return bundle


async def download_url(
    *, storage: BundleStorage, bundle: Bundle, expires: dt.timedelta
) -> DownloadUrl:
    """A presigned URL for the bundle's content."""
    return await storage.download_url(bundle.storage_key, expires)

"""Bundle queries."""

import uuid
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.bundles.models import Bundle
from kernex_backend.core.errors import NotFound
from kernex_backend.core.pagination import Page


class BundleNotFound(NotFound):
    """No bundle has that id."""

    slug = "bundle-not-found"
    title = "Bundle not found"


async def get(*, session: AsyncSession, bundle_id: uuid.UUID) -> Bundle:
    """The bundle with `bundle_id`."""
    bundle = await session.get(Bundle, bundle_id)
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
    count = (
        await session.exec(select(sa.func.count()).select_from(Bundle).where(*conditions))
    ).one()
    rows = await session.exec(
        select(Bundle)
        .where(*conditions)
        .order_by(col(Bundle.created_at).desc(), col(Bundle.id))
        .limit(page.limit)
        .offset(page.offset)
    )
    return list(rows), count

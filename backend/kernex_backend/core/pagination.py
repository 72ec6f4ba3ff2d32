"""Page parameters shared by every list endpoint, with a hard cap on the page size."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import sqlalchemy as sa
from fastapi import Depends, Query
from sqlmodel import SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.core.errors import InvalidInput
from kernex_backend.core.runtime import SettingsDep

M = TypeVar("M", bound=SQLModel)


@dataclass(frozen=True, slots=True)
class Page:
    """A window into a sorted result."""

    limit: int
    offset: int


async def _page(  # async: no I/O, so no thread hop (see core/runtime.py)
    settings: SettingsDep,
    limit: Annotated[
        int | None, Query(ge=1, description="page size (capped by the server)")
    ] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Page:
    api = settings.api
    if limit is None:
        limit = api.page_size_default
    if limit > api.page_size_max:
        raise InvalidInput(
            f"limit {limit} exceeds the maximum page size of {api.page_size_max}",
            max_limit=api.page_size_max,
        )
    return Page(limit=limit, offset=offset)


PageDep = Annotated[Page, Depends(_page)]


async def paginate(
    session: AsyncSession,
    model: type[M],
    page: Page,
    *,
    where: Sequence[Any] = (),
    order_by: Sequence[Any],
) -> tuple[list[M], int]:
    """One page of `model` rows matching `where` in `order_by` order, and how many match in all:
    what every list endpoint answers (`data`, `count`)."""
    count = (await session.exec(select(sa.func.count()).select_from(model).where(*where))).one()
    rows = await session.exec(
        select(model).where(*where).order_by(*order_by).limit(page.limit).offset(page.offset)
    )
    return list(rows), count

"""Page parameters shared by every list endpoint, with a hard cap on the page size."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request

from kernex_backend.core.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class Page:
    """A window into a sorted result."""

    limit: int
    offset: int


def _page(
    request: Request,
    limit: Annotated[
        int | None, Query(ge=1, description="page size (capped by the server)")
    ] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Page:
    api = request.app.state.settings.api
    if limit is None:
        limit = api.page_size_default
    if limit > api.page_size_max:
        raise InvalidInput(
            f"limit {limit} exceeds the maximum page size of {api.page_size_max}",
            max_limit=api.page_size_max,
        )
    return Page(limit=limit, offset=offset)


PageDep = Annotated[Page, Depends(_page)]

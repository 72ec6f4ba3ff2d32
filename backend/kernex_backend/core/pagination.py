"""Page parameters shared by every list endpoint, with a hard cap on the page size."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query

from kernex_backend.core.errors import InvalidInput
from kernex_backend.core.runtime import SettingsDep


@dataclass(frozen=True, slots=True)
class Page:
    """A window into a sorted result."""

    limit: int
    offset: int


def _page(
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

"""A request-wide rule the schema cannot state for every parameter: no NUL character anywhere
in the path or the query. PostgreSQL cannot hold one in text, so a NUL that reached a query
would fail as a server error; here it is a 422 naming the parameter."""

from fastapi import Request

from kernex_backend.core.errors import InvalidInput


async def refuse_nul(request: Request) -> None:
    """Refuse a NUL in the path or in any query parameter's name or value."""
    if "\x00" in request.url.path:
        raise InvalidInput("the path holds a NUL character")
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            raise InvalidInput(f"query parameter {name[:40]!r} holds a NUL character")

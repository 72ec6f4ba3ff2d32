"""Every route and every dependency of the API is async.

FastAPI runs a plain `def` endpoint or dependency in its thread pool: a thread hop per call, per
request. Measured on the device list (bench: GET /devices?limit=50 over 10,000 devices), four
such hops per request cost about a quarter of the request's CPU. Work that blocks belongs in an
explicit `asyncio.to_thread`, not in a sync dependency.
"""

import inspect
from collections.abc import Callable, Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts

from kernex_backend.main import create_app
from tests.conftest import make_settings


def is_async(call: Callable[..., Any]) -> bool:
    """A coroutine function, an async generator function, or an object with an async __call__."""
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return True
    method = getattr(call, "__call__", None)  # noqa: B004 - an instance's own __call__
    return (
        not inspect.isfunction(call)
        and method is not None
        and (inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method))
    )


def dependencies(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from dependencies(sub)


def test_no_route_or_dependency_runs_in_the_thread_pool() -> None:
    app = create_app(make_settings("postgresql+asyncpg://nobody@127.0.0.1:1/none"))
    # What FastAPI's own OpenAPI generation walks: every route with its effective dependencies.
    routes = [r for r in iter_route_contexts(app.routes) if getattr(r, "dependant", None)]
    assert len(routes) > 20  # the API's routes, not an empty app
    sync = sorted(
        {
            f"{route.path}: {getattr(call, '__qualname__', repr(call))}"
            for route in routes
            for call in [route.endpoint, *dependencies(route.dependant)]
            if call is not None and not is_async(call)
        }
    )
    assert sync == [], "sync routes or dependencies (each a thread hop per request):\n" + "\n".join(
        sync
    )

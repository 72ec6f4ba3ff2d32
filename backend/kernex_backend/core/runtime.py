"""The typed runtime of one backend process, and the FastAPI dependencies that read it.

One factory (kernex_backend/composition.py) builds a Runtime for `serve`, `worker` and the
tests: the settings, the engine and session maker, and the components each domain needs
(bundle storage, the PKI, release keys, the notice service when the bridge runs...). Routers
never reach into `app.state`: they declare what they need as an `Annotated` dependency, built
here from the component's type, so mypy knows what they get and a missing component is a clear
error instead of an AttributeError. This module is the only place that touches `app.state`.

Components are keyed by their type. An optional component (the PKI when no CA is configured,
the notice service when the bridge is off) is simply absent: `optional_component` gives None.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, TypeVar, cast

from fastapi import Depends, FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.core.config import Settings

T = TypeVar("T")
# A readiness check: None when fine, else what is wrong (see core/health.py).
ReadinessCheck = Callable[[], Awaitable[str | None]]


@dataclass
class Runtime:
    """Everything one process has built, typed."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    components: dict[type, object] = field(default_factory=dict)
    # Named readiness checks beyond the database (bundle storage, device traffic).
    readiness: dict[str, ReadinessCheck] = field(default_factory=dict)

    def provide(self, kind: type[T], value: T) -> None:
        """Register `value` as the component of type `kind`."""
        self.components[kind] = value

    def get(self, kind: type[T]) -> T:
        """The component of type `kind`; LookupError if this process has none."""
        try:
            return cast("T", self.components[kind])
        except KeyError:
            raise LookupError(f"this process has no {kind.__name__}") from None

    def find(self, kind: type[T]) -> T | None:
        """The component of type `kind`, or None if this process has none."""
        return cast("T | None", self.components.get(kind))


def attach(app: FastAPI, runtime: Runtime) -> None:
    """Make `runtime` the one the app's dependencies read."""
    app.state.runtime = runtime


def runtime_of(app: FastAPI) -> Runtime:
    """The runtime attached to `app` (the lifespan, the tests)."""
    runtime = getattr(app.state, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise RuntimeError("the app has no runtime: it is attached in the lifespan")
    return runtime


async def get_runtime(request: Request) -> Runtime:
    """FastAPI dependency: this process's runtime. (Every dependency that does no I/O is
    `async def`: FastAPI runs a plain `def` in its thread pool, a thread hop per request.)"""
    return runtime_of(request.app)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_settings_dep(runtime: RuntimeDep) -> Settings:
    """FastAPI dependency: the settings."""
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def component(kind: type[T]) -> Callable[[Runtime], Awaitable[T]]:
    """A FastAPI dependency giving the component of type `kind` (for `Annotated[...]`)."""

    async def dependency(runtime: RuntimeDep) -> T:
        return runtime.get(kind)

    return dependency


def optional_component(kind: type[T]) -> Callable[[Runtime], Awaitable[T | None]]:
    """A FastAPI dependency giving the component of type `kind`, or None."""

    async def dependency(runtime: RuntimeDep) -> T | None:
        return runtime.find(kind)

    return dependency


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    """FastAPI dependency: one session per request."""
    async with runtime.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]

__all__ = [
    "ReadinessCheck",
    "Runtime",
    "RuntimeDep",
    "SessionDep",
    "SettingsDep",
    "attach",
    "component",
    "optional_component",
    "runtime_of",
]

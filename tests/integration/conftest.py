"""Fixtures for tests that drive the backend app against a real database."""

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.bundles.storage import BundleStorage
from kernex_backend.core.config import Settings
from kernex_backend.core.runtime import Runtime, runtime_of
from kernex_backend.core.scopes import Scope
from kernex_backend.main import create_app
from tests.conftest import make_settings
from tests.factories import add_api_key

pytestmark = pytest.mark.integration

KeyFactory = Callable[..., Awaitable[str]]


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def runtime(app: FastAPI) -> Runtime:
    """The app's runtime: its engine, settings and components."""
    return runtime_of(app)


@pytest.fixture
def engine(runtime: Runtime) -> AsyncEngine:
    return runtime.engine


def storage_of(app: FastAPI) -> BundleStorage:
    """The app's bundle storage (a Protocol: mypy wants no abstract class as a key)."""
    return runtime_of(app).get(BundleStorage)  # type: ignore[type-abstract]


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kernex.test") as c:
        yield c


@pytest.fixture
def make_key(engine: AsyncEngine) -> KeyFactory:
    """Create an API key with the given scopes straight in the database; returns its token."""

    async def create(*scopes: Scope, name: str = "test") -> str:
        return await add_api_key(engine, *scopes, name=name)

    return create


@pytest.fixture
async def admin_headers(make_key: KeyFactory) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_key(Scope.ADMIN, name='admin')}"}


@pytest.fixture
async def write_headers(make_key: KeyFactory) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_key(Scope.WRITE, name='writer')}"}


@pytest.fixture
async def read_headers(make_key: KeyFactory) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_key(Scope.READ, name='reader')}"}

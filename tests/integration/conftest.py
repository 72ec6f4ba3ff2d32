"""Fixtures for integration tests: the backend app against a real database, and a real
Mosquitto with our mTLS configuration (started once per session)."""

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.api_keys import service as api_keys
from kernex_backend.api_keys.scopes import Scope
from kernex_backend.core.config import Settings
from kernex_backend.core.db import create_sessionmaker
from kernex_backend.main import create_app
from kernex_devstack.broker import SERVICE_IDENTITY, EmbeddedBroker
from kernex_provision.authority import CertificateAuthority, pem, write_private_key, write_public
from kernex_provision.certificates import CertificateKind, new_key
from tests.conftest import make_settings, service_state_dir
from tests.integration.mqtt_client import Identity, Probe, connect

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
def engine(app: FastAPI) -> AsyncEngine:
    engine: AsyncEngine = app.state.engine
    return engine


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kernex.test") as c:
        yield c


@pytest.fixture
def make_key(engine: AsyncEngine) -> KeyFactory:
    """Create an API key with the given scopes straight in the database; returns its token."""

    async def create(*scopes: Scope, name: str = "test") -> str:
        async with create_sessionmaker(engine)() as session:
            _, token = await api_keys.create(
                session=session, name=name, scopes=list(scopes), actor="test"
            )
        return token

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


# --- a real Mosquitto with our mTLS configuration, once per session ---------------------

IdentityFactory = Callable[..., Identity]
Connector = Callable[..., Probe]


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    for state_dir in service_state_dir("broker"):
        server = EmbeddedBroker(state_dir / "broker")
        server.start()
        yield server
        server.stop()


@pytest.fixture
def issue(broker: EmbeddedBroker, tmp_path: Path) -> IdentityFactory:
    """Issue a device identity (or one from another CA, or an expired one) into files."""

    def make(
        name: str,
        *,
        authority: CertificateAuthority | None = None,
        issued_at: dt.datetime | None = None,
        days: int = 30,
    ) -> Identity:
        ca = authority or broker.authority
        key = new_key()
        cert = ca.issue(
            key.public_key(),
            kind=CertificateKind.DEVICE,
            common_name=name,
            days=days,
            issued_at=issued_at,
        )
        folder = tmp_path / f"{name}-{cert.serial_number:x}"
        folder.mkdir()
        write_private_key(folder / "key.pem", key)
        write_public(folder / "cert.pem", pem(cert))
        return Identity(name, broker.layout.ca_chain, folder / "cert.pem", folder / "key.pem")

    return make


@pytest.fixture
def service_identity(broker: EmbeddedBroker) -> Identity:
    return Identity(
        SERVICE_IDENTITY,
        broker.layout.ca_chain,
        broker.service_dir / "service.crt",
        broker.service_dir / "service.key",
    )


@pytest.fixture
def mqtt_connect(broker: EmbeddedBroker) -> Iterator[Connector]:
    """Connect clients to the broker; all are closed after the test."""
    probes: list[Probe] = []

    def open_probe(identity: Identity, **kwargs: object) -> Probe:
        probe = connect(identity, broker.host, broker.port, **kwargs)  # type: ignore[arg-type]
        probes.append(probe)
        return probe

    yield open_probe
    for probe in probes:
        probe.close()


@pytest.fixture
def backend(service_identity: Identity, mqtt_connect: Connector) -> Probe:
    probe = mqtt_connect(service_identity)
    assert probe.connected.is_set(), probe.error
    return probe

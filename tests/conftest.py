"""Session-wide real services for the test suite.

PostgreSQL: the embedded server (or the one named by KERNEX_TEST_DATABASE_URL, an admin URL),
started once per session. The schema is migrated once into a template database, and each test
that needs the database gets its own copy (CREATE DATABASE ... TEMPLATE takes about 0.1 s), so
tests never see each other's rows.
"""

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from kernex_backend.core import migrations
from kernex_backend.core.config import Settings
from kernex_backend.core.db import create_engine
from kernex_backend.telemetry import partitions
from kernex_devstack.broker import SERVICE_IDENTITY, EmbeddedBroker
from kernex_provision.authority import CertificateAuthority, pem, write_private_key, write_public
from kernex_provision.certificates import CertificateKind, new_key
from tests.integration.mqtt_client import Identity, Probe, connect

if TYPE_CHECKING:
    from kernex_devstack.s3 import EmbeddedS3

pytest_plugins = ["tests.reliability"]

REPO = Path(__file__).resolve().parents[1]
MIGRATIONS_DIR = REPO / "migrations"

# The compose test builds images and runs a Docker engine: `make compose-test` runs it.
collect_ignore = [] if os.environ.get("KERNEX_COMPOSE_TEST") == "1" else ["compose"]


class PostgresAdmin:
    """Creates and drops databases on the test server."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url).set(drivername="postgresql+asyncpg")

    def url_for(self, database: str) -> str:
        return self.url.set(database=database).render_as_string(hide_password=False)

    async def _execute(self, sql: str) -> None:
        dsn = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create(self, name: str, template: str | None = None) -> str:
        clause = f' TEMPLATE "{template}"' if template else ""
        await self._execute(f'CREATE DATABASE "{name}"{clause}')
        return self.url_for(name)

    async def rename(self, name: str, new_name: str) -> None:
        await self._execute(f'ALTER DATABASE "{name}" RENAME TO "{new_name}"')

    async def drop(self, name: str) -> None:
        await self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(database_url: str, **overrides: object) -> Settings:
    """Settings for a test: development mode, the given database, local bundle storage in a new
    temporary directory unless `storage` is given."""
    overrides.setdefault(
        "storage", {"backend": "local", "local_dir": tempfile.mkdtemp(prefix="kernex-bundles-")}
    )
    return Settings(
        database_url=database_url,
        environment="development",
        migrations_dir=MIGRATIONS_DIR,
        **overrides,  # type: ignore[arg-type]
    )


def service_state_dir(name: str) -> Iterator[Path]:
    """A state directory for a service that runs as another user (PostgreSQL as kernex-pg,
    Mosquitto as mosquitto). Not under pytest's temporary root: pytest resets that to 0700 when
    another test session starts, which would lock those users out mid-run."""
    path = Path(tempfile.mkdtemp(prefix=f"kernex-test-{name}-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[PostgresAdmin]:
    external = os.environ.get("KERNEX_TEST_DATABASE_URL")
    if external:
        yield PostgresAdmin(external)
        return
    from kernex_devstack.postgres import EmbeddedPostgres

    for state_dir in service_state_dir("postgres"):
        server = EmbeddedPostgres(state_dir / "postgres", durable=False)
        server.start()
        try:
            yield PostgresAdmin(server.url())
        finally:
            server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator["EmbeddedS3"]:
    """A real S3 server (SeaweedFS), started on first use."""
    from kernex_devstack.s3 import EmbeddedS3

    server = EmbeddedS3(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def template_database(postgres_admin: PostgresAdmin) -> Iterator[str]:
    """A database prepared as `kernex-backend migrate` leaves it (schema at head, heartbeat
    partitions for today and the days ahead), used as the template of each test's database.

    Without the partitions a test that stores heartbeats would race the app's own partition
    job, and lose on a loaded machine."""
    name = f"kernex_template_{uuid.uuid4().hex[:8]}"

    async def build() -> None:
        url = await postgres_admin.create(name)
        settings = make_settings(url)
        engine = create_engine(settings)
        try:
            await migrations.upgrade(engine, MIGRATIONS_DIR)
            await partitions.maintain_now(engine, settings.telemetry)
        finally:
            await engine.dispose()

    asyncio.run(build())
    yield name
    asyncio.run(postgres_admin.drop(name))


@pytest.fixture
async def empty_database_url(postgres_admin: PostgresAdmin) -> AsyncIterator[str]:
    """A new database with no schema at all."""
    name = f"kernex_empty_{uuid.uuid4().hex[:12]}"
    url = await postgres_admin.create(name)
    yield url
    await postgres_admin.drop(name)


@pytest.fixture
async def database_url(postgres_admin: PostgresAdmin, template_database: str) -> AsyncIterator[str]:
    """A new database with the current schema, private to one test."""
    name = f"kernex_test_{uuid.uuid4().hex[:12]}"
    url = await postgres_admin.create(name, template=template_database)
    yield url
    await postgres_admin.drop(name)


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


# --- a small disk of its own, that a test can fill up ----------------------------------

Mount = Callable[[Path, int], None]


@pytest.fixture
def small_disk() -> Iterator[Mount]:
    """Mount a tmpfs of `size` bytes at a path (root with mount rights; skipped otherwise)."""
    mounted: list[Path] = []

    def mount(path: Path, size: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Write a file into `directory` until its filesystem is full."""
    filler = directory / f"filler-{uuid.uuid4().hex[:6]}"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * (256 * 1024))
            out.flush()
    return filler

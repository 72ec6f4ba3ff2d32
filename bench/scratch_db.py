"""A PostgreSQL of the benchmark's own, migrated and holding its devices: what the benchmarks
that measure one backend path against the database alone start from."""

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.core import migrations
from kernex_backend.core.config import Settings
from kernex_backend.core.db import create_engine, create_sessionmaker
from kernex_backend.devices.models import Device
from kernex_devstack.postgres import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def scratch_postgres(prefix: str) -> Iterator[str]:
    """An embedded PostgreSQL in a temporary folder, stopped and removed after; yields the URL of
    its own "postgres" database (the server is the run's alone, so no other is needed)."""
    with (
        tempfile.TemporaryDirectory(prefix=prefix) as tmp,
        EmbeddedPostgres(Path(tmp) / "pg") as pg,
    ):
        yield pg.url()


async def migrated_with_devices(url: str, devices: int) -> tuple[Settings, AsyncEngine, list[str]]:
    """Migrate the database at `url` to head and register `devices` devices; returns the
    settings, an engine and the device ids."""
    settings = Settings(
        database_url=url,
        environment="development",
        migrations_dir=REPO / "migrations",
        storage={"backend": "local", "local_dir": tempfile.mkdtemp(prefix="kernex-bench-")},  # type: ignore[arg-type]
    )
    engine = create_engine(settings)
    await migrations.upgrade(engine, REPO / "migrations")
    ids = [f"bench-{i:06d}" for i in range(devices)]
    async with create_sessionmaker(engine)() as session:
        session.add_all(Device(id=d, device_type="bench-board") for d in ids)
        await session.commit()
    return settings, engine, ids

"""Running Alembic migrations from the backend (CLI, demo and tests) on an existing engine."""

import re
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

# Daily heartbeat partitions are managed at run time (telemetry/partitions.py), not by
# migrations, so autogenerate must not propose dropping them.
_RUNTIME_MANAGED_TABLE = re.compile(r"^heartbeats_p\d{8}$")

# Every process that migrates takes this transaction-scoped advisory lock first, so the
# migration Job and the init steps of several pods starting at once run one after another: the
# first upgrades, the others find the schema at head and do nothing.
MIGRATION_LOCK_KEY = 0x4B45524E4558  # "KERNEX"


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Autogenerate filter: leave run-time managed tables (and their indexes) out."""
    if type_ == "table" and name is not None and _RUNTIME_MANAGED_TABLE.match(name):
        return False
    table = getattr(obj, "table", None)
    return not (table is not None and _RUNTIME_MANAGED_TABLE.match(getattr(table, "name", "")))


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render SQLModel's AutoString as a plain sa.String so migrations need no sqlmodel import."""
    if type_ == "type" and type(obj).__name__ == "AutoString":
        length = getattr(obj, "length", None)
        return f"sa.String(length={length})" if length else "sa.String()"
    return False


COMPARE_OPTIONS: dict[str, Any] = {
    "compare_type": True,
    "compare_server_default": True,
    "include_object": include_object,
    "render_item": render_item,
}


def alembic_config(migrations_dir: Path) -> Config:
    """An Alembic config pointing at our migrations directory."""
    ini = migrations_dir / "alembic.ini"
    if not ini.is_file():
        raise FileNotFoundError(
            f"no alembic.ini in {migrations_dir}; "
            "set KERNEX_MIGRATIONS_DIR to the migrations folder"
        )
    config = Config(str(ini))
    config.set_main_option("script_location", str(migrations_dir))
    return config


async def _run(engine: AsyncEngine, migrations_dir: Path, action: str, revision: str) -> None:
    config = alembic_config(migrations_dir)

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)

    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        await conn.run_sync(run)


async def upgrade(engine: AsyncEngine, migrations_dir: Path, revision: str = "head") -> None:
    """Upgrade the schema to `revision`."""
    await _run(engine, migrations_dir, "upgrade", revision)


async def downgrade(engine: AsyncEngine, migrations_dir: Path, revision: str) -> None:
    """Downgrade the schema to `revision` ("base" empties it)."""
    await _run(engine, migrations_dir, "downgrade", revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)

"""Alembic environment: async engine on asyncpg, metadata from the backend's table models."""

import asyncio
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from kernex_backend.core.migrations import COMPARE_OPTIONS
from kernex_backend.models import metadata


def _database_url() -> str:
    url = context.config.attributes.get("database_url")
    if url:
        return str(url)
    from kernex_backend.core.config import get_settings

    return get_settings().database_url.get_secret_value()


def _configure(connection: Connection | None = None, **kwargs: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        **COMPARE_OPTIONS,
        **kwargs,
    )


def _run_sync(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_database_url())
    async with engine.connect() as conn:
        await conn.run_sync(_run_sync)
    await engine.dispose()


if context.is_offline_mode():
    _configure(url=_database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()
elif context.config.attributes.get("connection") is not None:
    # A connection handed in by `kernex-backend migrate` or the tests.
    _run_sync(context.config.attributes["connection"])
else:
    asyncio.run(_run_online())

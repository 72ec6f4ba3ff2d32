"""Database engine, sessions and the shared table conventions."""

from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.core.config import Settings

# Stable constraint names, so autogenerate never sees a rename where nothing changed.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def create_engine(settings: Settings) -> AsyncEngine:
    """Create the process's connection pool."""
    return create_async_engine(
        settings.database_url.get_secret_value(),
        pool_pre_ping=True,
        pool_size=settings.db.pool_size,
        max_overflow=settings.db.max_overflow,
        pool_timeout=settings.db.pool_timeout_s,
        connect_args={
            "timeout": settings.db.connect_timeout_s,
            "server_settings": {
                "application_name": "kernex-backend",
                "statement_timeout": str(settings.db.statement_timeout_ms),
                "timezone": "UTC",
            },
        },
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


# SQLSTATE classes and codes that a retry can cure.
_TRANSIENT_CLASSES: Final = ("08", "53", "57")  # connection, resources, operator intervention
_TRANSIENT_CODES: Final = frozenset({"40001", "40P01", "55P03"})  # serialization, deadlock, lock


def is_transient(exc: BaseException) -> bool:
    """Whether a failed write may succeed if tried again unchanged."""
    if isinstance(exc, OSError | TimeoutError | sa.exc.TimeoutError):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa.exc.InterfaceError):
            return True
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if isinstance(code, str):
            return code in _TRANSIENT_CODES or code.startswith(_TRANSIENT_CLASSES)
        # No SQLSTATE: refused by the driver before reaching the server (an encoding error).
        return isinstance(exc, sa.exc.OperationalError)
    return False


async def delete_in_batches(
    engine: AsyncEngine, statement: sa.TextClause, params: dict[str, Any], *, batch: int
) -> int:
    """Run a DELETE limited to `:batch` rows, one transaction each, until it deletes fewer:
    pruning a large backlog never holds one long transaction or lock. Returns rows deleted."""
    total = 0
    while True:
        async with engine.begin() as conn:
            result = await conn.execute(statement, {**params, "batch": batch})
        total += result.rowcount
        if result.rowcount < batch:
            return total

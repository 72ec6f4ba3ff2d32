"""Operations that prepare a database for use, outside the API: migrate it, mint API keys.
Used by the command line and `make demo`."""

from kernex_backend.api_keys import service as api_keys
from kernex_backend.core import migrations
from kernex_backend.core.config import Settings
from kernex_backend.core.db import create_engine, create_sessionmaker
from kernex_backend.core.scopes import Scope
from kernex_backend.telemetry import partitions


async def migrate(settings: Settings) -> str | None:
    """Upgrade the schema to head and create the coming heartbeat partitions.

    Returns the revision the database is at afterwards.
    """
    engine = create_engine(settings)
    try:
        await migrations.upgrade(engine, settings.migrations_dir)
        await partitions.maintain_now(engine, settings.telemetry)
        return await migrations.current_revision(engine)
    finally:
        await engine.dispose()


async def create_api_key(
    settings: Settings, *, name: str, scopes: list[Scope], replace: bool, actor: str
) -> str:
    """Create a key directly in the database and return its token.

    With `replace`, live keys of the same name are revoked first.
    """
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session:
            if replace:
                await api_keys.revoke_named(session=session, name=name, actor=actor)
            _, token = await api_keys.create(session=session, name=name, scopes=scopes, actor=actor)
            return token
    finally:
        await engine.dispose()


async def revoke_api_keys(settings: Settings, *, name: str, actor: str) -> int:
    """Revoke every live key called `name` directly in the database; returns how many."""
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session:
            return await api_keys.revoke_named(session=session, name=name, actor=actor)
    finally:
        await engine.dispose()

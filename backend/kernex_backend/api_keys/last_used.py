"""Batched last_used_at updates, so authenticating a request never writes to the database."""

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.api_keys.models import ApiKey


class LastUsedTracker:
    """Remembers when each key was last used and writes it out in one statement per flush."""

    def __init__(self) -> None:
        self._pending: dict[str, datetime] = {}

    def touch(self, key_id: str, at: datetime) -> None:
        """Note a use of `key_id` (in memory only)."""
        self._pending[key_id] = at

    @property
    def pending(self) -> int:
        """How many keys wait to be written."""
        return len(self._pending)

    async def flush(self, engine: AsyncEngine) -> int:
        """Write pending uses; returns how many keys were updated."""
        pending, self._pending = self._pending, {}
        if not pending:
            return 0
        table = ApiKey.__table__  # type: ignore[attr-defined]
        statement = (
            sa.update(table)
            .where(table.c.id == sa.bindparam("key_id"))
            .values(
                last_used_at=sa.func.greatest(
                    sa.func.coalesce(table.c.last_used_at, sa.bindparam("at")), sa.bindparam("at")
                )
            )
        )
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    statement, [{"key_id": key, "at": at} for key, at in pending.items()]
                )
        except Exception:
            # Keep what we could not write for the next flush, unless newer uses replaced it.
            for key, at in pending.items():
                self._pending.setdefault(key, at)
            raise
        return len(pending)

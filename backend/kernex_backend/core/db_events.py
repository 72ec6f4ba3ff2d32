"""Wake-ups between backend processes through PostgreSQL's LISTEN/NOTIFY.

A process that commits work any replica may take up now (devices admitted to a rollout, whose
notices every replica's notifier takes batches of) sends a notification in the same
transaction: PostgreSQL delivers it to every listening connection when the transaction
commits, and never for one rolled back. A notification only wakes: every listener keeps its
periodic poll, so one lost while a listener reconnects delays the work by at most one poll
interval and loses nothing, and a listener wakes its job once on every (re)connect to catch up.
"""

import asyncio
from collections.abc import Callable
from typing import Any, Final

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = structlog.get_logger(__name__)

# Devices were admitted: PENDING executions wait for a notifier.
NOTICES_PENDING: Final = "kernex_notices_pending"

_CHECK_EVERY_S: Final = 30.0  # an idle connection is checked this often (a silent network)
_RETRY_MIN_S: Final = 0.5
_RETRY_MAX_S: Final = 30.0


def notify(channel: str) -> sa.Select[Any]:
    """The statement that notifies `channel`'s listeners when its transaction commits."""
    return sa.select(sa.func.pg_notify(channel, ""))


class Listener:
    """Calls `on_notify` for each notification on `channel`, and once per (re)connect.

    It holds one connection of the engine's pool while it runs (LISTEN is per connection).
    """

    def __init__(self, engine: AsyncEngine, channel: str, on_notify: Callable[[], None]) -> None:
        self._engine = engine
        self._channel = channel
        self._on_notify = on_notify
        self.listening = asyncio.Event()  # set while notifications can arrive

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff whatever ends a connection."""
        delay = _RETRY_MIN_S
        while True:
            try:
                async with self._engine.connect() as connection:
                    await self._listen(connection)  # returns only by raising
            except Exception as exc:  # the database is away: the poll still runs meanwhile
                log.warning("db_listener_lost", channel=self._channel, error=type(exc).__name__)
            finally:
                listened = self.listening.is_set()
                self.listening.clear()
            # A connection that was listening is retried soon; one that never got there backs off.
            delay = _RETRY_MIN_S if listened else min(delay * 2, _RETRY_MAX_S)
            await asyncio.sleep(delay)

    async def _listen(self, connection: AsyncConnection) -> None:
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection  # asyncpg's connection: LISTEN needs its callbacks
        assert driver is not None
        lost = asyncio.Event()

        def received(*_args: object) -> None:
            self._on_notify()

        driver.add_termination_listener(lambda *_args: lost.set())
        try:
            await driver.add_listener(self._channel, received)
            self.listening.set()
            self._on_notify()  # what was committed while nobody listened here
            while True:
                try:
                    await asyncio.wait_for(lost.wait(), _CHECK_EVERY_S)
                except TimeoutError:
                    await asyncio.wait_for(driver.execute("SELECT 1"), 10)  # a silent network
                else:
                    raise ConnectionError("the listening connection closed")
        finally:
            # Never back into the pool: it still LISTENs, or it is gone.
            await connection.invalidate()

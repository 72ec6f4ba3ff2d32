"""Wake-ups between processes through PostgreSQL's LISTEN/NOTIFY, against the real database:
delivered on commit only, and the listener comes back after its connection is killed."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.core import db_events
from kernex_backend.deployments.models import ExecutionState
from tests.factories import add_bundle, add_devices
from tests.integration.rollouts.harness import Rollout

pytestmark = pytest.mark.integration


class Wakes:
    def __init__(self) -> None:
        self.count = 0
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    async def next(self, within_s: float = 5.0) -> None:
        await asyncio.wait_for(self.event.wait(), within_s)
        self.event.clear()


@contextlib.asynccontextmanager
async def listening(
    engine: AsyncEngine, channel: str
) -> AsyncIterator[tuple[db_events.Listener, Wakes]]:
    wakes = Wakes()
    listener = db_events.Listener(engine, channel, wakes)
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.listening.wait(), 10)
        await wakes.next()  # the catch-up wake of a new connection
        yield listener, wakes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_notification_wakes_on_commit_and_never_on_rollback(engine: AsyncEngine) -> None:
    channel = f"test_{uuid.uuid4().hex[:8]}"
    async with listening(engine, channel) as (_, wakes):
        async with engine.connect() as conn:
            await conn.execute(db_events.notify(channel))
            await conn.rollback()
        with pytest.raises(TimeoutError):
            await wakes.next(within_s=0.5)
        async with engine.begin() as conn:
            await conn.execute(db_events.notify("test_another_channel"))
            await conn.execute(db_events.notify(channel))
        await wakes.next()
        assert wakes.count == 2  # the connect's, then the committed one


async def test_the_listener_comes_back_after_its_connection_is_killed(engine: AsyncEngine) -> None:
    channel = f"test_{uuid.uuid4().hex[:8]}"
    async with listening(engine, channel) as (listener, wakes):
        async with engine.begin() as conn:
            killed = (
                await conn.execute(
                    sa.text(
                        # The listener's connection: its last statement was the LISTEN.
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE query = 'LISTEN \"' || :channel || '\"'"
                    ),
                    {"channel": channel},
                )
            ).all()
        assert killed and all(row[0] for row in killed)
        await wakes.next(within_s=10)  # reconnected: the catch-up wake
        assert listener.listening.is_set()
        async with engine.begin() as conn:
            await conn.execute(db_events.notify(channel))
        await wakes.next()


async def test_admitting_devices_wakes_every_replicas_notifier(engine: AsyncEngine) -> None:
    ids = [f"dbe-{i}" for i in range(3)]
    await add_devices(engine, *ids)
    bundle = await add_bundle(engine, version="2.0.0")
    r = Rollout(engine)
    d = await r.create({"name": "wake", "bundle_id": str(bundle), "device_ids": ids})
    async with listening(engine, db_events.NOTICES_PENDING) as (_, wakes):
        await r.step(d)
        assert sorted(await r.in_state(d, ExecutionState.PENDING.value)) == ids
        await wakes.next()
        await r.step(d)  # nothing more to admit: no wake-up
        with pytest.raises(TimeoutError):
            await wakes.next(within_s=0.5)

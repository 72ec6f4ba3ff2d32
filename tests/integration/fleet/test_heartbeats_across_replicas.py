"""Heartbeats written by several replicas at once against real PostgreSQL: every unique
(device, session, seq) is stored exactly once, whatever replica and order it arrives in, and
the device's latest fields only move forward."""

import asyncio
import datetime as dt

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.core.messaging import TrafficCounters
from kernex_backend.telemetry.ingest import HeartbeatIngest, Received
from tests.factories import add_devices
from tests.integration.fleet.test_fleet_state import beat, device, heartbeat_rows, received

pytestmark = pytest.mark.integration


def replica(engine: AsyncEngine) -> tuple[HeartbeatIngest, TrafficCounters]:
    stats = TrafficCounters()
    return HeartbeatIngest(engine, stats, batch_size=100, interval_s=0.1, capacity=1000), stats


async def copies(engine: AsyncEngine, device_id: str) -> dict[tuple[int, int], int]:
    """How many rows each (session, seq) of the device has."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT session, sequence, count(*) FROM heartbeats WHERE device_id = :d"
                " GROUP BY session, sequence"
            ),
            {"d": device_id},
        )
        return {(s, q): n for s, q, n in rows}


@pytest.mark.reliability(
    "Scale-out",
    "heartbeats interleaved between replicas, one behind",
    "every heartbeat stored once; latest fields move forward only",
)
async def test_interleaved_replicas_store_every_heartbeat_once_and_move_forward(
    app: FastAPI, engine: AsyncEngine
) -> None:
    await add_devices(engine, "split-1")
    a, a_stats = replica(engine)
    b, b_stats = replica(engine)
    # The broker hands heartbeats round-robin to the two replicas; b falls behind (a stall, a
    # slow flush) and writes its share only after a has written all of its own.
    await a.write([received("split-1", beat(seq)) for seq in range(0, 20, 2)])
    newest_before = await device(engine, "split-1")
    await b.write([received("split-1", beat(seq)) for seq in range(1, 20, 2)])
    assert await heartbeat_rows(engine, "split-1") == list(range(20))
    assert b_stats.counts["heartbeats.stored"] == 10
    assert b_stats.counts["heartbeats.stored_late"] == 9  # all but 19, above a's 18
    row = await device(engine, "split-1")
    assert (row["heartbeat_session"], row["heartbeat_seq"]) == (1, 19)
    assert (row["heartbeat_high_session"], row["heartbeat_high_seq"]) == (1, 19)
    assert row["last_seen_at"] >= newest_before["last_seen_at"]

    # A stalled replica's whole batch is older than the newest: stored, and nothing moves back.
    await a.write([received("split-1", beat(seq)) for seq in (25, 26)])
    await b.write([received("split-1", beat(seq)) for seq in (20, 21, 22)])
    row = await device(engine, "split-1")
    assert (row["heartbeat_session"], row["heartbeat_seq"]) == (1, 26)
    assert await heartbeat_rows(engine, "split-1") == [*range(23), 25, 26]
    # Redeliveries of stored heartbeats, to either replica, later: not stored again.
    await b.write([received("split-1", beat(seq)) for seq in (0, 19, 25)])
    await a.write([received("split-1", beat(21))])
    assert (
        b_stats.counts["heartbeats.duplicates"] == 3
        and a_stats.counts["heartbeats.duplicates"] == 1
    )
    assert set((await copies(engine, "split-1")).values()) == {1}


@pytest.mark.reliability(
    "Scale-out",
    "two replicas writing the same heartbeats at once",
    "one copy of each",
)
async def test_replicas_writing_the_same_heartbeats_at_once_store_one_copy(
    app: FastAPI, engine: AsyncEngine
) -> None:
    """The race the device-row lock closes: two replicas, each holding a copy of the same
    heartbeats (a redelivery after a worker died unacknowledged), write them at the same time."""
    devices = [f"race-{i}" for i in range(20)]
    await add_devices(engine, *devices)
    a, _ = replica(engine)
    b, _ = replica(engine)
    for round_ in range(10):
        seqs = range(round_ * 3, round_ * 3 + 3)
        batch_a = [received(d, beat(s)) for d in devices for s in seqs]
        # b holds the same heartbeats in a different order, received a moment later.
        later = dt.timedelta(milliseconds=5)
        batch_b = [Received(r.device_id, r.heartbeat, r.received_at + later) for r in batch_a]
        await asyncio.gather(a.write(batch_a), b.write(list(reversed(batch_b))))
    for device_id in devices:
        stored = await copies(engine, device_id)
        assert stored == {(1, seq): 1 for seq in range(30)}, device_id


async def test_rows_stored_before_the_session_column_are_recognised(
    app: FastAPI, engine: AsyncEngine
) -> None:
    """During a rolling upgrade the previous version stores rows without `session` (it is in
    their metrics): a redelivered copy must still be found."""
    await add_devices(engine, "old-1")
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO heartbeats (device_id, received_at, sequence, metrics)"
                " VALUES ('old-1', now(), 4, '{\"session\": 1}')"
            )
        )
        # ...and moves the newest, as it always did (it knows no highest).
        await conn.execute(
            sa.text(
                "UPDATE devices SET heartbeat_session = 1, heartbeat_seq = 4 WHERE id = 'old-1'"
            )
        )
    ingest, stats = replica(engine)
    await ingest.write([received("old-1", beat(4)), received("old-1", beat(3))])
    assert await heartbeat_rows(engine, "old-1") == [3, 4]
    assert stats.counts["heartbeats.duplicates"] == 1

"""Heartbeat ingest: buffered, written in batches, one transaction per batch.

Messages are queued in memory (bounded: beyond `capacity` they are dropped and counted, so a
slow or unreachable database cannot exhaust the process) and flushed every `interval_s` or
whenever `batch_size` are waiting. One statement per batch inserts the heartbeats and updates
each device's last_seen_at, versions and online state. Heartbeats from unknown or
decommissioned devices are refused (counted, not stored), and a heartbeat is stored only if it
is newer, by (session, seq), than the newest stored for its device: QoS 1 repeats and late
arrivals are not stored twice. A failed batch is put back and retried with backoff, so the
ingest recovers on its own when the database returns.
"""

import asyncio
import contextlib
import datetime as dt
import json
from collections import deque
from dataclasses import dataclass

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kernex_backend.core.db import utc_now
from kernex_backend.mqtt.bridge import BridgeStats
from kernex_protocol.payloads import Heartbeat

log = structlog.get_logger(__name__)

_INGEST = sa.text(
    """
    WITH incoming AS (
        SELECT DISTINCT ON (device_id, session, seq) *
        FROM unnest(
            CAST(:device_ids AS text[]), CAST(:sessions AS bigint[]), CAST(:seqs AS bigint[]),
            CAST(:received AS timestamptz[]), CAST(:metrics AS jsonb[]),
            CAST(:installed AS text[]), CAST(:agents AS text[])
        ) AS t(device_id, session, seq, received_at, metrics, installed_version, agent_version)
        ORDER BY device_id, session, seq, received_at
    ),
    accepted AS (
        SELECT i.* FROM incoming i JOIN devices d ON d.id = i.device_id
        WHERE d.status <> 'decommissioned'
          AND (i.session, i.seq)
              > (coalesce(d.heartbeat_session, -1), coalesce(d.heartbeat_seq, -1))
    ),
    inserted AS (
        INSERT INTO heartbeats (device_id, received_at, sequence, metrics)
        SELECT device_id, received_at, seq, metrics FROM accepted
        ON CONFLICT DO NOTHING
        RETURNING 1
    ),
    newest AS (
        SELECT DISTINCT ON (device_id) * FROM accepted
        ORDER BY device_id, session DESC, seq DESC
    ),
    updated AS (
        UPDATE devices d SET
            last_seen_at = greatest(d.last_seen_at, n.received_at),
            heartbeat_session = n.session,
            heartbeat_seq = n.seq,
            current_version = coalesce(n.installed_version, d.current_version),
            agent_version = coalesce(n.agent_version, d.agent_version),
            -- Only a heartbeat of a newer session than the presence held says "online": one
            -- of the same session may have been sent just before that session's goodbye.
            online = CASE WHEN n.session > coalesce(d.presence_session, -1) THEN true
                          ELSE d.online END,
            status = CASE WHEN d.status = 'registered' THEN 'active' ELSE d.status END,
            updated_at = now()
        FROM newest n WHERE d.id = n.device_id
        RETURNING 1
    )
    SELECT
        (SELECT count(*) FROM inserted) AS stored,
        (SELECT count(*) FROM incoming i WHERE NOT EXISTS (
            SELECT 1 FROM devices d WHERE d.id = i.device_id AND d.status <> 'decommissioned'
        )) AS refused,
        (SELECT count(*) FROM updated) AS devices
    """
)


@dataclass(frozen=True, slots=True)
class Received:
    """A heartbeat with the device it came from and when it arrived."""

    device_id: str
    heartbeat: Heartbeat
    received_at: dt.datetime


class HeartbeatIngest:
    """The buffer between the MQTT consumer and the heartbeats table."""

    def __init__(
        self,
        engine: AsyncEngine,
        stats: BridgeStats,
        *,
        batch_size: int,
        interval_s: float,
        capacity: int,
    ) -> None:
        self._engine = engine
        self._stats = stats
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._capacity = capacity
        self._queue: deque[Received] = deque()
        self._wake = asyncio.Event()

    @property
    def backlog(self) -> int:
        """Heartbeats waiting to be written."""
        return len(self._queue)

    async def submit(self, device_id: str, heartbeat: object) -> None:
        """Queue one heartbeat (the bridge's handler); drops it when the buffer is full."""
        assert isinstance(heartbeat, Heartbeat)
        if len(self._queue) >= self._capacity:
            self._stats.count("heartbeats.dropped_backpressure")
            return
        self._queue.append(Received(device_id, heartbeat, utc_now()))
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    async def run(self) -> None:
        """Flush until cancelled; a failed batch is retried with backoff."""
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):  # the interval elapsed: flush anyway
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            if not self._queue:
                continue
            batch: list[Received] = []
            try:
                # One connection for the whole backlog: checking one out of the pool costs a
                # round trip (the liveness ping), which at thousands of heartbeats a second
                # is worth paying once per flush rather than once per batch.
                async with self._engine.connect() as connection:
                    while self._queue:
                        batch = [
                            self._queue.popleft()
                            for _ in range(min(self._batch_size, len(self._queue)))
                        ]
                        await self.write(batch, connection)
                        batch = []
                failures = 0
            except (OSError, sa.exc.SQLAlchemyError) as exc:
                # Put the batch back (oldest first) within the buffer's capacity.
                room = max(0, self._capacity - len(self._queue))
                self._queue.extendleft(reversed(batch[:room]))
                self._stats.count("heartbeats.dropped_backpressure", len(batch) - room)
                failures += 1
                delay = min(30.0, 0.5 * 2**failures)
                log.warning("heartbeat_ingest_failed", error=str(exc)[:200], retry_s=delay)
                await asyncio.sleep(delay)

    async def write(self, batch: list[Received], connection: AsyncConnection | None = None) -> None:
        """Write one batch in one transaction (on `connection`, or one from the pool)."""
        params = {
            "device_ids": [r.device_id for r in batch],
            "sessions": [r.heartbeat.session for r in batch],
            "seqs": [r.heartbeat.seq for r in batch],
            "received": [r.received_at for r in batch],
            "metrics": [json.dumps(_row_metrics(r.heartbeat)) for r in batch],
            "installed": [r.heartbeat.installed_version for r in batch],
            "agents": [r.heartbeat.agent_version for r in batch],
        }
        async with contextlib.AsyncExitStack() as stack:
            conn = connection
            if conn is None:
                conn = await stack.enter_async_context(self._engine.connect())
            async with conn.begin():
                stored, refused, _ = (await conn.execute(_INGEST, params)).one()
        self._stats.count("heartbeats.stored", stored)
        self._stats.count("heartbeats.refused_unknown_device", refused)
        self._stats.count("heartbeats.duplicates", len(batch) - stored - refused)


def _row_metrics(heartbeat: Heartbeat) -> dict[str, object]:
    return {
        **heartbeat.metrics,
        "session": heartbeat.session,
        "uptime_s": heartbeat.uptime_s,
        "sent_at": heartbeat.sent_at,
        "installed_version": heartbeat.installed_version,
        "agent_version": heartbeat.agent_version,
    }

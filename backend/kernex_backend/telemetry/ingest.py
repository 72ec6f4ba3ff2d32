"""Heartbeat ingest: buffered, written in batches, one transaction per batch.

Messages are queued in a bounded `WriteBuffer` (beyond its capacity they are dropped and
counted, so a slow or unreachable database cannot exhaust the process) and written every
`interval_s` or whenever `batch_size` are waiting. One statement per batch inserts the
heartbeats and updates each device's last_seen_at, versions and online state. Heartbeats from
unknown or decommissioned devices are refused (counted, not stored), and a heartbeat is stored
only if it is newer, by (session, seq), than the newest stored for its device: QoS 1 repeats
and late arrivals are not stored twice. A batch that fails for a transient reason is put back and
retried with backoff, so the ingest recovers on its own when the database returns; a heartbeat the
database refuses is isolated and dropped without holding up the others (core/write_buffer.py).
"""

import datetime as dt
import json
from dataclasses import dataclass

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kernex_backend.core.db import utc_now
from kernex_backend.core.messaging import TrafficCounters
from kernex_backend.core.write_buffer import WriteBuffer
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
          AND ((i.session, i.seq)
               > (coalesce(d.heartbeat_session, -1), coalesce(d.heartbeat_seq, -1))
               -- A lower session after a long silence: the stored one was a claim nothing
               -- backed (a lie, a restored disk); it must not refuse the device for ever.
               OR (i.session < d.heartbeat_session
                   AND d.last_seen_at < i.received_at - CAST(:stale AS interval)))
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
            -- of the same session may have been sent just before that session's goodbye. A
            -- lower session does too once the presence held is stale (nothing heard from its
            -- session for the offline threshold): then it replaces that claim.
            online = CASE WHEN n.session > coalesce(d.presence_session, -1) THEN true
                          WHEN n.session < d.presence_session
                               AND d.presence_at < n.received_at - CAST(:stale AS interval)
                          THEN true
                          ELSE d.online END,
            presence_session = CASE
                WHEN n.session < d.presence_session
                     AND d.presence_at < n.received_at - CAST(:stale AS interval)
                THEN n.session ELSE d.presence_session END,
            presence_at = CASE
                WHEN n.session <= d.presence_session
                     AND (n.session = d.presence_session
                          OR d.presence_at < n.received_at - CAST(:stale AS interval))
                THEN greatest(d.presence_at, n.received_at) ELSE d.presence_at END,
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
        stats: TrafficCounters,
        *,
        batch_size: int,
        interval_s: float,
        capacity: int,
        stale_after_s: float = 95.0,
    ) -> None:
        """`stale_after_s`: how long a device's session claim outranks lower sessions without
        anything heard from it (the offline threshold)."""
        self._engine = engine
        self._stats = stats
        self._stale_after_s = stale_after_s
        self._buffer: WriteBuffer[Received] = WriteBuffer(
            stats.count,
            name="heartbeats",
            batch_size=batch_size,
            interval_s=interval_s,
            capacity=capacity,
            describe=lambda received: received.device_id,
        )
        # Seconds between receiving the oldest heartbeat of the last batch and storing it.
        self.lag_s = 0.0

    @property
    def backlog(self) -> int:
        """Heartbeats waiting to be written."""
        return len(self._buffer)

    def problem(self) -> str | None:
        """Why the writer is stuck, or None."""
        return self._buffer.problem()

    async def submit(self, device_id: str, heartbeat: Heartbeat) -> None:
        """Queue one heartbeat (the bridge's handler); drops it when the buffer is full."""
        self._buffer.add(Received(device_id, heartbeat, utc_now()))

    async def run(self) -> None:
        """Write until cancelled; a failed batch is retried with backoff."""
        await self._buffer.run(self._write_backlog)

    async def _write_backlog(self) -> None:
        # One connection for the whole backlog: checking one out of the pool costs a round
        # trip (the liveness ping), which at thousands of heartbeats a second is worth paying
        # once per flush rather than once per batch.
        async with self._engine.connect() as connection:
            await self._buffer.drain(lambda batch: self.write(batch, connection))

    async def write(self, batch: list[Received], connection: AsyncConnection | None = None) -> None:
        """Write one batch in one transaction (on `connection`, or one from the pool)."""
        if connection is None:
            async with self._engine.connect() as pooled:
                await self.write(batch, pooled)
            return
        params = {
            "device_ids": [r.device_id for r in batch],
            "sessions": [r.heartbeat.session for r in batch],
            "seqs": [r.heartbeat.seq for r in batch],
            "received": [r.received_at for r in batch],
            "metrics": [json.dumps(_row_metrics(r.heartbeat)) for r in batch],
            "installed": [r.heartbeat.installed_version for r in batch],
            "agents": [r.heartbeat.agent_version for r in batch],
            "stale": dt.timedelta(seconds=self._stale_after_s),
        }
        async with connection.begin():
            stored, refused, _ = (await connection.execute(_INGEST, params)).one()
        self.lag_s = (utc_now() - min(r.received_at for r in batch)).total_seconds()
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
        "update_state": heartbeat.update_state,
        "last_error": heartbeat.last_error,
    }

"""Heartbeat ingest: buffered, written in batches, one transaction per batch.

Messages are queued in a bounded `WriteBuffer` (beyond its capacity they are dropped and
counted, so a slow or unreachable database cannot exhaust the process) and written every
`interval_s` or whenever `batch_size` are waiting. One statement per batch inserts the
heartbeats and updates each device's last_seen_at, versions and online state. Heartbeats from
unknown or decommissioned devices are refused (counted, not stored). Every other heartbeat is
stored once per (device, session, seq), whichever replica receives it and in whatever order:
a late one (a replica that stalled, a QoS 1 redelivery) is stored too, counted as late, while
the device's latest fields move forward only. A heartbeat above the device's highest stored
one is certainly new; the others are looked up within `duplicate_horizon_s` (see
docs/architecture.md, "Heartbeat ingest"). Replicas lock the batch's device rows in one order
first, so two writing the same device take turns and neither misses what the other stored.
A batch that fails for a transient reason is put back and
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

# Taken first, in one order, so that replicas writing heartbeats of the same devices at once
# take turns per device: the ingest statement after it then sees what the other one stored.
_LOCK_DEVICES = sa.text(
    "SELECT 1 FROM devices WHERE id = ANY(CAST(:device_ids AS text[]))"
    " ORDER BY id FOR NO KEY UPDATE"
)

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
    known AS (
        SELECT i.*,
            d.heartbeat_session AS newest_session, d.heartbeat_seq AS newest_seq,
            d.last_seen_at,
            -- The presence held, to record a heartbeat that brings the device back online.
            d.online AS was_online, d.presence_session AS held_session, d.presence_at AS held_at,
            -- Above both the newest and the highest ever stored: certainly not stored yet.
            (i.session, i.seq)
                > (coalesce(d.heartbeat_session, -1), coalesce(d.heartbeat_seq, -1))
            AND (i.session, i.seq)
                > (coalesce(d.heartbeat_high_session, d.heartbeat_session, -1),
                   coalesce(d.heartbeat_high_seq, d.heartbeat_seq, -1)) AS above_high
        FROM incoming i JOIN devices d ON d.id = i.device_id
        WHERE d.status <> 'decommissioned'
    ),
    fresh AS (
        -- Late or repeated: stored unless a copy is (rows of an older version have their
        -- session in metrics only).
        SELECT k.* FROM known k
        WHERE k.above_high OR NOT EXISTS (
            SELECT 1 FROM heartbeats h
            WHERE h.device_id = k.device_id
              AND h.received_at >= k.received_at - CAST(:horizon AS interval)
              AND h.sequence = k.seq
              AND coalesce(h.session, CAST(h.metrics ->> 'session' AS bigint)) = k.session)
    ),
    inserted AS (
        INSERT INTO heartbeats (device_id, received_at, session, sequence, metrics)
        SELECT device_id, received_at, session, seq, metrics FROM fresh
        ON CONFLICT DO NOTHING
        RETURNING 1
    ),
    advancing AS (
        SELECT f.* FROM fresh f
        WHERE (f.session, f.seq) > (coalesce(f.newest_session, -1), coalesce(f.newest_seq, -1))
           -- A lower session after a long silence: the newest was a claim nothing backed (a
           -- lie, a restored disk); the device's latest fields must not ignore it for ever.
           OR (f.session < f.newest_session
               AND f.last_seen_at < f.received_at - CAST(:stale AS interval))
    ),
    newest AS (
        SELECT DISTINCT ON (device_id) * FROM advancing
        ORDER BY device_id, session DESC, seq DESC
    ),
    -- The same rule as `online` below, for the devices it brings back online: their
    -- presence history records it (reason "heartbeat": no birth message said so).
    came_online AS (
        INSERT INTO presence_events (device_id, at, online, session, reason)
        SELECT device_id, received_at, true, session, 'heartbeat' FROM newest
        WHERE NOT was_online
          AND (session > coalesce(held_session, -1)
               OR (session < held_session
                   AND held_at < received_at - CAST(:stale AS interval)))
        RETURNING 1
    ),
    highest AS (
        SELECT DISTINCT ON (device_id) device_id, session, seq, max(received_at)
            OVER (PARTITION BY device_id) AS last_received
        FROM fresh
        ORDER BY device_id, session DESC, seq DESC
    ),
    updated AS (
        UPDATE devices d SET
            last_seen_at = greatest(d.last_seen_at, h.last_received),
            heartbeat_high_session = CASE
                WHEN (h.session, h.seq) > (coalesce(d.heartbeat_high_session, -1),
                                           coalesce(d.heartbeat_high_seq, -1))
                THEN h.session ELSE d.heartbeat_high_session END,
            heartbeat_high_seq = CASE
                WHEN (h.session, h.seq) > (coalesce(d.heartbeat_high_session, -1),
                                           coalesce(d.heartbeat_high_seq, -1))
                THEN h.seq ELSE d.heartbeat_high_seq END,
            -- The latest fields move forward only: from the newest advancing heartbeat.
            heartbeat_session = coalesce(n.session, d.heartbeat_session),
            heartbeat_seq = CASE WHEN n.device_id IS NULL THEN d.heartbeat_seq ELSE n.seq END,
            current_version = coalesce(n.installed_version, d.current_version),
            agent_version = coalesce(n.agent_version, d.agent_version),
            -- Only a heartbeat of a newer session than the presence held says "online": one
            -- of the same session may have been sent just before that session's goodbye. A
            -- lower session does too once the presence held is stale (nothing heard from its
            -- session for the offline threshold): then it replaces that claim.
            online = CASE WHEN n.device_id IS NULL THEN d.online
                          WHEN n.session > coalesce(d.presence_session, -1) THEN true
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
        FROM highest h LEFT JOIN newest n ON n.device_id = h.device_id
        WHERE d.id = h.device_id
        RETURNING 1
    )
    SELECT
        (SELECT count(*) FROM inserted) AS stored,
        (SELECT count(*) FROM incoming i WHERE NOT EXISTS (
            SELECT 1 FROM devices d WHERE d.id = i.device_id AND d.status <> 'decommissioned'
        )) AS refused,
        (SELECT count(*) FROM fresh) - (SELECT count(*) FROM advancing) AS late
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
        duplicate_horizon_s: float = 86400.0,
    ) -> None:
        """`stale_after_s`: how long a device's session claim outranks lower sessions without
        anything heard from it (the offline threshold)."""
        self._engine = engine
        self._stats = stats
        self._stale_after_s = stale_after_s
        self._duplicate_horizon = dt.timedelta(seconds=duplicate_horizon_s)
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

    def submit(self, device_id: str, heartbeat: Heartbeat) -> None:
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
            "horizon": self._duplicate_horizon,
        }
        async with connection.begin():
            await connection.execute(_LOCK_DEVICES, {"device_ids": params["device_ids"]})
            stored, refused, late = (await connection.execute(_INGEST, params)).one()
        self.lag_s = (utc_now() - min(r.received_at for r in batch)).total_seconds()
        self._stats.count("heartbeats.stored", stored)
        self._stats.count("heartbeats.refused_unknown_device", refused)
        self._stats.count("heartbeats.stored_late", late)
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

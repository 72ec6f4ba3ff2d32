"""Online and offline: presence messages ordered by session, and the silence sweeper.

A device's birth and Last Will carry a session number that grows with every connection. An
update applies only if its session is newer than the one held, or the same session going
offline: so a Last Will delivered late for an old session never marks a reconnected device
offline, and an online cannot undo the offline of its own session. Heartbeats bring a device
online only from a newer session than the presence held (telemetry/ingest.py). The sweeper,
which marks silent devices offline without any message, forgets the session, so the device's
next heartbeat or birth brings it back.

A session number is the device's own claim. A held session that nothing was heard from for the
offline threshold (`presence_at`, refreshed by heartbeats of that session) no longer outranks a
lower one: a device that once claimed a huge session (a lie, a disk restored from an image) is
back to its real state within that threshold instead of never.
"""

import datetime as dt

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.core.db import delete_in_batches, utc_now
from kernex_backend.core.messaging import TrafficCounters
from kernex_backend.webhooks import outbox
from kernex_backend.webhooks.models import EventType
from kernex_protocol.payloads import Presence

log = structlog.get_logger(__name__)

# The change and its history row in one statement: what is recorded is what was applied.
_APPLY = sa.text(
    """
    WITH applied AS (
    UPDATE devices SET
        online = :online,
        presence_session = :session,
        presence_at = :now,
        last_seen_at = CASE WHEN :online THEN greatest(last_seen_at, :now) ELSE last_seen_at END,
        agent_version = coalesce(:agent_version, agent_version),
        current_version = CASE WHEN :online THEN :installed_version ELSE current_version END,
        status = CASE WHEN status = 'registered' THEN 'active' ELSE status END,
        updated_at = :now
    WHERE id = :device_id AND status <> 'decommissioned'
      AND (presence_session IS NULL OR presence_session < :session
           OR (presence_session = :session AND NOT :online)
           -- A higher session nothing was heard from for the offline threshold is a stale
           -- claim: it must not make the device's real (lower) sessions look old for ever.
           OR presence_at < :stale_before)
    RETURNING id
    )
    INSERT INTO presence_events (device_id, at, online, session, reason)
    SELECT id, :now, :online, :session, :reason FROM applied
    RETURNING device_id
    """
)
_KNOWN = sa.text("SELECT 1 FROM devices WHERE id = :device_id AND status <> 'decommissioned'")
_SWEEP = sa.text(
    """
    WITH swept AS (
    UPDATE devices SET online = false, presence_session = NULL, presence_at = NULL,
        updated_at = :now
    WHERE online AND (last_seen_at IS NULL OR last_seen_at < :cutoff)
    RETURNING id
    )
    INSERT INTO presence_events (device_id, at, online, session, reason)
    SELECT id, :now, false, NULL, 'silent' FROM swept
    RETURNING device_id
    """
)
PRUNE_BATCH = 5000
_PRUNE = sa.text(
    """
    DELETE FROM presence_events WHERE id IN (
        SELECT id FROM presence_events WHERE at < :before LIMIT :batch
    )
    """
)


class PresenceTracker:
    """Applies presence messages (the bridge's handler) and sweeps silent devices offline."""

    def __init__(
        self, engine: AsyncEngine, stats: TrafficCounters, *, stale_after_s: float = 95.0
    ) -> None:
        self._engine = engine
        self._stats = stats
        self._stale_after_s = stale_after_s

    async def apply(self, device_id: str, presence: Presence) -> None:
        """Apply one presence message, unless an equal or newer session is already held."""
        now = utc_now()
        params = {
            "stale_before": now - dt.timedelta(seconds=self._stale_after_s),
            "device_id": device_id,
            "online": presence.online,
            "session": presence.session,
            "agent_version": presence.agent_version,
            "installed_version": presence.installed_version,
            "reason": None if presence.online else presence.reason,
            "now": now,
        }
        async with self._engine.begin() as conn:
            applied = (await conn.execute(_APPLY, params)).first() is not None
            known = applied or (await conn.execute(_KNOWN, params)).first() is not None
            if applied:
                kind = EventType.DEVICE_ONLINE if presence.online else EventType.DEVICE_OFFLINE
                await outbox.emit(
                    conn,
                    kind,
                    device_id,
                    device_id=device_id,
                    session=presence.session,
                    reason=None if presence.online else presence.reason,
                )
        if applied:
            self._stats.count("presence.applied")
            log.info(
                "device_presence",
                device_id=device_id,
                online=presence.online,
                session=presence.session,
            )
        elif known:
            self._stats.count("presence.stale")
        else:
            self._stats.count("presence.refused_unknown_device")

    async def sweep(self, offline_after: dt.timedelta) -> int:
        """Mark devices silent for longer than `offline_after` offline; returns how many."""
        now = utc_now()
        async with self._engine.begin() as conn:
            rows = (await conn.execute(_SWEEP, {"now": now, "cutoff": now - offline_after})).all()
            for (device_id,) in rows:
                await outbox.emit(
                    conn, EventType.DEVICE_OFFLINE, device_id, device_id=device_id, reason="silent"
                )
        for (device_id,) in rows:
            log.info("device_silent_offline", device_id=device_id)
        return len(rows)


async def prune_history(engine: AsyncEngine, *, retention_days: int) -> int:
    """Delete presence history older than `retention_days`, in batches; returns how many."""
    before = utc_now() - dt.timedelta(days=retention_days)
    total = await delete_in_batches(engine, _PRUNE, {"before": before}, batch=PRUNE_BATCH)
    if total:
        log.info("presence_history_pruned", events=total)
    return total

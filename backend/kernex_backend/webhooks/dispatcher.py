"""Delivers the outbox: fans new events out into deliveries, claims the due ones (any replica,
FOR UPDATE SKIP LOCKED, with a lease so a replica that dies mid-send only delays them), POSTs
them signed, and records each attempt. Failures retry with jittered exponential backoff until
max_attempts; a webhook failing disable_after times in a row is disabled, its pending
deliveries kept for when it is enabled again."""

import asyncio
import datetime as dt
import json
import random
import time
import uuid
from dataclasses import dataclass

import httpx
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.core.config import WebhookSettings
from kernex_backend.core.db import delete_in_batches, utc_now
from kernex_backend.webhooks import signing
from kernex_backend.webhooks.targets import TargetRefused, check_target

log = structlog.get_logger(__name__)

LEASE_S = 60
BATCH = 50

_FAN_OUT = sa.text(
    """
    WITH batch AS (
        SELECT id, event_type FROM webhook_events WHERE NOT fanned_out
        ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED
    ), added AS (
        INSERT INTO webhook_deliveries
            (webhook_id, event_id, state, attempts, next_attempt_at, created_at)
        SELECT w.id, batch.id, 'pending', 0, now(), now()
        FROM batch JOIN webhooks w ON w.enabled AND w.event_types ? batch.event_type
    )
    UPDATE webhook_events SET fanned_out = true WHERE id IN (SELECT id FROM batch)
    """
)
_CLAIM = sa.text(
    """
    UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => :lease)
    FROM webhooks w, webhook_events e
    WHERE d.id IN (
        SELECT id FROM webhook_deliveries
        WHERE state = 'pending' AND next_attempt_at <= now()
        ORDER BY next_attempt_at LIMIT :batch FOR UPDATE SKIP LOCKED
    ) AND w.id = d.webhook_id AND e.id = d.event_id AND w.enabled
    RETURNING d.id, d.attempts, w.id, w.url, w.secret, e.event_id, e.event_type, e.subject,
        e.data, e.created_at
    """
)


PRUNE_BATCH = 5000
# Written for every domain event (registrations, revocations, rollout events) whether or not
# anyone subscribes, so what fan-out found no webhook for goes at once; the rest, with its
# delivery log, after retention_days once nothing about it is still pending.
_PRUNE = sa.text(
    """
    DELETE FROM webhook_events WHERE id IN (
        SELECT e.id FROM webhook_events e
        WHERE e.fanned_out AND (
            NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)
            OR (
                e.created_at < now() - make_interval(days => :days)
                AND NOT EXISTS (
                    SELECT 1 FROM webhook_deliveries d
                    WHERE d.event_id = e.id AND d.state = 'pending'
                )
            )
        )
        ORDER BY e.id LIMIT :batch
    )
    """
)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this replica holds the lease on."""

    delivery_id: int
    attempts: int
    webhook_id: uuid.UUID
    url: str
    secret: str
    event_id: uuid.UUID
    event_type: str
    subject: str
    data: dict[str, object]
    created_at: dt.datetime

    def body(self) -> bytes:
        """The JSON the receiver gets."""
        return json.dumps(
            {
                "id": str(self.event_id),
                "type": self.event_type,
                "subject": self.subject,
                "created_at": self.created_at.isoformat(),
                "data": self.data,
            },
            separators=(",", ":"),
            sort_keys=True,
            default=str,
        ).encode()


class WebhookDispatcher:
    """One per process; `tick` is run periodically."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: WebhookSettings,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._client = client or httpx.AsyncClient(
            timeout=settings.timeout_s, follow_redirects=False
        )
        self.wake_event = asyncio.Event()

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def prune(self) -> int:
        """Delete what the outbox no longer needs, in batches; returns how many events went."""
        total = await delete_in_batches(
            self._engine, _PRUNE, {"days": self._settings.retention_days}, batch=PRUNE_BATCH
        )
        if total:
            log.info("webhook_outbox_pruned", events=total)
        return total

    async def tick(self) -> int:
        """Fan out new events and deliver what is due; returns how many were attempted."""
        async with self._engine.begin() as conn:
            await conn.execute(_FAN_OUT)
            rows = (await conn.execute(_CLAIM, {"lease": LEASE_S, "batch": BATCH})).all()
        claimed = [Claimed(*row) for row in rows]
        if claimed:
            limit = asyncio.Semaphore(10)

            async def send(item: Claimed) -> None:
                async with limit:
                    await self._deliver(item)

            await asyncio.gather(*(send(item) for item in claimed))
        return len(claimed)

    async def _deliver(self, item: Claimed) -> None:
        status: int | None = None
        error: str | None = None
        try:
            await check_target(item.url, allow_private=self._settings.allow_private_targets)
            body = item.body()
            timestamp = int(time.time())
            response = await self._client.post(
                item.url,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "kernex-webhooks/1",
                    signing.ID_HEADER: str(item.event_id),
                    signing.EVENT_HEADER: item.event_type,
                    signing.TIMESTAMP_HEADER: str(timestamp),
                    signing.SIGNATURE_HEADER: signing.signature(item.secret, timestamp, body),
                },
            )
            status = response.status_code
            if not 200 <= status < 300:
                error = f"answered {status}"
        except TargetRefused as exc:
            error = f"target refused: {exc}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        await self._record(item, status, error)

    def backoff_s(self, attempts: int) -> float:
        """Seconds before the next try after `attempts` failures (jittered)."""
        ceiling = min(
            self._settings.backoff_max_s, self._settings.backoff_min_s * 2 ** (attempts - 1)
        )
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter only

    async def _record(self, item: Claimed, status: int | None, error: str | None) -> None:
        now = utc_now()
        attempts = item.attempts + 1
        async with self._engine.begin() as conn:
            if error is None:
                await conn.execute(
                    sa.text(
                        "UPDATE webhook_deliveries SET state = 'delivered', attempts = :a, "
                        "last_status = :s, last_error = NULL, delivered_at = :now WHERE id = :id"
                    ),
                    {"a": attempts, "s": status, "now": now, "id": item.delivery_id},
                )
                await conn.execute(
                    sa.text("UPDATE webhooks SET consecutive_failures = 0 WHERE id = :id"),
                    {"id": item.webhook_id},
                )
            else:
                dead = attempts >= self._settings.max_attempts
                await conn.execute(
                    sa.text(
                        "UPDATE webhook_deliveries SET state = :state, attempts = :a, "
                        "last_status = :s, last_error = :e, next_attempt_at = :next WHERE id = :id"
                    ),
                    {
                        "state": "dead" if dead else "pending",
                        "a": attempts,
                        "s": status,
                        "e": error[:500],
                        "next": now + dt.timedelta(seconds=self.backoff_s(attempts)),
                        "id": item.delivery_id,
                    },
                )
                failures = (
                    await conn.execute(
                        sa.text(
                            "UPDATE webhooks SET consecutive_failures = consecutive_failures + 1 "
                            "WHERE id = :id RETURNING consecutive_failures"
                        ),
                        {"id": item.webhook_id},
                    )
                ).scalar_one()
                if failures >= self._settings.disable_after_failures:
                    await conn.execute(
                        sa.text(
                            "UPDATE webhooks SET enabled = false, disabled_reason = :why, "
                            "updated_at = :now WHERE id = :id AND enabled"
                        ),
                        {
                            "why": f"disabled after {failures} failed deliveries in a row",
                            "now": now,
                            "id": item.webhook_id,
                        },
                    )
                    log.warning("webhook_disabled", webhook_id=str(item.webhook_id))
                log.info(
                    "webhook_delivery_failed",
                    webhook_id=str(item.webhook_id),
                    event_type=item.event_type,
                    attempts=attempts,
                    error=error[:200],
                )

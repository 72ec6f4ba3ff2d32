"""A deployment's event log and its Server-Sent Events stream.

Events are rows (deployment_events), written in the same transaction as the change they
describe, so a stream served by any replica sees every change in commit order, and a client
that reconnects with `Last-Event-ID` gets exactly what it missed. The stream polls the table:
no broker or cross-replica notification is needed, and a second of delay is fine for a rollout.
"""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.deployments.models import Deployment, DeploymentEvent
from kernex_backend.webhooks import outbox
from kernex_backend.webhooks.models import EventType

POLL_S = 1.0
KEEPALIVE_S = 15.0
BATCH = 500


# The rollout events webhooks can subscribe to.
WEBHOOK_EVENTS = {
    "started": EventType.DEPLOYMENT_STARTED,
    "wave_started": EventType.DEPLOYMENT_WAVE_STARTED,
    "paused": EventType.DEPLOYMENT_PAUSED,
    "aborted": EventType.DEPLOYMENT_ABORTED,
    "completed": EventType.DEPLOYMENT_COMPLETED,
}


def record(session: AsyncSession, deployment_id: uuid.UUID, kind: str, **data: Any) -> None:
    """Add an event to the session (committed with the change it describes), and the webhook
    event it maps to, if any."""
    session.add(DeploymentEvent(deployment_id=deployment_id, kind=kind, data=data))
    if kind in WEBHOOK_EVENTS:
        outbox.add(session, WEBHOOK_EVENTS[kind], str(deployment_id), **data)


async def since(
    session: AsyncSession, deployment_id: uuid.UUID, after: int, *, limit: int = BATCH
) -> list[DeploymentEvent]:
    """The deployment's events with an id above `after`, oldest first."""
    rows = await session.exec(
        select(DeploymentEvent)
        .where(
            col(DeploymentEvent.deployment_id) == deployment_id,
            col(DeploymentEvent.id) > after,
        )
        .order_by(col(DeploymentEvent.id))
        .limit(limit)
    )
    return list(rows.all())


def _frame(event: DeploymentEvent) -> bytes:
    body = json.dumps(
        {"kind": event.kind, "at": event.created_at.isoformat(), **event.data},
        separators=(",", ":"),
        default=str,
    )
    return f"id: {event.id}\nevent: {event.kind}\ndata: {body}\n\n".encode()


async def stream(
    sessionmaker: async_sessionmaker[AsyncSession],
    deployment_id: uuid.UUID,
    after: int,
    *,
    poll_s: float = POLL_S,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[bytes]:
    """SSE frames from event `after` on; ends once the deployment is finished and every event
    was sent (the client's reconnect then gets an empty, ending stream)."""
    yield f"retry: {int(poll_s * 3000)}\n\n".encode()
    quiet = 0.0
    while True:
        async with sessionmaker() as session:
            # Status first: a deployment seen finished had its last event committed with it.
            deployment = await session.get(Deployment, deployment_id)
            events = await since(session, deployment_id, after)
        for event in events:
            assert event.id is not None
            after = event.id
            yield _frame(event)
        if len(events) == BATCH:
            continue
        if deployment is None or deployment.status.finished:
            return
        await asyncio.sleep(poll_s)
        quiet = 0.0 if events else quiet + poll_s
        if quiet >= keepalive_s:
            quiet = 0.0
            yield b": keepalive\n\n"  # keeps proxies from closing an idle stream

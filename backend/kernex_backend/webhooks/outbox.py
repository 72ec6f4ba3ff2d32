"""How domains emit webhook events: in the same transaction as the change, so an event is sent
if and only if the change committed. Two forms: `add` for ORM sessions (synchronous, like
session.add), `emit` for Core connections (presence is applied with plain SQL)."""

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.webhooks.models import EventType, WebhookEvent

# Only when some enabled webhook wants the type: 10,000 devices coming online write nothing
# unless someone listens.
_EMIT = sa.text(
    """
    INSERT INTO webhook_events (event_id, event_type, subject, data, fanned_out, created_at)
    SELECT gen_random_uuid(), CAST(:event_type AS text), :subject, CAST(:data AS jsonb), false,
        now()
    WHERE EXISTS (
        SELECT 1 FROM webhooks WHERE enabled AND event_types ? CAST(:event_type AS text)
    )
    """
)


def add(session: AsyncSession, event_type: EventType, subject: str, **data: Any) -> None:
    """Add an event to the session (committed with the change it describes)."""
    session.add(WebhookEvent(event_type=event_type.value, subject=subject, data=data))


async def emit(
    connection: AsyncConnection, event_type: EventType, subject: str, **data: Any
) -> None:
    """Write an event on a Core connection, if any enabled webhook subscribes to its type."""
    import json

    await connection.execute(
        _EMIT,
        {
            "event_type": event_type.value,
            "subject": subject,
            "data": json.dumps(data, default=str),
        },
    )

"""Recording and querying audit events."""

from datetime import datetime
from typing import Any

import structlog
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.audit.models import AuditEvent
from kernex_backend.core.pagination import Page, paginate


def record(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit event to the caller's transaction (it commits with the change it records)."""
    event = AuditEvent(
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        details=details or {},
        request_id=structlog.contextvars.get_contextvars().get("request_id"),
    )
    session.add(event)
    return event


async def list_events(
    *,
    session: AsyncSession,
    page: Page,
    actor: str | None = None,
    action: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[AuditEvent], int]:
    """Events matching every given filter, newest first."""
    conditions: list[Any] = []
    if actor is not None:
        conditions.append(col(AuditEvent.actor) == actor)
    if action is not None:
        conditions.append(col(AuditEvent.action) == action)
    if object_type is not None:
        conditions.append(col(AuditEvent.object_type) == object_type)
    if object_id is not None:
        conditions.append(col(AuditEvent.object_id) == object_id)
    if since is not None:
        conditions.append(col(AuditEvent.at) >= since)
    if until is not None:
        conditions.append(col(AuditEvent.at) < until)
    return await paginate(
        session, AuditEvent, page, where=conditions, order_by=[col(AuditEvent.id).desc()]
    )

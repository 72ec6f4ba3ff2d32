"""API shapes for audit events."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class AuditEventPublic(BaseModel):
    """One audit event."""

    id: int
    at: datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    details: dict[str, Any]
    request_id: str | None


class AuditEventsPublic(BaseModel):
    """A page of audit events."""

    data: list[AuditEventPublic]
    count: int

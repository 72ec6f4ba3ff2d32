"""The audit_events table: append-only."""

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from kernex_backend.core.columns import created_at_field


class AuditEvent(SQLModel, table=True):
    """Who did what to which object, and when."""

    __tablename__ = "audit_events"
    __table_args__ = (sa.Index("ix_audit_events_object", "object_type", "object_id"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=sa.BigInteger)
    at: datetime = created_at_field()
    actor: str = Field(max_length=128, index=True)
    action: str = Field(max_length=64, index=True)
    object_type: str = Field(max_length=32)
    object_id: str = Field(max_length=128)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSONB, nullable=False)
    request_id: str | None = Field(default=None, max_length=64)

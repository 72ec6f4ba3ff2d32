"""Webhook subscriptions, the events to send, and one delivery per (webhook, event)."""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from kernex_backend.core.columns import created_at_field, enum_field, optional_timestamp_field


class EventType(StrEnum):
    """What a webhook can subscribe to."""

    DEVICE_REGISTERED = "device.registered"
    DEVICE_ONLINE = "device.online"
    DEVICE_OFFLINE = "device.offline"
    DEVICE_REVOKED = "device.revoked"
    DEPLOYMENT_STARTED = "deployment.started"
    DEPLOYMENT_WAVE_STARTED = "deployment.wave_started"
    DEPLOYMENT_PAUSED = "deployment.paused"
    DEPLOYMENT_ABORTED = "deployment.aborted"
    DEPLOYMENT_COMPLETED = "deployment.completed"
    EXECUTION_FAILED = "execution.failed"


class DeliveryState(StrEnum):
    """Where one delivery is."""

    PENDING = "pending"  # due at next_attempt_at (first try or a retry)
    DELIVERED = "delivered"  # the target answered 2xx
    DEAD = "dead"  # gave up after the last attempt, or the webhook was disabled


class Webhook(SQLModel, table=True):
    """A target URL and the event types it wants."""

    __tablename__ = "webhooks"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=64)
    url: str = Field(max_length=2048)
    # The HMAC key. Needed in the clear to sign; shown once at creation, never returned after.
    secret: str = Field(max_length=128)
    event_types: list[str] = Field(default_factory=list, sa_type=JSONB, nullable=False)
    enabled: bool = Field(default=True, nullable=False)
    disabled_reason: str | None = Field(default=None, max_length=200)
    consecutive_failures: int = Field(default=0, nullable=False)
    created_at: datetime = created_at_field()
    updated_at: datetime = created_at_field()


class WebhookEvent(SQLModel, table=True):
    """An event emitted in the transaction of the change it describes; fanned out into one
    delivery per subscribed webhook by the dispatcher."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        sa.Index("ix_webhook_events_pending", "id", postgresql_where=sa.text("NOT fanned_out")),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=sa.BigInteger)
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4, unique=True)
    event_type: str = Field(max_length=48)
    subject: str = Field(max_length=128)  # the device or deployment it is about
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSONB, nullable=False)
    fanned_out: bool = Field(default=False, nullable=False)
    created_at: datetime = created_at_field()


class WebhookDelivery(SQLModel, table=True):
    """One event to one webhook, and how its attempts went (the delivery log)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=sa.text("state = 'pending'"),
        ),
        sa.Index("ix_webhook_deliveries_webhook_id_id", "webhook_id", "id"),
        # Pruning asks, for each old event, whether a delivery of it is still pending.
        sa.Index("ix_webhook_deliveries_event_id", "event_id"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=sa.BigInteger)
    webhook_id: uuid.UUID = Field(foreign_key="webhooks.id", ondelete="CASCADE")
    event_id: int = Field(
        foreign_key="webhook_events.id", ondelete="CASCADE", sa_type=sa.BigInteger
    )
    state: DeliveryState = enum_field(DeliveryState, DeliveryState.PENDING, name="delivery_state")
    attempts: int = Field(default=0, nullable=False)
    next_attempt_at: datetime = created_at_field()
    last_status: int | None = None
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = created_at_field()
    delivered_at: datetime | None = optional_timestamp_field()

"""API shapes of webhooks and their delivery log."""

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from kernex_backend.core.text import ShortLabel
from kernex_backend.webhooks.models import DeliveryState, EventType

URL_PATTERN = r"^https?://[^\s/$.?#][^\s]*$"


class WebhookCreate(BaseModel):
    """A new subscription. The secret is generated unless given (32+ characters)."""

    model_config = ConfigDict(extra="forbid")

    name: ShortLabel
    url: str = Field(max_length=2048, pattern=URL_PATTERN)
    event_types: list[EventType] = Field(min_length=1, max_length=len(EventType))
    secret: str | None = Field(default=None, min_length=32, max_length=128)


class WebhookUpdate(BaseModel):
    """What may change; enabling again clears the failure count."""

    model_config = ConfigDict(extra="forbid")

    name: ShortLabel | None = None
    url: str | None = Field(default=None, max_length=2048, pattern=URL_PATTERN)
    event_types: list[EventType] | None = Field(default=None, min_length=1)
    enabled: bool | None = None


class WebhookPublic(BaseModel):
    """A webhook, never its secret."""

    id: uuid.UUID
    name: str
    url: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None
    consecutive_failures: int
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookPublic):
    """The answer to a create: the secret, shown only this once."""

    secret: str


class WebhooksPublic(BaseModel):
    """A page of webhooks."""

    data: list[WebhookPublic]
    count: int


class DeliveryPublic(BaseModel):
    """One delivery and how its attempts went."""

    id: int
    event_id: uuid.UUID
    event_type: str
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveriesPublic(BaseModel):
    """The newest deliveries of a webhook first."""

    data: list[DeliveryPublic]

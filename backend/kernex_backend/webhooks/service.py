"""Webhook subscriptions: create, list, change, delete, and the delivery log."""

import secrets
import uuid

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.audit import service as audit
from kernex_backend.core.db import utc_now
from kernex_backend.core.errors import InvalidInput, NotFound
from kernex_backend.webhooks.models import Webhook, WebhookDelivery, WebhookEvent
from kernex_backend.webhooks.schemas import DeliveryPublic, WebhookCreate, WebhookUpdate
from kernex_backend.webhooks.targets import TargetRefused, check_target


class WebhookNotFound(NotFound):
    """No webhook has that id."""


class TargetNotAllowed(InvalidInput):
    """The URL points somewhere webhooks may not go."""

    slug = "webhook-target-refused"
    title = "Webhook target refused"


async def _checked(url: str, allow_private: bool) -> str:
    try:
        await check_target(url, allow_private=allow_private)
    except TargetRefused as exc:
        raise TargetNotAllowed(str(exc)) from None
    return url


async def create(
    *, session: AsyncSession, data: WebhookCreate, allow_private: bool, actor: str
) -> Webhook:
    """Save a webhook (its target checked first)."""
    webhook = Webhook(
        name=data.name,
        url=await _checked(data.url, allow_private),
        secret=data.secret or secrets.token_urlsafe(32),
        event_types=sorted({e.value for e in data.event_types}),
    )
    session.add(webhook)
    audit.record(
        session,
        actor=actor,
        action="webhook.create",
        object_type="webhook",
        object_id=str(webhook.id),
        details={"url": webhook.url, "event_types": webhook.event_types},
    )
    await session.commit()
    await session.refresh(webhook)
    return webhook


async def get(*, session: AsyncSession, webhook_id: uuid.UUID) -> Webhook:
    """One webhook, or 404."""
    webhook = await session.get(Webhook, webhook_id)
    if webhook is None:
        raise WebhookNotFound(f"no webhook with id {webhook_id}")
    return webhook


async def list_all(*, session: AsyncSession) -> list[Webhook]:
    """Every webhook, oldest first."""
    return list((await session.exec(select(Webhook).order_by(col(Webhook.created_at)))).all())


async def update(
    *,
    session: AsyncSession,
    webhook_id: uuid.UUID,
    data: WebhookUpdate,
    allow_private: bool,
    actor: str,
) -> Webhook:
    """Change a webhook; enabling it again clears its failures and reason."""
    webhook = await get(session=session, webhook_id=webhook_id)
    if data.name is not None:
        webhook.name = data.name
    if data.url is not None:
        webhook.url = await _checked(data.url, allow_private)
    if data.event_types is not None:
        webhook.event_types = sorted({e.value for e in data.event_types})
    if data.enabled is not None:
        webhook.enabled = data.enabled
        if data.enabled:
            webhook.consecutive_failures = 0
            webhook.disabled_reason = None
    webhook.updated_at = utc_now()
    session.add(webhook)
    audit.record(
        session,
        actor=actor,
        action="webhook.update",
        object_type="webhook",
        object_id=str(webhook.id),
        details=data.model_dump(exclude_none=True, mode="json"),
    )
    await session.commit()
    await session.refresh(webhook)
    return webhook


async def delete(*, session: AsyncSession, webhook_id: uuid.UUID, actor: str) -> None:
    """Delete a webhook and its delivery log."""
    webhook = await get(session=session, webhook_id=webhook_id)
    await session.delete(webhook)
    audit.record(
        session,
        actor=actor,
        action="webhook.delete",
        object_type="webhook",
        object_id=str(webhook_id),
    )
    await session.commit()


async def deliveries(
    *, session: AsyncSession, webhook_id: uuid.UUID, limit: int
) -> list[DeliveryPublic]:
    """The newest deliveries first."""
    await get(session=session, webhook_id=webhook_id)
    rows = await session.exec(
        select(WebhookDelivery, WebhookEvent)
        .join(WebhookEvent, col(WebhookEvent.id) == col(WebhookDelivery.event_id))
        .where(col(WebhookDelivery.webhook_id) == webhook_id)
        .order_by(col(WebhookDelivery.id).desc())
        .limit(limit)
    )
    return [
        DeliveryPublic(
            id=d.id or 0,
            event_id=e.event_id,
            event_type=e.event_type,
            state=d.state,
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at,
            last_status=d.last_status,
            last_error=d.last_error,
            created_at=d.created_at,
            delivered_at=d.delivered_at,
        )
        for d, e in rows.all()
    ]

"""Webhook endpoints (admin only)."""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from kernex_backend.core.access import AdminAccess
from kernex_backend.core.runtime import SessionDep, SettingsDep
from kernex_backend.webhooks import service
from kernex_backend.webhooks.models import Webhook
from kernex_backend.webhooks.schemas import (
    DeliveriesPublic,
    WebhookCreate,
    WebhookCreated,
    WebhookPublic,
    WebhooksPublic,
    WebhookUpdate,
)

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No webhook has that id"}}
_REFUSED: dict[int | str, dict[str, Any]] = {
    422: {"description": "Invalid input, or a target that is loopback, link-local or reserved"}
}


def _public(webhook: Webhook) -> WebhookPublic:
    return WebhookPublic.model_validate(webhook, from_attributes=True)


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=WebhookCreated, responses=_REFUSED
)
async def create_webhook(
    body: WebhookCreate, session: SessionDep, settings: SettingsDep, principal: AdminAccess
) -> WebhookCreated:
    """Subscribe a URL to event types. The secret in the answer is shown only this once."""
    webhook = await service.create(
        session=session,
        data=body,
        allow_private=settings.webhooks.allow_private_targets,
        actor=principal.actor,
    )
    return WebhookCreated(**_public(webhook).model_dump(), secret=webhook.secret)


@router.get("", response_model=WebhooksPublic)
async def list_webhooks(session: SessionDep, _: AdminAccess) -> WebhooksPublic:
    """Every webhook, without secrets."""
    webhooks = await service.list_all(session=session)
    return WebhooksPublic(data=[_public(w) for w in webhooks], count=len(webhooks))


@router.get("/{webhook_id}", response_model=WebhookPublic, responses=_NOT_FOUND)
async def get_webhook(webhook_id: uuid.UUID, session: SessionDep, _: AdminAccess) -> WebhookPublic:
    """One webhook."""
    return _public(await service.get(session=session, webhook_id=webhook_id))


@router.patch("/{webhook_id}", response_model=WebhookPublic, responses=_NOT_FOUND | _REFUSED)
async def update_webhook(
    webhook_id: uuid.UUID,
    body: WebhookUpdate,
    session: SessionDep,
    settings: SettingsDep,
    principal: AdminAccess,
) -> WebhookPublic:
    """Change a webhook; `"enabled": true` re-enables one that was disabled for failures."""
    webhook = await service.update(
        session=session,
        webhook_id=webhook_id,
        data=body,
        allow_private=settings.webhooks.allow_private_targets,
        actor=principal.actor,
    )
    return _public(webhook)


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_NOT_FOUND)
async def delete_webhook(
    webhook_id: uuid.UUID, session: SessionDep, principal: AdminAccess
) -> Response:
    """Delete a webhook and its delivery log."""
    await service.delete(session=session, webhook_id=webhook_id, actor=principal.actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{webhook_id}/deliveries", response_model=DeliveriesPublic, responses=_NOT_FOUND)
async def list_deliveries(
    webhook_id: uuid.UUID,
    session: SessionDep,
    _: AdminAccess,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeliveriesPublic:
    """The delivery log, newest first: state, attempts, last status and error."""
    return DeliveriesPublic(
        data=await service.deliveries(session=session, webhook_id=webhook_id, limit=limit)
    )

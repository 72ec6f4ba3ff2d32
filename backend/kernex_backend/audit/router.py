"""Audit event endpoints (admin only)."""

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from kernex_backend.audit import service
from kernex_backend.audit.schemas import AuditEventPublic, AuditEventsPublic
from kernex_backend.core.access import AdminAccess
from kernex_backend.core.pagination import PageDep
from kernex_backend.core.runtime import SessionDep

router = APIRouter(prefix="/audit-events", tags=["audit"])

ShortText = Annotated[str | None, Query(max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")]


@router.get("", response_model=AuditEventsPublic)
async def list_audit_events(
    session: SessionDep,
    _: AdminAccess,
    page: PageDep,
    actor: ShortText = None,
    action: ShortText = None,
    object_type: ShortText = None,
    object_id: ShortText = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
) -> AuditEventsPublic:
    """Audit events, newest first, filtered by any of actor, action, object and time."""
    events, count = await service.list_events(
        session=session,
        page=page,
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        since=since,
        until=until,
    )
    return AuditEventsPublic(
        data=[AuditEventPublic.model_validate(e, from_attributes=True) for e in events], count=count
    )

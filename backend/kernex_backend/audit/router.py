"""Audit event endpoints (admin only)."""

import re
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BeforeValidator

from kernex_backend.audit import service
from kernex_backend.audit.schemas import AuditEventPublic, AuditEventsPublic
from kernex_backend.core.access import AdminAccess
from kernex_backend.core.pagination import PageDep
from kernex_backend.core.runtime import SessionDep

router = APIRouter(prefix="/audit-events", tags=["audit"])

ShortText = Annotated[str | None, Query(max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")]


def _iso_only(value: object) -> object:
    # pydantic would read "0.5" as a Unix time; the schema promises an RFC 3339 date-time.
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+(\.\d*)?\s*", value):
        raise ValueError("give an ISO 8601 date-time with its offset, e.g. 2026-12-01T00:00:00Z")
    return value


IsoTime = Annotated[AwareDatetime | None, BeforeValidator(_iso_only)]


@router.get("", response_model=AuditEventsPublic)
async def list_audit_events(
    session: SessionDep,
    _: AdminAccess,
    page: PageDep,
    actor: ShortText = None,
    action: ShortText = None,
    object_type: ShortText = None,
    object_id: ShortText = None,
    since: IsoTime = None,
    until: IsoTime = None,
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

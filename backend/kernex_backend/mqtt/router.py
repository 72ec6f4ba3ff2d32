"""GET /mqtt/status: is this replica's bridge connected, and what has it counted."""

from fastapi import APIRouter, Request
from pydantic import BaseModel

from kernex_backend.core.security import ReadAccess

router = APIRouter(prefix="/mqtt", tags=["mqtt"])


class BridgeStatus(BaseModel):
    """This replica's view of device traffic (counters reset when the process restarts)."""

    enabled: bool
    connected: bool
    heartbeat_backlog: int
    counters: dict[str, int]


@router.get("/status", response_model=BridgeStatus)
async def bridge_status(request: Request, _: ReadAccess) -> BridgeStatus:
    """Received, stored, refused and dropped messages by kind, for this replica."""
    fleet = getattr(request.app.state, "fleet", None)
    if fleet is None:
        return BridgeStatus(enabled=False, connected=False, heartbeat_backlog=0, counters={})
    return BridgeStatus(
        enabled=True,
        connected=fleet.bridge.connected.is_set(),
        heartbeat_backlog=fleet.heartbeats.backlog,
        counters=dict(sorted(fleet.bridge.stats.counts.items())),
    )

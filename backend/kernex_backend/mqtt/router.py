"""GET /mqtt/status: is this replica's bridge connected, what has it counted, who misbehaves."""

from fastapi import APIRouter, Request
from pydantic import BaseModel

from kernex_backend.core.security import ReadAccess

router = APIRouter(prefix="/mqtt", tags=["mqtt"])


class OffenderPublic(BaseModel):
    """A device whose messages were refused recently (over budget, malformed, oversized)."""

    device_id: str
    total: int
    dropped: dict[str, int]


class BridgeStatus(BaseModel):
    """This replica's view of device traffic (counters reset when the process restarts)."""

    enabled: bool
    connected: bool
    heartbeat_backlog: int
    progress_backlog: int = 0
    # What keeps device traffic from flowing now (a task down, a writer stuck); empty when fine.
    problems: list[str] = []
    # The devices with the most refused messages over the last one to two minutes.
    offenders: list[OffenderPublic] = []
    counters: dict[str, int]


@router.get("/status", response_model=BridgeStatus)
async def bridge_status(request: Request, _: ReadAccess) -> BridgeStatus:
    """Received, stored, refused and dropped messages by kind, and the top offending devices,
    for this replica."""
    fleet = getattr(request.app.state, "fleet", None)
    if fleet is None:
        return BridgeStatus(enabled=False, connected=False, heartbeat_backlog=0, counters={})
    return BridgeStatus(
        enabled=True,
        connected=fleet.bridge.connected.is_set(),
        heartbeat_backlog=fleet.heartbeats.backlog,
        progress_backlog=fleet.progress.backlog,
        problems=fleet.problems(),
        offenders=[
            OffenderPublic(device_id=o.device_id, total=o.total, dropped=o.dropped)
            for o in fleet.budgets.offenders()
        ],
        counters=dict(sorted(fleet.bridge.stats.counts.items())),
    )

"""GET /mqtt/status: is this replica's bridge connected, what has it counted, who misbehaves."""

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from kernex_backend.core.access import ReadAccess
from kernex_backend.core.runtime import optional_component
from kernex_backend.mqtt.handlers import FleetState

FleetDep = Annotated[FleetState | None, Depends(optional_component(FleetState))]

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
async def bridge_status(fleet: FleetDep, _: ReadAccess) -> BridgeStatus:
    """Received, stored, refused and dropped messages by kind, and the top offending devices,
    for this replica."""
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

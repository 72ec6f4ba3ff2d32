"""A liveness mark for supervisors that cannot see inside the agent (a container's
HEALTHCHECK, a watchdog script): the agent's event loop rewrites `alive.json` in its state
directory while it runs, and `kernex-agent --health` reads it.

Liveness is the agent working, not the network being up: a device on a flaky link is healthy
while it keeps trying. The mark says whether it is connected, for people reading it.
"""

import json
import os
import time
from pathlib import Path

ALIVE_FILE = "alive.json"
# Written this often; stale after STALE_AFTER periods (a blocked loop, a hung agent).
PERIOD_S = 15.0
STALE_AFTER = 4


def mark(state_dir: Path, *, connected: bool, now: float | None = None) -> None:
    """Record that the loop is turning. Replaced atomically, so a reader never sees half a
    file; not fsynced: after a power cut a stale mark is right, and flash is spared a write."""
    body = {"at": time.time() if now is None else now, "connected": connected, "pid": os.getpid()}
    temporary = state_dir / f".{ALIVE_FILE}.tmp"
    temporary.write_text(json.dumps(body))
    os.replace(temporary, state_dir / ALIVE_FILE)


def check(state_dir: Path, *, now: float | None = None) -> tuple[bool, str]:
    """Whether the mark is fresh, and a line saying why (for the health command's output)."""
    try:
        body = json.loads((state_dir / ALIVE_FILE).read_text())
        at = float(body["at"])
        connected = bool(body["connected"])
    except (OSError, ValueError, KeyError, TypeError):
        return False, "no liveness mark: the agent is not running (or has not started yet)"
    age = (time.time() if now is None else now) - at
    if age > PERIOD_S * STALE_AFTER:
        return False, f"liveness mark is {age:.0f} s old: the agent is hung or gone"
    link = "connected to the broker" if connected else "not connected to the broker (retrying)"
    return True, f"alive {age:.0f} s ago, {link}"

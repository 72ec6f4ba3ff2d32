"""Fault injection for the power-cut tests and the simulator, passed into the agent from outside
(`Agent(faults=...)`); the production agent runs with none."""

import logging
import os
from collections.abc import Callable
from pathlib import Path

from kernex_agent.files import write_atomic
from kernex_agent.update.machine import State

log = logging.getLogger("kernex_agent")

# Called with each state the update machine enters, before its work.
FaultInjector = Callable[[State], None]


def exit_like_a_power_cut(state: State) -> None:
    """End the process at once: no clean-up, no goodbye."""
    os._exit(137)


class CrashOnce:
    """Die once, right after entering `state`: a marker in `state_dir` remembers it happened."""

    def __init__(
        self,
        state: State,
        state_dir: Path,
        *,
        crash: Callable[[State], None] = exit_like_a_power_cut,
    ) -> None:
        self.state = state
        self.marker = state_dir / f"crashed-in-{state.value}"
        self.crash = crash

    def __call__(self, entered: State) -> None:
        if entered != self.state or self.marker.exists():
            return
        write_atomic(self.marker, b"")
        log.warning("agent.fault_injected", extra={"state": entered.value})
        self.crash(entered)

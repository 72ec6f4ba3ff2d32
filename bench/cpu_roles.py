"""The processes of a benchmark run by role, and the CPU time each role used, for the profiles.

A run's processes are this one, its descendants (the backend, the broker, the simulator or the
load) and the daemons that name the run's folder in their command line (PostgreSQL's server
detaches from us). The system's own PostgreSQL and Mosquitto are not ours and are left out, and
so is py-spy, which measures rather than serves.
"""

import collections
from pathlib import Path

import psutil

ROLES = (
    ("backend", "kernex-backend"),
    ("simulator", "kernex-sim"),
    ("broker", "mosquitto"),
    ("database", "postgres"),
    ("store", "weed"),
)


def _command(process: psutil.Process) -> str | None:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return None


def role_of(command: str) -> str | None:
    return next((role for role, marker in ROLES if marker in command), None)


def processes_by_role(
    root: Path, *, own: str = "this process", other: str = "load"
) -> dict[psutil.Process, str]:
    """Every process of the run: this one as `own`, the stack's by their command line (each with
    its children, which take its role), and any other descendant of this one as `other`."""
    me = psutil.Process()
    ours = set(me.children(recursive=True))
    roles: dict[psutil.Process, str] = {me: own}
    for process in psutil.process_iter():
        command = _command(process)
        if command is None or "py-spy" in command:
            continue
        role = role_of(command)
        if role is None or (process not in ours and str(root) not in command):
            continue
        roles.setdefault(process, role)
        try:
            for child in process.children(recursive=True):
                roles.setdefault(child, role)
        except psutil.Error:
            continue
    for process in ours:
        command = _command(process)
        if command is not None and "py-spy" not in command:
            roles.setdefault(process, other)
    return roles


class CpuMeter:
    """CPU seconds (user and system) by role since `start()`; a process that started meanwhile
    counts whole, one that ended meanwhile is lost."""

    def __init__(self, root: Path, **names: str) -> None:
        self.root = root
        self._names = names
        self._before: dict[psutil.Process, float] = {}

    @staticmethod
    def _cpu(process: psutil.Process) -> float | None:
        try:
            return float(sum(process.cpu_times()[:2]))
        except psutil.Error:
            return None

    def start(self) -> None:
        self._before = {}
        for process in processes_by_role(self.root, **self._names):
            cpu = self._cpu(process)
            if cpu is not None:
                self._before[process] = cpu

    def used(self) -> dict[str, float]:
        totals: dict[str, float] = collections.defaultdict(float)
        for process, role in processes_by_role(self.root, **self._names).items():
            cpu = self._cpu(process)
            if cpu is not None:
                totals[role] += cpu - self._before.get(process, 0.0)
        return dict(totals)

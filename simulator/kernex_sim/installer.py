"""A simulated installer: the agent's whole update path runs, but nothing is unpacked.

It implements the agent's Installer Protocol with the running version kept in one small file,
so a simulated device keeps its version across (simulated) reboots. A share of devices can be
told to fail their installs, which the agent then rolls back like any other failure.
"""

import time
from pathlib import Path

from kernex_agent.files import write_atomic
from kernex_agent.update.installer import InstallRefused


class SimulatedInstaller:
    """Records versions instead of installing them."""

    def __init__(
        self,
        state_dir: Path,
        *,
        fail: bool = False,
        install_s: float = 0.0,
        only_version: str | None = None,
    ) -> None:
        """`fail`: installs fail (only of `only_version`, when given)."""
        self._current = state_dir / "sim-current"
        self._previous = state_dir / "sim-previous"
        self._fail = fail
        self._install_s = install_s
        self._only_version = only_version

    def _read(self, path: Path) -> str | None:
        try:
            return path.read_text() or None
        except FileNotFoundError:
            return None

    def current_version(self) -> str | None:
        return self._read(self._current)

    def install(self, bundle: Path, version: str) -> None:
        if self._fail and self._only_version in (None, version):
            raise InstallRefused("simulated install failure")
        if self._install_s:
            time.sleep(self._install_s)  # runs in the agent's worker thread
        running = self.current_version()
        if running == version:
            return
        write_atomic(self._previous, (running or "").encode())
        write_atomic(self._current, version.encode())

    def rollback(self, version: str) -> None:
        if self.current_version() == version:
            write_atomic(self._current, (self._read(self._previous) or "").encode())
        self._previous.unlink(missing_ok=True)

    def recover(self) -> str | None:
        running, before = self.current_version(), self._read(self._previous)
        if running is None or not self._previous.exists():
            return None
        self.rollback(running)
        return before

    def commit(self, version: str) -> None:
        self._previous.unlink(missing_ok=True)

    def cleanup(self) -> None:
        return None

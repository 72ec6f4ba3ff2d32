"""Health checks: does the freshly installed version work? A failing or hanging check rolls
the update back."""

import subprocess
from collections.abc import Sequence
from pathlib import Path


class CommandHealthCheck:
    """Runs a configured command; healthy when it exits 0 within the timeout."""

    def __init__(self, argv: Sequence[str], *, timeout_s: float, cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.timeout_s = timeout_s
        self.cwd = cwd

    def __call__(self) -> bool:
        """True if healthy; a timeout or a non-zero exit is unhealthy."""
        try:
            # The command comes from the device's own root-owned configuration, not the network.
            result = subprocess.run(  # noqa: S603
                self.argv, cwd=self.cwd, timeout=self.timeout_s, capture_output=True, check=False
            )
        except subprocess.TimeoutExpired:
            return False
        except OSError:
            return False
        return result.returncode == 0

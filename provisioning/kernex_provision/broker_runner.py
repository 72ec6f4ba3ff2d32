"""Run Mosquitto and reload it when its CRL or ACL changes: the broker-side half of revocation
wherever the backend cannot signal the broker itself (another container, another pod).

The backend writes the CRL and ACL into the broker directory on every revocation or quarantine
(a shared volume in compose). Mosquitto re-reads both on SIGHUP, and its ACL then takes a live
session's access away. This runner is the container's main process: it starts Mosquitto, polls
the two files' contents and sends SIGHUP when either changed, forwards SIGTERM/SIGINT, and exits
with Mosquitto's status so that the container's restart policy sees a crash.
"""

import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from kernex_provision.broker import BrokerLayout

POLL_INTERVAL_S = 0.5


def fingerprint(paths: tuple[Path, ...]) -> tuple[bytes, ...]:
    """The contents' digests; a missing or half-readable file counts as its own state."""
    digests = []
    for path in paths:
        try:
            digests.append(hashlib.sha256(path.read_bytes()).digest())
        except OSError:
            digests.append(b"")
    return tuple(digests)


class BrokerRunner:
    """Mosquitto as a child process, reloaded when the watched files change."""

    def __init__(
        self,
        layout: BrokerLayout,
        *,
        command: list[str],
        interval_s: float = POLL_INTERVAL_S,
        say: Callable[[str], None],
    ) -> None:
        self._watched = (layout.crl, layout.acl)
        self._command = command
        self._interval_s = interval_s
        self._say = say
        self._child: subprocess.Popen[bytes] | None = None
        self.reloads = 0

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signum)

    def run(self) -> int:
        """Start the broker and watch until it exits; returns its exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._forward)
        seen = fingerprint(self._watched)
        self._child = subprocess.Popen(self._command)  # noqa: S603 - our fixed command line
        self._say(f"broker-run: mosquitto started (pid {self._child.pid}), watching CRL and ACL")
        while (status := self._child.poll()) is None:
            time.sleep(self._interval_s)
            now = fingerprint(self._watched)
            if now != seen:
                seen = now
                self._child.send_signal(signal.SIGHUP)
                self.reloads += 1
                self._say("broker-run: CRL or ACL changed; mosquitto reloaded")
        self._say(f"broker-run: mosquitto exited with status {status}")
        return status


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def main_loop(layout: BrokerLayout, mosquitto: str) -> int:
    """The `kernex-provision broker-run` command body."""
    command = [mosquitto, "-c", str(layout.conf)]
    return BrokerRunner(layout, command=command, say=_say).run()

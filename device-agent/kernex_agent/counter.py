"""Counters that keep growing across restarts and reboots, persisted in one small file each.

The MQTT session number grows with every connection attempt: presence messages carry it, so
the backend can tell that an offline (a Last Will delivered late) belongs to an older session
than the online it already holds. Progress messages carry a sequence number the same way.
"""

import logging
from pathlib import Path
from typing import Final

from kernex_agent.files import write_atomic

# Values reserved per write: the flash is written once per BLOCK values, and a disk that fills
# up leaves the rest of the block to hand out (enough for an update's reports to the end).
BLOCK: Final = 32

log = logging.getLogger("kernex_agent")


class PersistentCounter:
    """An integer that only grows, handed out from blocks reserved on disk.

    The file holds the highest value reserved, saved before any value of its block is handed
    out; a restart starts above it, so no value is ever repeated (numbers skip the unused rest
    of a block instead). When the reservation cannot be saved (a full disk, a read-only one)
    the counter still hands out the next value, unsaved, and says so: a value repeated after a
    restart is ignored as stale by the backend, which is less harm than a device that can no
    longer connect or report.
    """

    def __init__(self, path: Path, *, block: int = BLOCK) -> None:
        self.path = path
        self._block = block
        self.current = self._read()  # the last value handed out (or the saved reservation)
        self._reserved = self.current
        self._unsaved = False
        # Reserved at start, while the disk most likely has room: a disk that fills up later
        # still leaves a whole block of numbers that no restart will hand out again.
        self._reserve(self.current + 1)

    def _reserve(self, first: int) -> None:
        ceiling = first + self._block - 1
        try:
            write_atomic(self.path, str(ceiling).encode())
        except OSError as exc:
            if not self._unsaved:
                log.warning(
                    "agent.counter_unsaved", extra={"file": self.path.name, "error": str(exc)}
                )
            self._unsaved = True
        else:
            self._reserved, self._unsaved = ceiling, False

    def _read(self) -> int:
        try:
            return max(0, int(self.path.read_text().strip() or 0))
        except FileNotFoundError:
            return 0
        except ValueError:
            # A damaged file must not stop the device; the file's age in seconds is larger
            # than any count it could have reached, so the counter still grows.
            return int(self.path.stat().st_mtime)

    def advance(self) -> int:
        """The next value; its block reserved on disk first when it can be."""
        value = self.current + 1
        if value > self._reserved:
            self._reserve(value)
        self.current = value
        return value

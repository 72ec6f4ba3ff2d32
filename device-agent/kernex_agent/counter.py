"""Counters that keep growing across restarts and reboots, persisted in one small file each.

The MQTT session number grows with every connection attempt: presence messages carry it, so
the backend can tell that an offline (a Last Will delivered late) belongs to an older session
than the online it already holds. Progress messages carry a sequence number the same way.
"""

from pathlib import Path

from kernex_agent.files import write_atomic


class PersistentCounter:
    """An integer saved before each new value is handed out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current = self._read()

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
        """The next value, saved before it is used."""
        self.current += 1
        write_atomic(self.path, str(self.current).encode())
        return self.current

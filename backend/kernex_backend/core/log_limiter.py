"""Log lines that an attacker cannot multiply: at most one per key per interval.

A device can send thousands of bad messages a second, and a log line per message (or worse, a
traceback per message) costs the event loop more than the message itself: the logs would be
the denial of service. Callers log the first occurrence of a key (device and reason, or error
type) at once, hold back the rest for the interval, and report how many were held back on the
next line they are allowed.
"""

import time
from collections import Counter
from collections.abc import Hashable


class LogLimiter:
    """Decides whether a line keyed by `key` may be logged now."""

    def __init__(self, *, interval_s: float = 60.0, max_keys: int = 10_000) -> None:
        self._interval_s = interval_s
        self._max_keys = max_keys
        self._last: dict[Hashable, float] = {}
        self._held: Counter[Hashable] = Counter()

    def allow(self, key: Hashable) -> bool:
        """True if no line for `key` was logged within the interval (and record this one)."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._held[key] += 1
            return False
        if len(self._last) >= self._max_keys:
            self._forget_before(now - self._interval_s)
        self._last[key] = now
        return True

    def suppressed(self, key: Hashable) -> int:
        """How many lines for `key` were held back since its previous line (and reset that)."""
        return self._held.pop(key, 0)

    def _forget_before(self, cutoff: float) -> None:
        stale = [key for key, at in self._last.items() if at < cutoff]
        for key in stale or list(self._last):  # all recent: start over rather than grow
            self._last.pop(key, None)

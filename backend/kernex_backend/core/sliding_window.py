"""A per-key limit of events in a sliding window, that forgets keys gone quiet."""

import time
from collections import deque
from collections.abc import Callable


class SlidingWindowLimit:
    """At most `limit` events per key in any `window_s` seconds.

    Keys are swept once a window: a key with nothing in the last window is dropped, so a
    fleet's worth of devices that each asked once does not stay in memory (a deque per key is
    over half a kilobyte)."""

    def __init__(
        self, limit: int, window_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        self._events: dict[str, deque[float]] = {}
        self._swept_at = clock()

    def __len__(self) -> int:
        """How many keys are tracked."""
        return len(self._events)

    def allow(self, key: str) -> bool:
        """Count an event for `key` and say whether it is within the limit (a refused event is
        not counted)."""
        now = self._clock()
        if now - self._swept_at >= self._window_s:
            self._sweep(now)
        window = self._events.setdefault(key, deque())
        while window and window[0] <= now - self._window_s:
            window.popleft()
        if len(window) >= self._limit:
            return False
        window.append(now)
        return True

    def _sweep(self, now: float) -> None:
        quiet = [
            key
            for key, window in self._events.items()
            if not window or window[-1] <= now - self._window_s
        ]
        for key in quiet:
            del self._events[key]
        self._swept_at = now

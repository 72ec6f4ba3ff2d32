"""Per-device traffic budgets: what one device may send, checked before anything is parsed.

Every device channel has a rate (messages per second) and a burst allowance. The check runs on
the topic alone, first thing in dispatch, so a flooding device's surplus costs a dictionary
look-up and a subtraction, never a parse or a database round trip. What was dropped is counted
per device and reason, which is what the operator sees as the top offenders; a device that
keeps far over its budget is reported for quarantine (cut off at the broker for a while).
"""

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from kernex_protocol.topics import Channel

_IDLE_FORGET_S: Final = 300.0  # a device silent this long starts again with a full bucket


@dataclass(frozen=True, slots=True)
class Budget:
    """Messages per second, and how many may come at once above that."""

    rate_per_s: float
    burst: float


@dataclass(frozen=True, slots=True)
class Offender:
    """A device that sent bad or surplus traffic recently."""

    device_id: str
    dropped: dict[str, int]  # by reason: "over_budget.heartbeat", "malformed", ...
    total: int


class TrafficBudgets:
    """Token buckets per device and channel, and the counts of what was refused."""

    def __init__(
        self,
        budgets: dict[Channel, Budget],
        *,
        quarantine_after: int,
        quarantine_window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`quarantine_after` over-budget drops within `quarantine_window_s` make a device a
        quarantine candidate (0: never)."""
        self._budgets = budgets
        self._quarantine_after = quarantine_after
        self._window_s = quarantine_window_s
        self._clock = clock
        self._buckets: dict[tuple[str, Channel], list[float]] = {}
        self._recent: dict[str, deque[float]] = {}  # over-budget drop times, per device
        self._counts: Counter[tuple[str, str]] = Counter()  # this period
        self._previous: Counter[tuple[str, str]] = Counter()  # the period before
        self._period_started = clock()
        self._flagged: set[str] = set()
        # Set when a device is flagged: quarantine is acted on at once, not at the next tick,
        # because every second a flood goes on queues more of it ahead of everyone's traffic.
        self.flagged_event = asyncio.Event()

    def allow(self, device_id: str, channel: Channel) -> bool:
        """Take one message from the device's budget for `channel`; False if it is spent."""
        budget = self._budgets.get(channel)
        if budget is None:
            return True
        now = self._clock()
        key = (device_id, channel)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [budget.burst, now]
        tokens = min(budget.burst, bucket[0] + (now - bucket[1]) * budget.rate_per_s)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        self.count(device_id, f"over_budget.{channel.value}")
        self._note_surplus(device_id, now)
        return False

    def count(self, device_id: str, reason: str) -> None:
        """Count one refused message of `device_id` (over budget, malformed, ...)."""
        self._counts[(device_id, reason)] += 1

    def _note_surplus(self, device_id: str, now: float) -> None:
        if not self._quarantine_after:
            return
        times = self._recent.setdefault(device_id, deque())
        times.append(now)
        while times and now - times[0] > self._window_s:
            times.popleft()
        if len(times) >= self._quarantine_after:
            self._flagged.add(device_id)
            self.flagged_event.set()
            times.clear()

    def take_flagged(self) -> set[str]:
        """Devices that went far over budget since the last call (quarantine candidates)."""
        flagged, self._flagged = self._flagged, set()
        return flagged

    def offenders(self, limit: int = 20) -> list[Offender]:
        """The devices with the most refused messages over the last two periods."""
        by_device: dict[str, Counter[str]] = {}
        for (device_id, reason), number in (self._previous + self._counts).items():
            by_device.setdefault(device_id, Counter())[reason] += number
        ranked = sorted(by_device.items(), key=lambda item: -item[1].total())
        return [
            Offender(device_id, dict(reasons), reasons.total())
            for device_id, reasons in ranked[:limit]
        ]

    def rotate(self, period_s: float = 60.0) -> None:
        """Start a new counting period if `period_s` passed, and forget idle buckets (called
        periodically, so memory follows the devices that are active)."""
        now = self._clock()
        if now - self._period_started < period_s:
            return
        self._previous, self._counts = self._counts, Counter()
        self._period_started = now
        idle = [key for key, (_, at) in self._buckets.items() if now - at > _IDLE_FORGET_S]
        for key in idle:
            del self._buckets[key]
        for device_id in [d for d, times in self._recent.items() if not times]:
            del self._recent[device_id]

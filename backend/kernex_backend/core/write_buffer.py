"""A bounded in-memory queue that one task writes to the database in batches.

Device traffic arrives faster than one transaction per message can commit, so the MQTT
handlers only queue (`add`) and a writer task drains the queue in batches (`run`). The buffer
is bounded: beyond `capacity` new items are dropped and counted, so a slow or unreachable
database cannot exhaust the process. A batch whose write fails goes back to the front of the
queue, oldest first, and the writer retries with backoff, so it recovers by itself when the
database returns.
"""

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import sqlalchemy as sa
import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")
Counter = Callable[[str, int], None]


class WriteBuffer(Generic[T]):
    """Items waiting to be written; `name` prefixes its counters and log events."""

    def __init__(
        self, count: Counter, *, name: str, batch_size: int, interval_s: float, capacity: int
    ) -> None:
        self._count = count
        self._name = name
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._capacity = capacity
        self._queue: deque[T] = deque()
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, item: T) -> None:
        """Queue one item, or drop and count it when the buffer is full."""
        if len(self._queue) >= self._capacity:
            self._count(f"{self._name}.dropped_backpressure", 1)
            return
        self._queue.append(item)
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    async def drain(self, write: Callable[[list[T]], Awaitable[None]]) -> None:
        """Write everything queued, a batch at a time; a failed batch is put back."""
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
            try:
                await write(batch)
            except BaseException:
                self._put_back(batch)
                raise

    async def run(self, drain: Callable[[], Awaitable[None]]) -> None:
        """Call `drain` whenever a batch is waiting or the interval elapsed, until cancelled;
        a database failure is retried with backoff."""
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):  # the interval elapsed: write anyway
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            if not self._queue:
                continue
            try:
                await drain()
            except (OSError, sa.exc.SQLAlchemyError) as exc:
                failures += 1
                delay = min(30.0, 0.5 * 2**failures)
                log.warning(f"{self._name}_write_failed", error=str(exc)[:200], retry_s=delay)
                await asyncio.sleep(delay)
            else:
                failures = 0

    def _put_back(self, batch: list[T]) -> None:
        """Return a batch to the front, oldest first, within the buffer's capacity."""
        room = max(0, self._capacity - len(self._queue))
        self._queue.extendleft(reversed(batch[:room]))
        if len(batch) > room:
            self._count(f"{self._name}.dropped_backpressure", len(batch) - room)

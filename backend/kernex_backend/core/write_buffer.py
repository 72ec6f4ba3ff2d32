"""A bounded in-memory queue that one task writes to the database in batches.

Device traffic arrives faster than one transaction per message can commit, so the MQTT
handlers only queue (`add`) and a writer task drains the queue in batches (`run`). The buffer
is bounded: beyond `capacity` new items are dropped and counted, so a slow or unreachable
database cannot exhaust the process.

A failed write is one of two kinds, and they are treated differently:

- transient (the connection dropped, a timeout, a serialization failure or deadlock, the
  server shutting down): the unwritten items go back to the front of the queue, oldest first,
  and the writer retries with backoff; after `max_attempts` failures in a row the oldest batch
  is dropped and counted, so nothing is retried for ever;
- deterministic (the data itself is refused: a value out of range, a character the database
  cannot store, or a bug): retrying would fail the same way and block every other device behind
  it. The batch is split in halves until the offending items are found; they are dropped and
  counted (with their device IDs in the log) and the rest is written.

`problem` says when the writer is stuck (failing for a while, or its oldest item waiting too
long), for the readiness check.
"""

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog

from kernex_backend.core.db import is_transient
from kernex_backend.core.log_limiter import LogLimiter

log = structlog.get_logger(__name__)

T = TypeVar("T")
Counter = Callable[[str, int], None]


class WriteBuffer(Generic[T]):
    """Items waiting to be written; `name` prefixes its counters and log events."""

    def __init__(
        self,
        count: Counter,
        *,
        name: str,
        batch_size: int,
        interval_s: float,
        capacity: int,
        describe: Callable[[T], str] = lambda item: "",
        max_attempts: int = 12,
        stuck_after_s: float = 60.0,
        backoff_s: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        """`describe` names an item in the log of a dropped one (its device ID)."""
        self._count = count
        self._name = name
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._capacity = capacity
        self._describe = describe
        self._max_attempts = max_attempts
        self._stuck_after_s = stuck_after_s
        self._backoff_s = backoff_s
        self._queue: deque[tuple[float, T]] = deque()
        self._wake = asyncio.Event()
        self._failures = 0
        self._failing_since: float | None = None
        self._logs = LogLimiter(interval_s=60.0)

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, item: T) -> None:
        """Queue one item, or drop and count it when the buffer is full."""
        if len(self._queue) >= self._capacity:
            self._count(f"{self._name}.dropped_backpressure", 1)
            return
        self._queue.append((time.monotonic(), item))
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    def problem(self) -> str | None:
        """Why this writer is not healthy, or None."""
        now = time.monotonic()
        if self._failing_since is not None and now - self._failing_since > self._stuck_after_s:
            return f"{self._name} writes failing for {now - self._failing_since:.0f} s"
        if self._queue and now - self._queue[0][0] > self._stuck_after_s:
            return f"{self._name} oldest item waiting {now - self._queue[0][0]:.0f} s"
        return None

    async def drain(self, write: Callable[[list[T]], Awaitable[None]]) -> None:
        """Write everything queued, a batch at a time. A transient failure puts the unwritten
        items back and raises; data the database refuses is isolated and dropped."""
        while self._queue:
            size = min(self._batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(size)]
            await self._write_isolating(write, batch)
            self._failures, self._failing_since = 0, None

    async def _write_isolating(
        self, write: Callable[[list[T]], Awaitable[None]], batch: list[tuple[float, T]]
    ) -> None:
        pieces = [batch]
        while pieces:
            piece = pieces.pop()
            try:
                await write([item for _, item in piece])
            except asyncio.CancelledError:
                self._put_back([entry for p in [piece, *reversed(pieces)] for entry in p])
                raise
            except Exception as exc:
                if is_transient(exc):
                    # Unwritten: this piece and every piece after it (the stack's bottom).
                    self._put_back([entry for p in [piece, *reversed(pieces)] for entry in p])
                    raise
                if len(piece) == 1:
                    self._drop_poison(piece[0][1], exc)
                    continue
                middle = len(piece) // 2
                pieces.extend([piece[middle:], piece[:middle]])  # first half written first

    def _drop_poison(self, item: T, exc: Exception) -> None:
        self._count(f"{self._name}.dropped_refused", 1)
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if self._logs.allow(("refused", type(exc).__name__)):
            log.warning(
                f"{self._name}_item_refused",
                device_id=self._describe(item),
                error=error,
                suppressed=self._logs.suppressed(("refused", type(exc).__name__)),
            )

    async def run(self, drain: Callable[[], Awaitable[None]]) -> None:
        """Call `drain` whenever a batch is waiting or the interval elapsed, until cancelled;
        a transient failure is retried with backoff, at most `max_attempts` times in a row."""
        while True:
            with contextlib.suppress(TimeoutError):  # the interval elapsed: write anyway
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            if not self._queue:
                continue
            try:
                await drain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._after_failure(exc)

    async def _after_failure(self, exc: Exception) -> None:
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        if self._failures >= self._max_attempts:
            dropped = [self._queue.popleft() for _ in range(min(self._batch_size, len(self)))]
            self._count(f"{self._name}.dropped_retries", len(dropped))
            log.error(
                f"{self._name}_batch_dropped",
                items=len(dropped),
                attempts=self._failures,
                error=str(exc)[:200],
            )
            self._failures = 0
        base, ceiling = self._backoff_s
        delay = min(ceiling, base * 2**self._failures)
        kind = "transient" if is_transient(exc) else "unexpected"
        if self._logs.allow(("failed", kind)):
            log.warning(
                f"{self._name}_write_failed",
                kind=kind,
                error=f"{type(exc).__name__}: {str(exc)[:200]}",
                retry_s=delay,
            )
        await asyncio.sleep(delay)

    def _put_back(self, entries: list[tuple[float, T]]) -> None:
        """Return entries to the front, oldest first, within the buffer's capacity."""
        room = max(0, self._capacity - len(self._queue))
        self._queue.extendleft(reversed(entries[:room]))
        if len(entries) > room:
            self._count(f"{self._name}.dropped_backpressure", len(entries) - room)

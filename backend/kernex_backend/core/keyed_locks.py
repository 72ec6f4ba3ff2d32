"""One asyncio lock per key (a device, say), kept only while someone holds or waits for it."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable


class KeyedLocks:
    """Mutual exclusion per key for coroutines of one event loop.

    A lock lives in the table only while a holder or a waiter counts it, so a fleet's worth of
    keys does not stay behind, and a lock is never dropped while a coroutine waits on it (a
    released lock reads as unlocked before its next waiter runs, so "drop it if unlocked" would
    let a newcomer create a second lock for the same key)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def holding(self, keys: Iterable[str]) -> AsyncIterator[None]:
        """Hold the locks of all `keys`, taken in sorted order so that two callers whose keys
        overlap cannot deadlock."""
        ordered = sorted(set(keys))
        for key in ordered:
            lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
            self._locks[key] = (lock, users + 1)
        taken: list[asyncio.Lock] = []
        try:
            for key in ordered:
                lock = self._locks[key][0]
                await lock.acquire()
                taken.append(lock)
            yield
        finally:
            for lock in taken:
                lock.release()
            for key in ordered:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

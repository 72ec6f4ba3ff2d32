"""Running one coroutine per item, a bounded number at a time."""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def map_bounded(
    fn: Callable[[T], Awaitable[R]], items: Sequence[T], limit: int
) -> list[R | Exception]:
    """`fn` over `items` with at most `limit` running at once; each item's result, or the
    exception it raised, in the items' order.

    `limit` workers take the items in turn, rather than a task per item behind a semaphore: a
    notice only waits for the broker's acknowledgement, so creating a task for each of a batch's
    thousand and parking it on the semaphore was most of the CPU its wait cost."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    todo = iter(enumerate(items))
    done: dict[int, R | Exception] = {}

    async def worker() -> None:
        for index, item in todo:  # one iterator shared by the workers: each item taken once
            try:
                done[index] = await fn(item)
            except Exception as exc:  # the caller decides; the other items go on
                done[index] = exc

    await asyncio.gather(*(worker() for _ in range(min(limit, len(items)))))
    return [done[index] for index in range(len(items))]

"""map_bounded: every item once, in order, never more than the limit at once."""

import asyncio

import pytest

from kernex_backend.core.concurrency import map_bounded


async def test_results_come_in_the_items_order_with_at_most_limit_running() -> None:
    running = 0
    peak = 0

    async def square(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (n % 3))  # finish out of order
        running -= 1
        return n * n

    assert await map_bounded(square, list(range(50)), 7) == [n * n for n in range(50)]
    assert peak == 7


async def test_an_items_exception_is_its_result_and_the_rest_go_on() -> None:
    async def check(n: int) -> int:
        await asyncio.sleep(0)
        if n == 2:
            raise ValueError("two")
        return n

    results = await map_bounded(check, [1, 2, 3, 4], 2)
    assert results[0] == 1 and results[2:] == [3, 4]
    assert isinstance(results[1], ValueError)


async def test_no_items_and_a_bad_limit() -> None:
    async def never(n: int) -> int:
        raise AssertionError(n)

    assert await map_bounded(never, [], 5) == []
    with pytest.raises(ValueError, match="limit"):
        await map_bounded(never, [1], 0)


async def test_cancelling_the_caller_cancels_the_items_in_flight() -> None:
    started = asyncio.Event()
    cancelled = 0

    async def wait_forever(_: int) -> None:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled += 1
            raise

    task = asyncio.create_task(map_bounded(wait_forever, [1, 2, 3], 2))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == 2

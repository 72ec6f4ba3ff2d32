"""KeyedLocks: one holder per key at a time, no deadlock between overlapping key sets, and no
lock left in the table once nobody holds or waits for it."""

import asyncio

from kernex_backend.core.keyed_locks import KeyedLocks


async def test_one_holder_per_key_at_a_time() -> None:
    locks = KeyedLocks()
    inside: dict[str, int] = {}
    peak: dict[str, int] = {}

    async def use(keys: list[str]) -> None:
        async with locks.holding(keys):
            for key in keys:
                inside[key] = inside.get(key, 0) + 1
                peak[key] = max(peak.get(key, 0), inside[key])
            await asyncio.sleep(0.001)
            for key in keys:
                inside[key] -= 1

    await asyncio.gather(*(use([f"d{i % 3}", f"d{(i + 1) % 3}"]) for i in range(30)))
    assert peak == {"d0": 1, "d1": 1, "d2": 1}
    assert len(locks) == 0


async def test_overlapping_key_sets_given_in_opposite_orders_do_not_deadlock() -> None:
    locks = KeyedLocks()
    entered = asyncio.Event()
    order: list[str] = []

    async def first() -> None:
        async with locks.holding(["a", "b"]):
            entered.set()
            await asyncio.sleep(0.01)
            order.append("first")

    async def second() -> None:
        await entered.wait()
        async with locks.holding(["b", "a"]):
            order.append("second")

    await asyncio.wait_for(asyncio.gather(first(), second()), 2)
    assert order == ["first", "second"]


async def test_a_lock_someone_waits_for_is_not_replaced_when_released() -> None:
    """Release wakes the waiter but leaves the lock unlocked until it runs: a newcomer in that
    gap must queue on the same lock, not create a second one and enter beside the waiter."""
    locks = KeyedLocks()
    holders = 0
    peak = 0

    async def hold(delay: float) -> None:
        nonlocal holders, peak
        await asyncio.sleep(delay)
        async with locks.holding(["dev"]):
            holders += 1
            peak = max(peak, holders)
            await asyncio.sleep(0.005)
            holders -= 1

    holder = asyncio.create_task(hold(0))
    await asyncio.sleep(0)  # the holder is in
    waiter = asyncio.create_task(hold(0))
    await asyncio.sleep(0)  # the waiter is queued on the lock
    await asyncio.sleep(0.006)  # the holder releases; in the same pass a newcomer arrives
    newcomer = asyncio.create_task(hold(0))
    await asyncio.gather(holder, waiter, newcomer)
    assert peak == 1
    assert len(locks) == 0


async def test_a_holder_that_fails_releases_its_locks() -> None:
    locks = KeyedLocks()
    try:
        async with locks.holding(["x", "y"]):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert len(locks) == 0
    async with locks.holding(["y"]):  # free again
        pass

"""Per-device budgets (pure logic, with a clock the test moves) and the task supervisor."""

import asyncio

from kernex_backend.core.background import Supervisor
from kernex_backend.mqtt.budgets import Budget, TrafficBudgets
from kernex_protocol.topics import Channel


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, quarantine_after: int = 50) -> TrafficBudgets:
    return TrafficBudgets(
        {Channel.HEARTBEAT: Budget(1.0, 5), Channel.PROGRESS: Budget(10.0, 20)},
        quarantine_after=quarantine_after,
        quarantine_window_s=10,
        clock=clock,
    )


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    budgets = make(clock)
    assert [budgets.allow("d", Channel.HEARTBEAT) for _ in range(7)] == [True] * 5 + [False] * 2
    clock.now += 2.0  # two tokens back
    assert [budgets.allow("d", Channel.HEARTBEAT) for _ in range(3)] == [True, True, False]


def test_devices_and_channels_have_their_own_budgets() -> None:
    clock = Clock()
    budgets = make(clock)
    for _ in range(100):
        budgets.allow("flooder", Channel.HEARTBEAT)
    assert budgets.allow("victim", Channel.HEARTBEAT)
    assert budgets.allow("flooder", Channel.PROGRESS)
    assert budgets.allow("flooder", Channel.PRESENCE)  # no budget configured: not limited


def test_far_over_budget_flags_for_quarantine_once() -> None:
    clock = Clock()
    budgets = make(clock, quarantine_after=50)
    for _ in range(5 + 49):
        budgets.allow("f", Channel.HEARTBEAT)
    assert budgets.take_flagged() == set()
    budgets.allow("f", Channel.HEARTBEAT)
    assert budgets.take_flagged() == {"f"}
    assert budgets.take_flagged() == set()


def test_slow_surplus_spread_over_time_is_not_flagged() -> None:
    clock = Clock()
    budgets = make(clock, quarantine_after=50)
    for _ in range(200):
        clock.now += 0.9  # a little faster than 1/s: some drops, never 50 within 10 s
        budgets.allow("f", Channel.HEARTBEAT)
    assert budgets.take_flagged() == set()


def test_offenders_rank_by_refused_messages_and_periods_roll() -> None:
    clock = Clock()
    budgets = make(clock, quarantine_after=0)
    for _ in range(30):
        budgets.allow("a", Channel.HEARTBEAT)
    for _ in range(10):
        budgets.allow("b", Channel.HEARTBEAT)
    budgets.count("b", "malformed")
    top = budgets.offenders()
    assert [(o.device_id, o.total) for o in top] == [("a", 25), ("b", 6)]
    assert top[1].dropped == {"over_budget.heartbeat": 5, "malformed": 1}
    clock.now += 61
    budgets.rotate()
    assert budgets.offenders()[0].total == 25  # the previous period still counts
    clock.now += 61
    budgets.rotate()
    assert budgets.offenders() == []


async def test_the_supervisor_restarts_a_task_that_dies() -> None:
    runs = 0
    healthy = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError("boom")
        healthy.set()
        await asyncio.sleep(3600)

    supervisor = Supervisor(backoff_s=(0.01, 0.05))
    supervisor.start("flaky", flaky)
    await asyncio.sleep(0)
    await asyncio.sleep(0.005)
    assert any("flaky down" in p for p in supervisor.problems())
    await asyncio.wait_for(healthy.wait(), 5)
    assert supervisor.problems() == []
    assert supervisor.restarts["flaky"] == 2
    await supervisor.stop()
    assert all(task.done() for task in supervisor.tasks)

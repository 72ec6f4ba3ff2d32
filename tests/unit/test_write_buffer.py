"""The write buffer's failure handling: poison items isolated, transient failures retried
without writing anything twice, and nothing retried for ever."""

import asyncio
from collections import Counter

import pytest
import sqlalchemy as sa

from kernex_backend.core.db import is_transient
from kernex_backend.core.write_buffer import WriteBuffer


class PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def data_error(code: str = "22003") -> sa.exc.DBAPIError:
    return sa.exc.DataError("INSERT ...", {}, PgError(code))


def test_classification() -> None:
    assert is_transient(OSError("connection reset"))
    assert is_transient(TimeoutError())
    assert is_transient(sa.exc.OperationalError("x", {}, PgError("08006")))
    assert is_transient(sa.exc.DBAPIError("x", {}, PgError("40001")))  # serialization
    assert is_transient(sa.exc.DBAPIError("x", {}, PgError("40P01")))  # deadlock
    assert is_transient(sa.exc.DBAPIError("x", {}, PgError("57P01")))  # admin shutdown
    assert is_transient(sa.exc.OperationalError("x", {}, PgError("53100")))  # disk full
    assert not is_transient(data_error("22003"))  # numeric out of range
    assert not is_transient(data_error("22P05"))  # untranslatable character (NUL)
    assert not is_transient(sa.exc.IntegrityError("x", {}, PgError("23505")))
    assert not is_transient(ValueError("a bug"))
    assert not is_transient(RecursionError())


class Writer:
    """Writes lists of ints; refuses poison items as a database would, fails on cue."""

    def __init__(self, poison: set[int], transient_calls: set[int] | None = None) -> None:
        self.poison = poison
        self.transient_calls = transient_calls or set()
        self.calls = 0
        self.written: list[int] = []

    async def __call__(self, batch: list[int]) -> None:
        self.calls += 1
        if self.calls in self.transient_calls:
            raise OSError("connection lost")
        if self.poison & set(batch):
            raise data_error()
        self.written.extend(batch)


def make(counts: Counter[str], **kwargs: object) -> WriteBuffer[int]:
    settings = {
        "name": "hb",
        "batch_size": 16,
        "interval_s": 0.01,
        "capacity": 1000,
        "backoff_s": (0.01, 0.05),
    }
    settings.update(kwargs)
    return WriteBuffer(lambda name, n: counts.update({name: n}), **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("poison", [{0}, {7}, {15}, {3, 4}, {1, 9, 14}, set(range(16))])
async def test_poison_items_are_dropped_and_the_rest_written(poison: set[int]) -> None:
    counts: Counter[str] = Counter()
    buffer = make(counts)
    for i in range(16):
        buffer.add(i)
    writer = Writer(poison)
    await buffer.drain(writer)
    assert sorted(writer.written) == [i for i in range(16) if i not in poison]
    assert counts["hb.dropped_refused"] == len(poison)
    assert len(buffer) == 0


async def test_a_transient_failure_mid_isolation_writes_nothing_twice() -> None:
    counts: Counter[str] = Counter()
    buffer = make(counts)
    for i in range(16):
        buffer.add(i)
    writer = Writer({5}, transient_calls={4})
    with pytest.raises(OSError):
        await buffer.drain(writer)
    await buffer.drain(writer)  # the retry
    assert sorted(writer.written) == [i for i in range(16) if i != 5]
    assert len(writer.written) == len(set(writer.written))


async def test_transient_failures_are_retried_in_order() -> None:
    counts: Counter[str] = Counter()
    buffer = make(counts, batch_size=4)
    for i in range(10):
        buffer.add(i)
    writer = Writer(set(), transient_calls={1, 2})
    task = asyncio.create_task(buffer.run(lambda: buffer.drain(writer)))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if len(writer.written) == 10:
            break
    task.cancel()
    assert writer.written == list(range(10))
    assert counts["hb.dropped_refused"] == 0


async def test_nothing_is_retried_for_ever() -> None:
    counts: Counter[str] = Counter()
    buffer = make(counts, batch_size=4, max_attempts=2)
    for i in range(6):
        buffer.add(i)
    writer = Writer(set(), transient_calls=set(range(1, 4)))  # three failures, then fine
    task = asyncio.create_task(buffer.run(lambda: buffer.drain(writer)))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if not len(buffer):
            break
    task.cancel()
    assert counts["hb.dropped_retries"] >= 4  # the batch that kept failing was given up
    assert set(writer.written) | set(range(4)) >= set(range(6))


async def test_a_stuck_writer_says_so() -> None:
    counts: Counter[str] = Counter()
    buffer = make(counts, stuck_after_s=0.1)
    buffer.add(1)
    assert buffer.problem() is None
    await asyncio.sleep(0.15)
    assert "waiting" in (buffer.problem() or "")

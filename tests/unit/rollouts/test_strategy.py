"""The rollout policy's validation and its pure calculations."""

import datetime as dt
import random
from typing import Any

import pytest
from pydantic import ValidationError

from kernex_backend.deployments.strategy import (
    AbortRule,
    FailureType,
    RateLimit,
    RetryPolicy,
    RolloutStrategy,
    wave_ends,
    wave_of,
)


@pytest.mark.parametrize(
    ("waves", "total", "ends"),
    [
        (["100%"], 10, [10]),
        ([1, "5%", "25%", "100%"], 1000, [1, 50, 250, 1000]),
        ([1, "10%", "100%"], 5, [1, 1, 5]),  # a share rounds up, never shrinks below before
        (["1%", "10%", "100%"], 10_000, [100, 1000, 10_000]),
        ([5, "100%"], 3, [3, 3]),
        (["50%", "100%"], 0, [0, 0]),
    ],
)
def test_wave_ends(waves: list[int | str], total: int, ends: list[int]) -> None:
    assert wave_ends(waves, total) == ends


def test_wave_of_follows_the_draw_order() -> None:
    ends = [1, 3, 6]
    assert [wave_of(i, ends) for i in range(6)] == [0, 1, 1, 2, 2, 2]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"waves": ["10%", "50%"]}, "waves"),  # does not reach everyone
        ({"waves": ["50%", "10%", "100%"]}, "waves"),  # shrinks
        ({"waves": [10, 5, "100%"]}, "waves"),
        ({"waves": ["101%"]}, "waves"),
        ({"waves": [0, "100%"]}, "waves"),
        ({"success_threshold_percent": 101}, "success_threshold_percent"),
        ({"success_threshold_percent": -1}, "success_threshold_percent"),
        ({"schedule": {"windows": [{"cron": "0 2 * * *", "duration_s": 30}]}}, "duration_s"),
        ({"schedule": {"windows": [{"cron": "0 0 31 2 *", "duration_s": 600}]}}, "cron"),
        (
            {
                "schedule": {
                    "windows": [{"cron": "0 2 * * *", "duration_s": 600, "timezone": "Mars/Base"}]
                }
            },
            "timezone",
        ),
        ({"schedule": {"start_at": "2026-12-24T02:00:00"}}, "start_at"),  # no time zone
        (
            {"schedule": {"start_at": "2026-12-24T02:00:00Z", "end_at": "2026-12-24T01:00:00Z"}},
            "schedule",
        ),
        ({"retry": {"max_retries": 11}}, "max_retries"),
        ({"retry": {"backoff_base_s": 600, "backoff_cap_s": 60}}, "retry"),
        ({"rate": {"per_minute": 0}}, "per_minute"),
        ({"rate": {"per_minute": 10, "increase_factor": 2}}, "rate"),
        ({"jitter_s": 600, "timeouts": {"not_started_s": 300}}, "not_started"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_policies_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        RolloutStrategy.model_validate(change)
    assert field in str(raised.value)


def test_rate_grows_by_its_factor_up_to_its_cap() -> None:
    rate = RateLimit(
        per_minute=10, increase_factor=2, increase_every_successes=5, max_per_minute=50
    )
    assert [rate.per_minute_now(s) for s in (0, 4, 5, 10, 15, 1000)] == [10, 10, 20, 40, 50, 50]
    assert RateLimit(per_minute=7).per_minute_now(10_000) == 7


def test_abort_rules() -> None:
    rule = AbortRule(failure_types=[FailureType.FAILED], threshold_percent=20, min_finished=10)
    assert not rule.tripped(9, {FailureType.FAILED: 9})  # too few finished yet
    assert rule.tripped(10, {FailureType.FAILED: 2})
    assert not rule.tripped(10, {FailureType.FAILED: 1, FailureType.TIMED_OUT: 5})
    every = AbortRule(failure_types=[FailureType.ALL], threshold_percent=50)
    assert every.tripped(4, {FailureType.REJECTED: 1, FailureType.TIMED_OUT: 1})
    assert not every.tripped(4, {FailureType.ROLLED_BACK: 1})


def test_retry_backoff_doubles_with_jitter_and_stops_at_its_cap() -> None:
    policy = RetryPolicy(max_retries=5, backoff_base_s=10, backoff_cap_s=100)
    rng = random.Random(7)
    for attempt, base in [(1, 10), (2, 20), (3, 40), (4, 80)]:
        delay = policy.delay(attempt, rng)
        assert dt.timedelta(seconds=base * 0.8) <= delay <= dt.timedelta(seconds=base * 1.2)
    assert policy.delay(9, rng) <= dt.timedelta(seconds=100)
    assert policy.applies(FailureType.FAILED, None)
    assert not policy.applies(FailureType.REJECTED, None)
    by_code = RetryPolicy(max_retries=1, on=["download_failed"])
    assert by_code.applies(FailureType.FAILED, "download_failed")
    assert not by_code.applies(FailureType.FAILED, "disk_full")

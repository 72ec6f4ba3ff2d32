"""Maintenance-window cron expressions: parsing, matching, daylight saving, never-firing."""

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from kernex_backend.deployments.cron import Cron, CronInvalid, Window

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, zone: ZoneInfo = BERLIN) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=zone)


@pytest.mark.parametrize(
    ("expression", "when", "fires"),
    [
        ("* * * * *", "2026-12-02 13:37", True),
        ("0 2 * * *", "2026-12-02 02:00", True),
        ("0 2 * * *", "2026-12-02 02:01", False),
        ("*/15 * * * *", "2026-12-02 10:45", True),
        ("*/15 * * * *", "2026-12-02 10:46", False),
        ("0 22-23,0-5 * * *", "2026-12-02 23:00", True),
        ("0 22-23,0-5 * * *", "2026-12-02 12:00", False),
        ("30 1 * * 6,0", "2026-12-05 01:30", True),  # a Saturday
        ("30 1 * * 7", "2026-12-06 01:30", True),  # 7 is Sunday too
        ("30 1 * * 1-5", "2026-12-06 01:30", False),
        # Both day fields restricted: either matches (cron's rule).
        ("0 0 1 * 1", "2026-12-07 00:00", True),  # a Monday, not the 1st
        ("0 0 1 * 1", "2026-12-01 00:00", True),  # the 1st, a Tuesday
        ("0 0 1 * 1", "2026-12-02 00:00", False),
        ("5/20 * * * *", "2026-12-02 10:45", True),
    ],
)
def test_matching(expression: str, when: str, fires: bool) -> None:
    assert Cron.parse(expression).matches(at(when)) is fires


@pytest.mark.parametrize(
    "expression",
    [
        "* * * *",  # four fields
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * 8",
        "5-1 * * * *",
        "*/0 * * * *",
        "MON * * * *",
        "@daily",
        "0 0 31 2 *",  # never fires
        "0 0 30,31 2 *",
    ],
)
def test_refused(expression: str) -> None:
    with pytest.raises(CronInvalid):
        Cron.parse(expression)


def test_leap_day_is_a_real_day() -> None:
    assert Cron.parse("0 0 29 2 *").matches(at("2028-02-29 00:00"))


def test_window_open_for_its_duration_in_its_zone() -> None:
    window = Window(Cron.parse("0 2 * * *"), dt.timedelta(hours=1), BERLIN)
    utc = dt.UTC
    # 02:00-03:00 Berlin is 01:00-02:00 UTC in winter.
    assert not window.is_open(dt.datetime(2026, 12, 2, 0, 59, tzinfo=utc))
    assert window.is_open(dt.datetime(2026, 12, 2, 1, 0, tzinfo=utc))
    assert window.is_open(dt.datetime(2026, 12, 2, 1, 59, 59, tzinfo=utc))
    assert not window.is_open(dt.datetime(2026, 12, 2, 2, 0, tzinfo=utc))
    # ... and 00:00-01:00 UTC in summer: the window follows local time.
    assert window.is_open(dt.datetime(2026, 7, 2, 0, 30, tzinfo=utc))
    assert window.next_open(
        dt.datetime(2026, 12, 2, 2, 0, tzinfo=utc), horizon=dt.timedelta(days=2)
    ) == dt.datetime(2026, 12, 3, 1, 0, tzinfo=utc)


def test_a_window_spanning_midnight() -> None:
    window = Window(Cron.parse("30 23 * * *"), dt.timedelta(hours=2), ZoneInfo("UTC"))
    assert window.is_open(dt.datetime(2026, 12, 3, 1, 0, tzinfo=dt.UTC))
    assert not window.is_open(dt.datetime(2026, 12, 3, 1, 30, tzinfo=dt.UTC))

"""Cron expressions for maintenance windows: five fields, matched minute by minute.

`minute hour day-of-month month day-of-week`, each `*`, a number, a range `a-b`, a step `*/n`
or `a-b/n`, or a comma list of those; day-of-week 0-7 with 0 and 7 both Sunday. As in every
cron, when both day fields are restricted a day matches if either does. A window opens at each
time the expression fires and stays open for its duration, in the window's own time zone (so
"02:00 local" follows daylight saving). Names (`MON`, `JAN`) and `@daily` shortcuts are not
accepted: one unambiguous form is easier to review in a change request.
"""

import calendar
import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12))
_DOW = ("day of week", 0, 7)


class CronInvalid(ValueError):
    """The expression cannot be parsed, or never fires."""


def _numbers(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronInvalid(f"{name}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if body == "*":
            start, end = low, high
        elif "-" in body:
            first, _, last = body.partition("-")
            if not (first.isdigit() and last.isdigit()):
                raise CronInvalid(f"{name}: {part!r} is not a range of numbers")
            start, end = int(first), int(last)
        elif body.isdigit():
            start = end = int(body)
            if step_text:
                end = high  # "5/15" means from 5 on, every 15
        else:
            raise CronInvalid(f"{name}: {part!r} is not a number, range or *")
        if not (low <= start <= high and low <= end <= high) or start > end:
            raise CronInvalid(f"{name}: {part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed five-field cron expression."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Monday ... 6 = Sunday (Python's numbering)
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, expression: str) -> "Cron":
        """Parse; raises CronInvalid naming the field, also for an expression that never fires
        (such as the 31st of February)."""
        fields = expression.split()
        if len(fields) != 5:
            raise CronInvalid("a cron expression has five fields: minute hour day month weekday")
        minutes, hours, days, months = (
            _numbers(text, *spec) for text, spec in zip(fields[:4], _FIELDS, strict=True)
        )
        cron_weekdays = _numbers(fields[4], *_DOW)
        # cron: 0 and 7 are Sunday, 1 Monday; Python: 0 Monday ... 6 Sunday.
        weekdays = frozenset((d - 1) % 7 for d in cron_weekdays)
        cron = cls(minutes, hours, days, months, weekdays, fields[2] != "*", fields[4] != "*")
        if not cron._some_day_exists():
            raise CronInvalid(f"{expression!r} never fires: no month has those days")
        return cron

    def _some_day_exists(self) -> bool:
        if self.weekdays_restricted:
            return True  # every month has every weekday
        return any(
            day <= calendar.monthrange(2024, month)[1]  # a leap year: 29 February exists
            for month in self.months
            for day in self.days
        )

    def _day_matches(self, when: dt.datetime) -> bool:
        in_days = when.day in self.days
        in_weekdays = when.weekday() in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays

    def matches(self, when: dt.datetime) -> bool:
        """Whether the expression fires at `when`'s minute (in `when`'s own time zone)."""
        return (
            when.minute in self.minutes
            and when.hour in self.hours
            and when.month in self.months
            and self._day_matches(when)
        )


@dataclass(frozen=True, slots=True)
class Window:
    """Open for `duration` after every time `cron` fires, in `zone`."""

    cron: Cron
    duration: dt.timedelta
    zone: ZoneInfo

    def is_open(self, now: dt.datetime) -> bool:
        """Whether a window that opened within the last `duration` is still open at `now`."""
        # Minutes are stepped in UTC and each is read on the local clock, so a daylight-saving
        # change neither skips nor repeats a window. At most a week of minutes (10,080 checks).
        base = now.astimezone(dt.UTC).replace(second=0, microsecond=0)
        minutes = int(self.duration.total_seconds() // 60)
        return any(
            self.cron.matches((base - dt.timedelta(minutes=back)).astimezone(self.zone))
            for back in range(minutes)
        )

    def next_open(self, now: dt.datetime, *, horizon: dt.timedelta) -> dt.datetime | None:
        """The next time the window opens after `now`, within `horizon`, or None."""
        base = now.astimezone(dt.UTC).replace(second=0, microsecond=0)
        for ahead in range(1, int(horizon.total_seconds() // 60) + 1):
            when = base + dt.timedelta(minutes=ahead)
            if self.cron.matches(when.astimezone(self.zone)):
                return when
        return None

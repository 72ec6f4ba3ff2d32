"""The rollout policy an operator writes: waves, rate, jitter, abort rules, retries, timeouts and
when devices may be notified. Validated up front (a mistake is a 422 naming the field, before
any device is touched) and stored with the deployment; the controller (rollout.py) reads it
back with `RolloutStrategy.model_validate`. The small calculations on it are pure functions
here, so they are tested without a database.
"""

import datetime as dt
import math
import random
from enum import StrEnum
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kernex_backend.deployments.cron import Cron, CronInvalid, Window

MAX_WAVES = 20
MAX_WINDOWS = 20
MAX_ABORT_RULES = 10
WEEK_S = 7 * 24 * 3600


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A cumulative wave size: a device count, or a share of the selection such as "25%".
WaveSize = (
    Annotated[int, Field(ge=1, le=1_000_000)]
    | Annotated[str, Field(pattern=r"^(100|[0-9]{1,2}(\.[0-9]{1,2})?)%$")]
)


def _all_at_once() -> list[int | str]:
    return ["100%"]


def _percent(size: str) -> float:
    return float(size.removesuffix("%"))


class RateLimit(_Strict):
    """At most `per_minute` new notices a minute, multiplied by `increase_factor` after every
    `increase_every_successes` devices that succeeded (an exponential rollout), up to
    `max_per_minute`."""

    per_minute: int = Field(ge=1, le=10_000)
    increase_factor: float = Field(default=1.0, ge=1.0, le=5.0)
    increase_every_successes: int | None = Field(default=None, ge=1, le=1_000_000)
    max_per_minute: int = Field(default=10_000, ge=1, le=10_000)

    @model_validator(mode="after")
    def _growth_is_complete(self) -> Self:
        if self.increase_factor > 1.0 and self.increase_every_successes is None:
            raise ValueError("increase_factor needs increase_every_successes")
        if self.max_per_minute < self.per_minute:
            raise ValueError("max_per_minute must be at least per_minute")
        return self

    def per_minute_now(self, succeeded: int) -> int:
        """The rate in force once `succeeded` devices have succeeded."""
        if self.increase_every_successes is None:
            return self.per_minute
        steps = succeeded // self.increase_every_successes
        grown = self.per_minute * self.increase_factor ** min(steps, 64)
        return int(min(self.max_per_minute, grown))


class FailureType(StrEnum):
    """How an execution can end badly, as abort rules and retry policies name it."""

    FAILED = "failed"  # the device tried and failed before changing anything
    REJECTED = "rejected"  # the device refused the notice (signature, type, downgrade, ...)
    ROLLED_BACK = "rolled_back"  # installed, failed its health check, went back
    TIMED_OUT = "timed_out"  # silent too long, or never started
    ALL = "all"


class AbortRule(_Strict):
    """Once at least `min_finished` devices have finished, if the share of them that ended in
    one of `failure_types` reaches `threshold_percent`, pause or abort the deployment."""

    failure_types: list[FailureType] = Field(min_length=1, max_length=5)
    threshold_percent: float = Field(ge=0, le=100)
    min_finished: int = Field(default=1, ge=1, le=1_000_000)
    action: Literal["pause", "abort"] = "abort"

    def tripped(self, finished: int, failures: dict[FailureType, int]) -> bool:
        """Whether the rule fires given `finished` devices and the failures by type."""
        if finished < self.min_finished or finished == 0:
            return False
        types = set(FailureType) - {FailureType.ALL}
        if FailureType.ALL not in self.failure_types:
            types = set(self.failure_types)
        bad = sum(failures.get(t, 0) for t in types)
        return bad * 100 >= self.threshold_percent * finished


class RetryPolicy(_Strict):
    """How often a device is notified again after a failure, and how long it waits first:
    `backoff_base_s` doubled per attempt, capped at `backoff_cap_s`, with ±20 % jitter.
    `on` names failure types or the agent's error codes (e.g. "download_failed")."""

    max_retries: int = Field(default=0, ge=0, le=10)
    backoff_base_s: int = Field(default=60, ge=1, le=86_400)
    backoff_cap_s: int = Field(default=3600, ge=1, le=WEEK_S)
    on: list[Annotated[str, Field(pattern=r"^[a-z_]{1,64}$")]] = Field(
        default_factory=lambda: [FailureType.FAILED.value, FailureType.TIMED_OUT.value],
        max_length=32,
    )

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> Self:
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("backoff_cap_s must be at least backoff_base_s")
        return self

    def applies(self, failure: FailureType, error_code: str | None) -> bool:
        """Whether a failure of this type (with this error code) is retried."""
        return failure.value in self.on or (error_code is not None and error_code in self.on)

    def delay(self, attempt: int, rng: random.Random | None = None) -> dt.timedelta:
        """How long to wait before notifying again after failed attempt number `attempt`."""
        base = min(self.backoff_cap_s, self.backoff_base_s * 2 ** min(attempt - 1, 30))
        spread = (rng or random).uniform(0.8, 1.2)
        return dt.timedelta(seconds=min(self.backoff_cap_s, base * spread))


class Timeouts(_Strict):
    """`in_progress_s`: a device that started may take this long to finish. `not_started_s`: a
    notified device must start within this (after its jitter delay)."""

    in_progress_s: int | None = Field(default=None, ge=60, le=WEEK_S)
    not_started_s: int | None = Field(default=None, ge=60, le=WEEK_S)


class MaintenanceWindow(_Strict):
    """New devices are notified only while a window is open: from each time `cron` fires, for
    `duration_s`, in `timezone` (IANA name)."""

    cron: str = Field(max_length=128)
    duration_s: int = Field(ge=60, le=WEEK_S)
    timezone: str = Field(default="UTC", max_length=64)

    @field_validator("cron")
    @classmethod
    def _cron_parses(cls, value: str) -> str:
        try:
            Cron.parse(value)
        except CronInvalid as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name like Europe/Berlin)"
            ) from None
        return value

    def window(self) -> Window:
        """The parsed window."""
        return Window(
            Cron.parse(self.cron), dt.timedelta(seconds=self.duration_s), ZoneInfo(self.timezone)
        )


class Schedule(_Strict):
    """When devices are notified: not before `start_at`; at `end_at` either stop adding devices
    (those working finish) or cancel; and only inside a maintenance window, if any is given."""

    start_at: dt.datetime | None = None
    end_at: dt.datetime | None = None
    end_behavior: Literal["stop_adding", "cancel"] = "stop_adding"
    windows: list[MaintenanceWindow] = Field(default_factory=list, max_length=MAX_WINDOWS)

    @field_validator("start_at", "end_at")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2026-12-24T02:00:00Z)")
        return value

    @model_validator(mode="after")
    def _ends_after_start(self) -> Self:
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            raise ValueError("end_at must be after start_at")
        return self

    def window_open(self, now: dt.datetime) -> bool:
        """Whether new devices may be notified at `now` as far as windows go."""
        return not self.windows or any(w.window().is_open(now) for w in self.windows)

    def next_window(self, now: dt.datetime) -> dt.datetime | None:
        """When the next window opens (within a week), or None."""
        starts = [w.window().next_open(now, horizon=dt.timedelta(days=7)) for w in self.windows]
        found = [s for s in starts if s is not None]
        return min(found) if found else None


class RolloutStrategy(_Strict):
    """Waves and the pace between them (see docs/rollouts.md)."""

    # Cumulative: [1, "10%", "100%"] is one device, then up to 10 % of the selection, then all.
    waves: list[WaveSize] = Field(default_factory=_all_at_once, min_length=1, max_length=MAX_WAVES)
    # A wave is done once this share of its devices succeeded; then the next may start.
    success_threshold_percent: float = Field(default=100.0, ge=0, le=100)
    soak_s: int = Field(default=0, ge=0, le=WEEK_S)  # wait after a wave succeeded
    approval_required: bool = False  # every wave after the first waits for POST .../approve
    rate: RateLimit | None = None
    jitter_s: int = Field(default=0, ge=0, le=3600)  # random delay before a device starts
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    schedule: Schedule = Field(default_factory=Schedule)

    @field_validator("waves")
    @classmethod
    def _waves_reach_everyone(cls, waves: list[int | str]) -> list[int | str]:
        if waves[-1] != "100%":
            raise ValueError('the last wave must be "100%": every selected device is reached')
        last_percent, last_count = 0.0, 0
        for size in waves:
            if isinstance(size, str):
                if _percent(size) <= 0 or _percent(size) < last_percent:
                    raise ValueError("wave sizes are cumulative and must not shrink")
                last_percent = _percent(size)
            else:
                if size < last_count:
                    raise ValueError("wave sizes are cumulative and must not shrink")
                last_count = size
        return waves

    @model_validator(mode="after")
    def _timeouts_fit_jitter(self) -> Self:
        limit = self.timeouts.not_started_s
        if limit is not None and limit <= self.jitter_s:
            raise ValueError("timeouts.not_started_s must be longer than jitter_s")
        return self


def wave_ends(waves: list[int | str], total: int) -> list[int]:
    """How many devices (cumulative, in draw order) each wave reaches out of `total`: a share
    is rounded up so a wave is never empty of a non-empty selection; never shrinking."""
    ends: list[int] = []
    for size in waves:
        end = math.ceil(total * _percent(size) / 100) if isinstance(size, str) else size
        end = min(total, max(end, ends[-1] if ends else 0))
        ends.append(end)
    if ends:
        ends[-1] = total
    return ends


def wave_of(position: int, ends: list[int]) -> int:
    """The wave of the device drawn at `position` (0-based)."""
    for wave, end in enumerate(ends):
        if position < end:
            return wave
    return len(ends) - 1


def stored(model: BaseModel) -> dict[str, Any]:
    """A policy as stored in its JSONB column (timestamps as ISO text)."""
    return model.model_dump(mode="json")

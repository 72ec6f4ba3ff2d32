"""API shapes for deployments and their executions."""

import uuid
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from kernex_backend.core.text import DeviceId, Label, Slug, TagKey, TagValue
from kernex_backend.deployments.models import DeploymentStatus, ExecutionState
from kernex_backend.deployments.strategy import MAX_ABORT_RULES, AbortRule, RolloutStrategy

MAX_EXPLICIT_DEVICES = 10_000
MAX_SAMPLE = 100  # device IDs listed per exclusion reason


class Selector(BaseModel):
    """Devices chosen by what they are: all of these tags, a device type, or the whole fleet
    (`all: true`); always narrowed to devices of the bundle's type that are not decommissioned."""

    model_config = ConfigDict(extra="forbid")

    tags: dict[TagKey, TagValue] = Field(default_factory=dict, max_length=32)
    device_type: Slug | None = None
    all: bool = False
    # Devices not seen for this long are left out (None: keep them; they may come back).
    exclude_offline_for_s: int | None = Field(default=7 * 24 * 3600, ge=60, le=365 * 24 * 3600)

    @model_validator(mode="after")
    def _says_what(self) -> Self:
        if not (self.tags or self.device_type or self.all):
            raise ValueError("name tags, a device_type, or all: true for the whole fleet")
        return self


class RollbackPlan(BaseModel):
    """What an abort rolls devices back to: a previous bundle, and the release team's signed
    approval (`kernex-release approve-rollback`) from this deployment's version to it. The
    server holds no release key: it only carries the approval to the devices."""

    model_config = ConfigDict(extra="forbid")

    bundle_id: uuid.UUID
    approval: dict[str, Any]


class DeploymentCreate(BaseModel):
    """A signed bundle to explicit devices or to a selector, under a rollout policy."""

    model_config = ConfigDict(extra="forbid")

    name: Label
    bundle_id: uuid.UUID
    device_ids: list[DeviceId] | None = Field(
        default=None, min_length=1, max_length=MAX_EXPLICIT_DEVICES
    )
    selector: Selector | None = None
    # Selector only: devices that match later (registered, re-tagged) join while it runs,
    # until schedule.end_at or max_devices.
    dynamic: bool = False
    max_devices: int | None = Field(default=None, ge=1, le=1_000_000)
    # Devices busy with another deployment: refused (409) unless this replaces it for them.
    supersede: bool = False
    strategy: RolloutStrategy = Field(default_factory=RolloutStrategy)
    abort_criteria: list[AbortRule] = Field(default_factory=list, max_length=MAX_ABORT_RULES)
    rollback: RollbackPlan | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.device_ids is None) == (self.selector is None):
            raise ValueError("give exactly one of device_ids and selector")
        if self.dynamic and self.selector is None:
            raise ValueError("dynamic needs a selector: explicit devices cannot match later")
        if self.dynamic and self.strategy.schedule.end_at is None and self.max_devices is None:
            raise ValueError("a dynamic deployment needs strategy.schedule.end_at or max_devices")
        if self.rollback is not None and not any(r.action == "abort" for r in self.abort_criteria):
            raise ValueError(
                "rollback happens on abort: add an abort_criteria rule with action abort"
            )
        return self


class Exclusion(BaseModel):
    """Devices left out of a deployment for one reason."""

    reason: str
    count: int
    devices: list[str]  # up to 100 of them


class WavePreview(BaseModel):
    """One wave as it would be drawn."""

    wave: int
    size: int  # devices in this wave
    cumulative: int


class DeploymentPreview(BaseModel):
    """What POST /deployments would do with the same body, without doing it."""

    devices: int
    waves: list[WavePreview]
    excluded: list[Exclusion]
    superseded: int  # busy devices the deployment would take over (supersede: true)


class DeploymentPublic(BaseModel):
    """A deployment as listed."""

    id: uuid.UUID
    name: str
    bundle_id: uuid.UUID | None
    target: dict[str, Any]
    strategy: dict[str, Any]
    abort_criteria: dict[str, Any]
    status: DeploymentStatus
    created_by: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    current_wave: int
    waiting_for: str | None
    pause_reason: str | None
    rollback_bundle_id: uuid.UUID | None
    rollback_of: uuid.UUID | None


class WaveProgress(BaseModel):
    """How far one wave is."""

    wave: int
    devices: int
    counts: dict[ExecutionState, int]
    success_percent: float


FAILURE_STATES = (ExecutionState.FAILED, ExecutionState.ROLLED_BACK, ExecutionState.TIMED_OUT)

Outcome = Literal["failed", "partial", "succeeded", "none"]
OUTCOME_DESCRIPTION = (
    "How it went, at a glance: `status` says whether it runs, this whether it worked. `failed` "
    "when no device succeeded and some failed, rolled back or timed out; `partial` when some "
    "did; `succeeded` when none did; `none` when nothing ended yet."
)


def outcome_of(*, succeeded: bool, failed: bool) -> Outcome:
    """A deployment's outcome from whether any device succeeded and whether any failed."""
    if failed and not succeeded:
        return "failed"
    if failed:
        return "partial"
    return "succeeded" if succeeded else "none"


class DeploymentListed(DeploymentPublic):
    """A deployment in a list, with its outcome so that a finished deployment in which devices
    failed never reads as a plain `completed`."""

    outcome: Outcome = Field(description=OUTCOME_DESCRIPTION)


class DeploymentDetail(DeploymentPublic):
    """A deployment with its progress: counts per state and per wave, and a finish estimate."""

    execution_counts: dict[ExecutionState, int]
    waves: list[WaveProgress]
    estimated_finish_at: datetime | None
    rollback_deployment_id: uuid.UUID | None

    @computed_field(description=OUTCOME_DESCRIPTION)  # type: ignore[prop-decorator]
    @property
    def outcome(self) -> Outcome:
        failures = sum(self.execution_counts.get(state, 0) for state in FAILURE_STATES)
        successes = self.execution_counts.get(ExecutionState.SUCCEEDED, 0)
        return outcome_of(succeeded=successes > 0, failed=failures > 0)


class DeploymentsPublic(BaseModel):
    """A page of deployments."""

    data: list[DeploymentListed]
    count: int


class ApproveRequest(BaseModel):
    """Approve the next wave; `override_threshold` starts it even though the current wave did
    not reach its success threshold."""

    model_config = ConfigDict(extra="forbid")

    override_threshold: bool = False


RetryableState = Literal[
    ExecutionState.FAILED, ExecutionState.TIMED_OUT, ExecutionState.ROLLED_BACK
]


def _all_failures() -> list[RetryableState]:
    return [ExecutionState.FAILED, ExecutionState.TIMED_OUT, ExecutionState.ROLLED_BACK]


class RetryRequest(BaseModel):
    """Notify failed devices again: those that ended in these states (all failures by default)."""

    model_config = ConfigDict(extra="forbid")

    # Only failures are retried; the schema says so with an enum of the three.
    states: list[RetryableState] = Field(default_factory=_all_failures, min_length=1, max_length=3)


class ExecutionPublic(BaseModel):
    """One device's part in a deployment."""

    device_id: str
    state: ExecutionState
    attempt: int
    wave: int
    progress: int
    error_code: str | None
    error_detail: str | None
    device_state: str | None
    not_before: datetime | None
    start_delay_s: int
    notified_at: datetime | None
    reported_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ExecutionsPublic(BaseModel):
    """A page of executions."""

    data: list[ExecutionPublic]
    count: int

"""The deployments and deployment_executions tables."""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from kernex_backend.core.columns import created_at_field, enum_field, optional_timestamp_field


class DeploymentStatus(StrEnum):
    """Lifecycle of a deployment as a whole."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELED = "canceled"
    ABORTED = "aborted"  # stopped by its abort criteria

    @property
    def finished(self) -> bool:
        """Whether no device will be asked to do anything more for this deployment."""
        return self in {
            DeploymentStatus.COMPLETED,
            DeploymentStatus.CANCELED,
            DeploymentStatus.ABORTED,
        }


class ExecutionState(StrEnum):
    """Where one device is in one deployment."""

    QUEUED = "queued"  # targeted; waits for its wave, the rate, a window or a retry backoff
    PENDING = "pending"  # admitted by the rollout controller; its notice is being published
    NOTIFIED = "notified"  # notice published
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    HEALTH_CHECK = "health_check"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    CANCELED = "canceled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        """Whether the device is done with this deployment."""
        return self in _TERMINAL_STATES


_TERMINAL_STATES = frozenset(
    {
        ExecutionState.SUCCEEDED,
        ExecutionState.FAILED,
        ExecutionState.ROLLED_BACK,
        ExecutionState.CANCELED,
        ExecutionState.TIMED_OUT,
    }
)


# Notified and not finished: the device holds a notice and may be working on it.
LIVE_STATES = tuple(
    s
    for s in ExecutionState
    if not s.terminal and s not in (ExecutionState.QUEUED, ExecutionState.PENDING)
)
# Not finished: the device is busy with the deployment (a second one is refused).
UNFINISHED_STATES = tuple(s for s in ExecutionState if not s.terminal)


class Deployment(SQLModel, table=True):
    """A bundle sent to a selected set of devices under a rollout strategy."""

    __tablename__ = "deployments"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=128)
    # SET NULL: a bundle may be deleted once no unfinished deployment needs it; the finished
    # deployment keeps its history (the bundle's name and digest stay in the audit trail).
    bundle_id: uuid.UUID | None = Field(
        default=None, foreign_key="bundles.id", ondelete="SET NULL", index=True
    )
    # {"device_ids": [...]} or {"selector": {...}, "dynamic": ..., "max_devices": ...}.
    target: dict[str, Any] = Field(default_factory=dict, sa_type=JSONB, nullable=False)
    # A deployments.strategy.RolloutStrategy.
    strategy: dict[str, Any] = Field(default_factory=dict, sa_type=JSONB, nullable=False)
    # {"rules": [AbortRule, ...]}.
    abort_criteria: dict[str, Any] = Field(default_factory=dict, sa_type=JSONB, nullable=False)
    status: DeploymentStatus = enum_field(
        DeploymentStatus, DeploymentStatus.SCHEDULED, name="deployment_status", index=True
    )
    created_by: str = Field(max_length=128)
    created_at: datetime = created_at_field()
    updated_at: datetime = created_at_field()
    started_at: datetime | None = optional_timestamp_field()
    finished_at: datetime | None = optional_timestamp_field()
    # The rollout controller's state (deployments/rollout.py).
    current_wave: int = Field(default=0, nullable=False)
    wave_reached_at: datetime | None = optional_timestamp_field()  # current wave met its threshold
    approved_wave: int = Field(default=0, nullable=False)  # waves up to this one are approved
    forced_wave: int = Field(default=0, nullable=False)  # started below threshold by an operator
    waiting_for: str | None = Field(default=None, max_length=256)
    pause_reason: str | None = Field(default=None, max_length=256)
    # Pause rules fire again only once more devices than this have finished (set on resume).
    resumed_at_finished: int | None = Field(default=None)
    # Automatic rollback on abort: the previous bundle and the signed approval devices need.
    rollback_bundle_id: uuid.UUID | None = Field(
        default=None, foreign_key="bundles.id", ondelete="SET NULL"
    )
    rollback_approval: dict[str, Any] | None = Field(default=None, sa_type=JSONB)
    # On a rollback deployment: the aborted deployment it undoes.
    rollback_of: uuid.UUID | None = Field(
        default=None, foreign_key="deployments.id", ondelete="SET NULL", index=True
    )


class DeploymentEvent(SQLModel, table=True):
    """Something that happened to a deployment, in order: the audit of its rollout and the
    source of its Server-Sent Events stream (the id is the event id)."""

    __tablename__ = "deployment_events"
    __table_args__ = (sa.Index("ix_deployment_events_deployment_id_id", "deployment_id", "id"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=sa.BigInteger)
    deployment_id: uuid.UUID = Field(foreign_key="deployments.id", ondelete="CASCADE")
    kind: str = Field(max_length=32)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSONB, nullable=False)
    created_at: datetime = created_at_field()


class DeploymentExecution(SQLModel, table=True):
    """One device's part in one deployment."""

    __tablename__ = "deployment_executions"
    __table_args__ = (
        sa.UniqueConstraint("deployment_id", "device_id"),
        sa.Index("ix_deployment_executions_deployment_id_state", "deployment_id", "state"),
        sa.Index("ix_deployment_executions_device_id_state", "device_id", "state"),
        sa.CheckConstraint("progress BETWEEN 0 AND 100", name="progress_percent"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=sa.BigInteger)
    deployment_id: uuid.UUID = Field(foreign_key="deployments.id", ondelete="CASCADE")
    device_id: str = Field(foreign_key="devices.id", ondelete="CASCADE", max_length=64)
    state: ExecutionState = enum_field(
        ExecutionState, ExecutionState.PENDING, name="execution_state"
    )
    attempt: int = Field(default=0, nullable=False)  # how many times the device was notified
    wave: int = Field(default=0, nullable=False)
    position: int = Field(default=0, nullable=False)  # random draw order within the selection
    not_before: datetime | None = optional_timestamp_field()  # retry backoff
    admitted_at: datetime | None = optional_timestamp_field()  # last QUEUED -> PENDING
    start_delay_s: int = Field(default=0, nullable=False)  # jitter the device waits first
    progress: int = Field(default=0, nullable=False)
    error_code: str | None = Field(default=None, max_length=64)
    error_detail: str | None = Field(default=None, max_length=1024)
    # The device's progress sequence number last applied: repeats and late arrivals are ignored.
    report_seq: int | None = Field(default=None, sa_type=sa.BigInteger)
    # The device's own, finer state name (e.g. "committing", "rolling_back", "rejected").
    device_state: str | None = Field(default=None, max_length=32)
    notified_at: datetime | None = optional_timestamp_field()
    reported_at: datetime | None = optional_timestamp_field()
    created_at: datetime = created_at_field()
    updated_at: datetime = created_at_field()
    started_at: datetime | None = optional_timestamp_field()
    finished_at: datetime | None = optional_timestamp_field()

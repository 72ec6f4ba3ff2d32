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

    PENDING = "pending"  # targeted, not yet notified
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
    # {"device_ids": [...]} or {"tags": {...}, "device_type": "..."}; see deployments/schemas.py.
    target: dict[str, Any] = Field(default_factory=dict, sa_type=JSONB, nullable=False)
    # {"waves": [percent, ...], "wave_interval_s": ...}
    strategy: dict[str, Any] = Field(default_factory=dict, sa_type=JSONB, nullable=False)
    # {"max_failure_ratio": 0.1, "min_executions": 10}
    abort_criteria: dict[str, Any] = Field(default_factory=dict, sa_type=JSONB, nullable=False)
    status: DeploymentStatus = enum_field(
        DeploymentStatus, DeploymentStatus.SCHEDULED, name="deployment_status", index=True
    )
    created_by: str = Field(max_length=128)
    created_at: datetime = created_at_field()
    updated_at: datetime = created_at_field()
    started_at: datetime | None = optional_timestamp_field()
    finished_at: datetime | None = optional_timestamp_field()


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
    attempt: int = Field(default=0, nullable=False)
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

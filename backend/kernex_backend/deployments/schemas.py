"""API shapes for deployments and their executions."""

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kernex_backend.core.text import DeviceId, Label
from kernex_backend.deployments.models import DeploymentStatus, ExecutionState


class DeploymentCreate(BaseModel):
    """A signed bundle to explicit devices, all at once."""

    model_config = ConfigDict(extra="forbid")

    name: Label
    bundle_id: uuid.UUID
    device_ids: list[DeviceId] = Field(min_length=1, max_length=10_000)


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


class DeploymentDetail(DeploymentPublic):
    """A deployment with how many devices are in each execution state."""

    execution_counts: dict[ExecutionState, int]


class DeploymentsPublic(BaseModel):
    """A page of deployments."""

    data: list[DeploymentPublic]
    count: int


class ExecutionPublic(BaseModel):
    """One device's part in a deployment."""

    device_id: str
    state: ExecutionState
    attempt: int
    progress: int
    error_code: str | None
    error_detail: str | None
    device_state: str | None
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

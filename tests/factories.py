"""Rows for tests, written straight to the database: devices, bundles, deployments with their
executions, API keys. Each takes only what a test cares about; the rest has plain defaults."""

import uuid
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.api_keys import service as api_keys
from kernex_backend.bundles.models import Bundle
from kernex_backend.core.db import create_sessionmaker
from kernex_backend.core.scopes import Scope
from kernex_backend.deployments.models import (
    Deployment,
    DeploymentExecution,
    DeploymentStatus,
    ExecutionState,
)
from kernex_backend.devices.models import Device, DeviceStatus


async def add_devices(
    engine: AsyncEngine,
    *ids: str,
    device_type: str = "gw",
    status: DeviceStatus = DeviceStatus.ACTIVE,
) -> None:
    """Devices with these IDs."""
    async with create_sessionmaker(engine)() as session:
        for device_id in ids:
            session.add(Device(id=device_id, device_type=device_type, status=status))
        await session.commit()


async def add_bundle(engine: AsyncEngine, *, signed: bool = True, **fields: Any) -> uuid.UUID:
    """A bundle row (no content in storage); signed ones carry a stored manifest."""
    values: dict[str, Any] = {
        "name": "app",
        "version": "1.0.0",
        "device_type": "gw",
        "sha256": "a" * 64,
        "size_bytes": 10,
        "storage_key": f"bundles/{uuid.uuid4().hex}",
        "created_by": "test",
    }
    if signed:
        values |= {
            "signature": "c2ln",
            "signing_key_id": "k",
            "manifest_created_at": "2026-11-28T00:00:00+00:00",
        }
    values |= fields
    async with create_sessionmaker(engine)() as session:
        bundle = Bundle(**values)
        session.add(bundle)
        await session.commit()
        return bundle.id


async def add_deployment(
    engine: AsyncEngine,
    executions: dict[str, ExecutionState],
    *,
    bundle_id: uuid.UUID | None = None,
    status: DeploymentStatus = DeploymentStatus.RUNNING,
    name: str = "t",
) -> uuid.UUID:
    """A deployment with one execution per device, in the given states (devices must exist)."""
    async with create_sessionmaker(engine)() as session:
        deployment = Deployment(
            name=name,
            bundle_id=bundle_id,
            target={"device_ids": sorted(executions)},
            status=status,
            created_by="test",
        )
        session.add(deployment)
        await session.flush()
        for device_id, state in executions.items():
            session.add(
                DeploymentExecution(deployment_id=deployment.id, device_id=device_id, state=state)
            )
        await session.commit()
        return deployment.id


async def add_api_key(engine: AsyncEngine, *scopes: Scope, name: str = "test") -> str:
    """A live API key with these scopes; returns its token."""
    async with create_sessionmaker(engine)() as session:
        _, token = await api_keys.create(
            session=session, name=name, scopes=list(scopes), actor="test"
        )
        return token


async def register_device(
    client: httpx.AsyncClient, headers: dict[str, str], device_id: str, **fields: object
) -> httpx.Response:
    """POST /devices, as an operator would."""
    body = {"id": device_id, "device_type": "gateway", **fields}
    return await client.post("/api/v1/devices", json=body, headers=headers)

"""The retention worker keeps what is used or installed and deletes the rest."""

import datetime as dt
import os
import uuid

import httpx
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.bundles.retention import run_retention
from kernex_backend.bundles.storage import BundleStorage, bundle_key
from kernex_backend.core.db import create_sessionmaker
from kernex_backend.deployments.models import Deployment, DeploymentStatus
from kernex_backend.devices.models import Device
from tests.integration.bundles.conftest import ReleaseFactory
from tests.integration.conftest import storage_of


async def test_retention_keeps_used_and_installed_bundles(
    app: FastAPI,
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    admin_headers: dict[str, str],
    make_release: ReleaseFactory,
) -> None:
    storage: BundleStorage = storage_of(app)

    async def release(version: str, payload: bytes | None = None) -> dict[str, str]:
        payload = payload or os.urandom(5000)
        response = await client.post(
            "/api/v1/bundles",
            content=payload,
            headers={**admin_headers, **make_release(payload, version=version)},
        )
        assert response.status_code == 201, response.text
        created: dict[str, str] = response.json()
        return created

    shared = os.urandom(4000)
    old_unused = await release("1.0.0")
    old_deploying = await release("1.1.0")
    old_installed = await release("1.2.0")
    old_finished = await release("1.3.0")
    old_shared = await release("1.4.0", shared)
    new_shared = await release("2.0.0", shared)  # same content, recent: keeps the object alive
    recent = await release("2.1.0")

    async with create_sessionmaker(engine)() as session:
        # Paused, not running: the app's rollout controller completes a running deployment
        # that has no executions on its next tick (every second), which made this test race.
        session.add(
            Deployment(
                name="live",
                bundle_id=uuid.UUID(old_deploying["id"]),
                status=DeploymentStatus.PAUSED,
                created_by="t",
            )
        )
        session.add(
            Deployment(
                name="done",
                bundle_id=uuid.UUID(old_finished["id"]),
                status=DeploymentStatus.COMPLETED,
                created_by="t",
            )
        )
        session.add(Device(id="dev-r", device_type="gateway", current_version="1.2.0"))
        await session.commit()
    old_ids = [
        b["id"] for b in (old_unused, old_deploying, old_installed, old_finished, old_shared)
    ]
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE bundles SET created_at = now() - interval '40 days' WHERE id = ANY(:ids)"
            ),
            {"ids": [uuid.UUID(i) for i in old_ids]},
        )

    sessionmaker = create_sessionmaker(engine)
    dry = await run_retention(
        sessionmaker=sessionmaker, storage=storage, older_than=dt.timedelta(days=30), dry_run=True
    )
    assert sorted(dry.deleted) == ["firmware 1.0.0", "firmware 1.3.0", "firmware 1.4.0"]
    assert dry.kept_in_use == ["firmware 1.1.0"]
    assert dry.kept_installed == ["firmware 1.2.0"]
    assert (await client.get("/api/v1/bundles", headers=admin_headers)).json()["count"] == 7

    report = await run_retention(
        sessionmaker=sessionmaker, storage=storage, older_than=dt.timedelta(days=30), dry_run=False
    )
    assert sorted(report.deleted) == sorted(dry.deleted)
    remaining = {
        b["version"]
        for b in (await client.get("/api/v1/bundles", headers=admin_headers)).json()["data"]
    }
    assert remaining == {"1.1.0", "1.2.0", "2.0.0", "2.1.0"}
    assert not await storage.exists(bundle_key(old_unused["sha256"]))
    assert not await storage.exists(bundle_key(old_finished["sha256"]))
    assert await storage.exists(bundle_key(new_shared["sha256"]))  # shared content survives
    assert await storage.exists(bundle_key(recent["sha256"]))

    events = await client.get(
        "/api/v1/audit-events", params={"actor": "system:retention"}, headers=admin_headers
    )
    assert events.json()["count"] == 3
    assert all("retention" in e["details"]["reason"] for e in events.json()["data"])


async def test_a_pass_skips_while_another_replica_holds_the_lock(
    app: FastAPI, engine: AsyncEngine
) -> None:
    from kernex_backend.bundles import retention

    sessionmaker = create_sessionmaker(engine)
    async with engine.begin() as other_replica:
        held = await other_replica.execute(
            sa.select(sa.func.pg_try_advisory_xact_lock(retention._ADVISORY_LOCK_KEY))
        )
        assert held.scalar_one()
        skipped = await run_retention(
            sessionmaker=sessionmaker,
            storage=storage_of(app),
            older_than=dt.timedelta(days=1),
            dry_run=False,
        )
    assert not skipped.ran
    ran = await run_retention(
        sessionmaker=sessionmaker,
        storage=storage_of(app),
        older_than=dt.timedelta(days=1),
        dry_run=False,
    )
    assert ran.ran

"""What a hostile message would do if it got past the protocol's checks, against real
PostgreSQL: the writers isolate it and store everyone else's; the limits table agrees with the
schema; a session claim goes stale; a bridge that cannot connect makes the replica not ready."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.core.db import create_sessionmaker
from kernex_backend.core.messaging import TrafficCounters
from kernex_backend.core.runtime import runtime_of
from kernex_backend.deployments.progress import ProgressIngest
from kernex_backend.devices.presence import PresenceTracker
from kernex_backend.main import create_app
from kernex_backend.mqtt import handlers as fleet_state
from kernex_backend.telemetry.ingest import HeartbeatIngest
from kernex_devstack.broker import EmbeddedBroker
from kernex_devstack.ports import free_port
from kernex_protocol.limits import INT_LIMITS, TEXT_LIMITS
from kernex_protocol.payloads import ErrorCode, Presence, ProgressError, ProgressState
from tests.conftest import make_settings
from tests.factories import add_devices
from tests.integration.fleet.test_fleet_state import (
    beat,
    device,
    execution,
    heartbeat_rows,
    make_execution,
    received,
    report,
)
from tests.integration.mqtt_client import Identity

pytestmark = pytest.mark.integration


async def run_until(run: Any, done: Any, limit_s: float = 10.0) -> None:
    """Run a writer until the awaitable check `done()` holds (polled: a write in flight is not
    visible in the backlog), then stop it."""
    task = asyncio.create_task(run())
    try:
        async with asyncio.timeout(limit_s):
            while not await done():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.reliability(
    "Bad input",
    "heartbeats the database refuses",
    "isolated and dropped; the rest of the batch stored",
)
async def test_poison_heartbeats_are_isolated_and_the_rest_stored(
    app: FastAPI, engine: AsyncEngine
) -> None:
    await add_devices(engine, "ok-1", "ok-2", "evil-1", "evil-2")
    stats = TrafficCounters()
    ingest = HeartbeatIngest(engine, stats, batch_size=100, interval_s=0.05, capacity=1000)
    # Built directly, as if a parser had let them through: values the columns refuse.
    ingest.submit("ok-1", beat(1))
    ingest.submit("evil-1", beat(2**63))  # out of bigint
    ingest.submit("ok-2", beat(1))
    ingest.submit("evil-2", beat(3, version="1.0\x00"))  # NUL in text
    ingest.submit("ok-1", beat(2))

    async def stored() -> bool:
        return stats.counts["heartbeats.stored"] + stats.counts["heartbeats.dropped_refused"] == 5

    await run_until(ingest.run, stored)
    assert await heartbeat_rows(engine, "ok-1") == [1, 2]
    assert await heartbeat_rows(engine, "ok-2") == [1]
    assert await heartbeat_rows(engine, "evil-1") == []
    assert stats.counts["heartbeats.dropped_refused"] == 2
    assert ingest.problem() is None
    # The ingest goes on: a later heartbeat is stored at once.
    ingest.submit("ok-2", beat(2))

    async def stored_again() -> bool:
        return await heartbeat_rows(engine, "ok-2") == [1, 2]

    await run_until(ingest.run, stored_again)


async def _noop(device_ids: list[str]) -> None:
    return None


@pytest.mark.reliability(
    "Bad input",
    "a progress report the database refuses",
    "isolated; the others applied",
)
async def test_a_poison_progress_report_is_isolated(app: FastAPI, engine: AsyncEngine) -> None:
    good = await make_execution(engine, "pg-ok")
    bad = await make_execution(engine, "pg-bad")
    stats = TrafficCounters()
    ingest = ProgressIngest(create_sessionmaker(engine), stats, on_final=_noop, interval_s=0.05)
    poison = ProgressError(ErrorCode.INSTALL_FAILED, "x\x00y")  # NUL: refused by PostgreSQL
    ingest.submit("pg-bad", report(bad, ProgressState.FAILED, 1, error=poison))
    ingest.submit("pg-ok", report(good, ProgressState.DOWNLOADING, 1, percent=40))

    async def handled() -> bool:
        return stats.counts["progress.applied"] + stats.counts["progress.dropped_refused"] == 2

    await run_until(ingest.run, handled)
    assert (await execution(engine, good))["progress"] == 40
    assert (await execution(engine, bad))["state"] == "notified"
    assert stats.counts["progress.dropped_refused"] == 1


async def test_the_limits_table_agrees_with_the_schema(app: FastAPI, engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT table_name, column_name, data_type, character_maximum_length "
                "FROM information_schema.columns WHERE table_schema = 'public'"
            )
        )
        columns = {f"{r[0]}.{r[1]}": (r[2], r[3]) for r in rows}
    integer_max = {"bigint": 2**63 - 1, "integer": 2**31 - 1, "smallint": 2**15 - 1}
    for name, limit in INT_LIMITS.items():
        for column in limit.columns:
            kind, _ = columns[column]
            assert kind in integer_max, f"{name}: {column} is {kind}"
            assert limit.high <= integer_max[kind], f"{name} allows more than {column} holds"
            assert limit.low >= -integer_max[kind] - 1
    for name, (length, stored_in) in TEXT_LIMITS.items():
        for column in stored_in:
            kind, maximum = columns[column]
            assert kind in ("character varying", "text"), f"{name}: {column} is {kind}"
            assert maximum is None or length <= maximum, f"{name} allows more than {column}"


@pytest.mark.reliability(
    "Hostile devices",
    "a device lying about its session",
    "its claim goes stale; the real agent's heartbeats stored",
)
async def test_a_lying_session_claim_goes_stale(app: FastAPI, engine: AsyncEngine) -> None:
    await add_devices(engine, "liar-1")
    stats = TrafficCounters()
    presence = PresenceTracker(engine, stats, stale_after_s=1.0)
    ingest = HeartbeatIngest(
        engine, stats, batch_size=10, interval_s=0.1, capacity=100, stale_after_s=1.0
    )
    top = INT_LIMITS["session"].high
    await presence.apply("liar-1", Presence(online=False, session=top))  # the lie
    await ingest.write([received("liar-1", beat(5, session=top))])
    # The real agent, session 7: its heartbeat is stored (every unique one is) but moves
    # none of the device's latest fields while the claim is fresh...
    await presence.apply("liar-1", Presence(online=True, session=7))
    await ingest.write([received("liar-1", beat(0, session=7))])
    row = await device(engine, "liar-1")
    assert (row["online"], row["presence_session"], row["heartbeat_session"]) == (False, top, top)
    assert await heartbeat_rows(engine, "liar-1") == [0, 5]
    assert stats.counts["heartbeats.stored_late"] == 1
    # ...and they follow it once nothing backed the claim for the offline threshold.
    await asyncio.sleep(1.2)
    await ingest.write([received("liar-1", beat(1, session=7))])
    row = await device(engine, "liar-1")
    assert (row["online"], row["presence_session"], row["heartbeat_session"]) == (True, 7, 7)
    assert await heartbeat_rows(engine, "liar-1") == [0, 1, 5]
    # The claim stays the highest stored: the next one is looked up, found new, and stored.
    await ingest.write([received("liar-1", beat(2, session=7))])
    assert await heartbeat_rows(engine, "liar-1") == [0, 1, 2, 5]
    assert (await device(engine, "liar-1"))["heartbeat_seq"] == 2
    await presence.apply("liar-1", Presence(online=False, session=7, reason="shutdown"))
    assert not (await device(engine, "liar-1"))["online"]


@pytest.fixture
async def unreachable_fleet(
    database_url: str, service_identity: Identity, broker: EmbeddedBroker
) -> AsyncIterator[FastAPI]:
    """A replica with the bridge on, whose broker is not there (nothing on its port)."""
    settings = make_settings(
        database_url,
        mqtt={
            "enabled": True,
            "host": "127.0.0.1",
            "port": free_port(),
            "ca_file": service_identity.ca_file,
            "cert_file": service_identity.cert_file,
            "key_file": service_identity.key_file,
        },
        notice={"key_file": broker.notice_key_file},
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.mark.reliability(
    "Faults",
    "the broker unreachable",
    "readiness says so; nothing crashes",
)
async def test_ready_says_no_while_device_traffic_cannot_flow(unreachable_fleet: FastAPI) -> None:
    fleet = runtime_of(unreachable_fleet).get(fleet_state.FleetState)
    assert fleet.bridge.problem(grace_s=60) is None  # within its grace
    await asyncio.sleep(0.3)
    assert "disconnected" in (fleet.bridge.problem(grace_s=0.1) or "")
    down_since = fleet.bridge._disconnected_at
    assert down_since is not None
    fleet.bridge._disconnected_at = down_since - 3600  # as if down for an hour
    transport = httpx.ASGITransport(app=unreachable_fleet)
    async with httpx.AsyncClient(transport=transport, base_url="http://kernex.test") as client:
        response = await client.get("/api/v1/ready")
    assert response.status_code == 503
    assert "MQTT bridge disconnected" in response.json()["checks"]["device_traffic"]
    assert response.headers["content-type"].startswith("application/problem+json")

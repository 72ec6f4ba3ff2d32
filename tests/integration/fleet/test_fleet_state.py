"""Fleet-state handlers against real PostgreSQL: heartbeat ingest, presence ordering, progress
ordering, timeouts, and the bridge's handling of bad traffic."""

import asyncio
import dataclasses
import datetime as dt
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.core.config import MqttSettings
from kernex_backend.core.db import create_engine, create_sessionmaker
from kernex_backend.core.messaging import TrafficCounters
from kernex_backend.deployments import lifecycle
from kernex_backend.deployments.models import (
    DeploymentExecution,
    ExecutionState,
)
from kernex_backend.deployments.progress import ProgressIngest
from kernex_backend.devices.models import DeviceStatus
from kernex_backend.devices.presence import PresenceTracker, prune_history
from kernex_backend.mqtt.bridge import MqttBridge
from kernex_backend.telemetry.ingest import HeartbeatIngest, Received
from kernex_protocol.payloads import (
    ErrorCode,
    Heartbeat,
    Presence,
    Progress,
    ProgressError,
    ProgressState,
)
from kernex_protocol.topics import Channel
from tests.conftest import make_settings
from tests.factories import add_deployment, add_devices

pytestmark = pytest.mark.integration


async def device(engine: AsyncEngine, device_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            (await conn.execute(sa.text("SELECT * FROM devices WHERE id = :i"), {"i": device_id}))
            .mappings()
            .one()
        )
    return dict(row)


async def heartbeat_rows(engine: AsyncEngine, device_id: str) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT sequence FROM heartbeats WHERE device_id = :i ORDER BY sequence"),
            {"i": device_id},
        )
        return [r[0] for r in rows]


def beat(seq: int, session: int = 1, version: str = "1.0.0") -> Heartbeat:
    return Heartbeat(
        seq=seq,
        session=session,
        sent_at="t",
        uptime_s=5,
        agent_version="0.1.0",
        installed_version=version,
        metrics={"load1_milli": 100},
    )


def received(device_id: str, hb: Heartbeat) -> Received:
    return Received(device_id, hb, dt.datetime.now(dt.UTC))


async def test_heartbeats_stored_once_newest_wins_and_strangers_refused(
    app: FastAPI, engine: AsyncEngine
) -> None:
    await add_devices(engine, "hb-1", "hb-2")
    await add_devices(engine, "hb-retired", status=DeviceStatus.DECOMMISSIONED)
    stats = TrafficCounters()
    ingest = HeartbeatIngest(engine, stats, batch_size=100, interval_s=0.1, capacity=1000)
    await ingest.write(
        [
            received("hb-1", beat(0)),
            received("hb-1", beat(1)),
            received("hb-1", beat(1)),  # a QoS 1 repeat in the same batch
            received("hb-2", beat(7, version="2.0.0")),
            received("hb-stranger", beat(0)),
            received("hb-retired", beat(0)),
        ]
    )
    # A later batch: a repeat and an older one are not stored again.
    await ingest.write(
        [received("hb-1", beat(1)), received("hb-1", beat(0)), received("hb-1", beat(2))]
    )
    assert await heartbeat_rows(engine, "hb-1") == [0, 1, 2]
    assert await heartbeat_rows(engine, "hb-2") == [7]
    assert await heartbeat_rows(engine, "hb-stranger") == []
    assert await heartbeat_rows(engine, "hb-retired") == []
    row = await device(engine, "hb-2")
    assert row["online"] and row["current_version"] == "2.0.0" and row["last_seen_at"]
    assert (row["heartbeat_session"], row["heartbeat_seq"]) == (1, 7)
    assert stats.counts["heartbeats.stored"] == 4  # 0, 1 and 7, then 2
    assert stats.counts["heartbeats.refused_unknown_device"] == 2
    # A new session starts its sequence again from 0: newer, so stored.
    await ingest.write([received("hb-1", beat(0, session=2))])
    assert await heartbeat_rows(engine, "hb-1") == [0, 0, 1, 2]


async def test_agent_health_in_heartbeats_is_visible_per_device(
    app: FastAPI, engine: AsyncEngine, client: httpx.AsyncClient, read_headers: dict[str, str]
) -> None:
    await add_devices(engine, "hb-health")
    ingest = HeartbeatIngest(engine, TrafficCounters(), batch_size=10, interval_s=0.1, capacity=10)
    health = dataclasses.replace(beat(0), update_state="installing", last_error="digest_mismatch")
    await ingest.write([received("hb-health", health)])
    answer = await client.get("/api/v1/devices/hb-health/heartbeats", headers=read_headers)
    metrics = answer.json()["data"][0]["metrics"]
    assert (metrics["update_state"], metrics["last_error"]) == ("installing", "digest_mismatch")


@pytest.mark.reliability(
    "Faults",
    "the database unreachable under heartbeat ingest",
    "recovers without a restart; loss bounded by the buffer and counted",
)
async def test_ingest_survives_a_database_outage_and_bounds_its_buffer(
    database_url: str, postgres_admin: Any, template_database: str, app: FastAPI
) -> None:
    # An engine pointing at a database that does not exist yet: every write fails.
    missing = f"kernex_test_{uuid.uuid4().hex[:12]}"
    staging = f"kernex_test_{uuid.uuid4().hex[:12]}"
    url = postgres_admin.url_for(missing)
    broken = create_engine(make_settings(url))
    stats = TrafficCounters()
    ingest = HeartbeatIngest(broken, stats, batch_size=10, interval_s=0.05, capacity=20)
    for seq in range(30):  # 10 over capacity
        ingest.submit("out-1", beat(seq))
    assert ingest.backlog == 20
    assert stats.counts["heartbeats.dropped_backpressure"] == 10
    runner = asyncio.create_task(ingest.run())
    try:
        await asyncio.sleep(1.0)
        assert stats.counts["heartbeats.stored"] == 0 and ingest.backlog == 20  # kept, retried
        # The database comes back whole: prepared aside under another name (schema and today's
        # partitions from the template, then the device), then renamed, so it appears under its
        # name complete in one catalog update. (Creating it from the prepared one as a template
        # instead once let CI's first batch find no device: 10 refused as unknown.)
        staging_engine = create_engine(
            make_settings(await postgres_admin.create(staging, template=template_database))
        )
        async with staging_engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO devices (id, device_type, tags, status, online,"
                    " created_at, updated_at)"
                    " VALUES ('out-1', 'gw', '{}', 'active', false, now(), now())"
                )
            )
        await staging_engine.dispose()
        await postgres_admin.rename(staging, missing)
        for _ in range(100):
            if ingest.backlog == 0:
                break
            await asyncio.sleep(0.2)
        assert ingest.backlog == 0
        # Recovered without a restart: every buffered heartbeat was written, stored or (older
        # than one already stored: newest wins) counted as a duplicate, and the newest is there.
        counts = stats.counts
        lost = ("refused_unknown_device", "dropped_refused", "dropped_retries")
        assert not any(counts[f"heartbeats.{name}"] for name in lost), dict(counts)
        assert counts["heartbeats.stored"] + counts["heartbeats.duplicates"] == 20, dict(counts)
        assert counts["heartbeats.stored"] >= 10
        async with broken.connect() as conn:
            newest = (await conn.execute(sa.text("SELECT max(sequence) FROM heartbeats"))).scalar()
        assert newest == 19
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await broken.dispose()
        await postgres_admin.drop(missing)
        await postgres_admin.drop(staging)


async def test_presence_is_ordered_by_session(app: FastAPI, engine: AsyncEngine) -> None:
    await add_devices(engine, "pr-1")
    stats = TrafficCounters()
    presence = PresenceTracker(engine, stats)

    async def state() -> tuple[bool, int | None]:
        row = await device(engine, "pr-1")
        return row["online"], row["presence_session"]

    await presence.apply("pr-1", Presence(online=True, session=5, installed_version="1.0.0"))
    assert await state() == (True, 5)
    await presence.apply("pr-1", Presence(online=False, session=4, reason="lost"))  # late Will
    assert await state() == (True, 5)
    await presence.apply("pr-1", Presence(online=False, session=5, reason="lost"))
    assert await state() == (False, 5)
    await presence.apply("pr-1", Presence(online=True, session=5))  # reordered: same session
    assert await state() == (False, 5)
    await presence.apply("pr-1", Presence(online=True, session=6))
    assert await state() == (True, 6)
    await presence.apply("pr-nobody", Presence(online=True, session=1))
    assert stats.counts["presence.stale"] == 2
    assert stats.counts["presence.refused_unknown_device"] == 1

    # Silence: the sweeper marks it offline once last_seen_at is old enough.
    assert await presence.sweep(dt.timedelta(hours=1)) == 0
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE devices SET last_seen_at = now() - interval '2 hours'"))
    assert await presence.sweep(dt.timedelta(hours=1)) == 1
    assert await state() == (False, None)  # the session is forgotten: any news brings it back


async def presence_rows(engine: AsyncEngine, device_id: str) -> list[tuple[bool, Any, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT online, session, reason FROM presence_events"
                " WHERE device_id = :i ORDER BY id"
            ),
            {"i": device_id},
        )
        return [tuple(r) for r in rows]


async def test_presence_history_records_what_was_applied(
    app: FastAPI, engine: AsyncEngine, client: httpx.AsyncClient, read_headers: dict[str, str]
) -> None:
    # Every change the device's row takes is in its history, with how it was learned; what was
    # refused as stale is not.
    await add_devices(engine, "ph-1")
    presence = PresenceTracker(engine, TrafficCounters())
    await presence.apply("ph-1", Presence(online=True, session=5))
    await presence.apply("ph-1", Presence(online=False, session=4, reason="lost"))  # stale
    await presence.apply("ph-1", Presence(online=False, session=5, reason="shutdown"))
    await presence.apply("ph-1", Presence(online=True, session=5))  # stale: same session
    await presence.apply("ph-1", Presence(online=True, session=6))
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE devices SET last_seen_at = now() - interval '2 hours' WHERE id = 'ph-1'"
            )
        )
    assert await presence.sweep(dt.timedelta(hours=1)) == 1
    # Back through a heartbeat alone (no birth message): recorded once, as such.
    ingest = HeartbeatIngest(engine, TrafficCounters(), batch_size=10, interval_s=0.1, capacity=10)
    await ingest.write([received("ph-1", beat(0, session=6)), received("ph-1", beat(1, session=6))])
    await ingest.write([received("ph-1", beat(2, session=6))])
    assert (await device(engine, "ph-1"))["online"]
    assert await presence_rows(engine, "ph-1") == [
        (True, 5, None),
        (False, 5, "shutdown"),
        (True, 6, None),
        (False, None, "silent"),
        (True, 6, "heartbeat"),
    ]

    # Served newest first by the API, a limit respected; an unknown device is a 404.
    served = await client.get("/api/v1/devices/ph-1/presence?limit=2", headers=read_headers)
    assert served.status_code == 200, served.text
    assert [(e["online"], e["reason"]) for e in served.json()["data"]] == [
        (True, "heartbeat"),
        (False, "silent"),
    ]
    missing = await client.get("/api/v1/devices/nobody/presence", headers=read_headers)
    assert missing.status_code == 404

    # Pruned after the retention, in batches; newer rows stay.
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE presence_events SET at = now() - interval '40 days'"
                " WHERE device_id = 'ph-1' AND online = false"
            )
        )
    assert await prune_history(engine, retention_days=30) == 2
    assert [r[2] for r in await presence_rows(engine, "ph-1")] == [None, None, "heartbeat"]


async def make_execution(engine: AsyncEngine, *device_ids: str) -> uuid.UUID:
    """A running deployment with a NOTIFIED execution for each device."""
    await add_devices(engine, *device_ids)
    return await add_deployment(engine, dict.fromkeys(device_ids, ExecutionState.NOTIFIED))


def report(deployment: uuid.UUID, state: ProgressState, seq: int, **extra: Any) -> Progress:
    return Progress(str(deployment), state, seq=seq, sent_at="t", version="9.0.0", **extra)


async def execution(engine: AsyncEngine, deployment: uuid.UUID) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    sa.text("SELECT * FROM deployment_executions WHERE deployment_id = :d"),
                    {"d": deployment},
                )
            )
            .mappings()
            .one()
        )
    return dict(row)


@pytest.mark.reliability(
    "Hostile devices",
    "progress for a deployment that does not target it, replayed, out of order, after the"
    " final state",
    "ignored and counted; the execution moves forward only, once",
)
async def test_progress_is_applied_in_order_once_and_finishes_the_deployment(
    app: FastAPI, engine: AsyncEngine
) -> None:
    deployment = await make_execution(engine, "pg-1")
    finals: list[str] = []

    async def on_final(device_ids: list[str]) -> None:
        finals.extend(device_ids)

    stats = TrafficCounters()
    ingest = ProgressIngest(create_sessionmaker(engine), stats, on_final=on_final)
    await ingest.apply("pg-1", report(deployment, ProgressState.DOWNLOADING, 10, percent=50))
    await ingest.apply("pg-1", report(deployment, ProgressState.DOWNLOADING, 10, percent=50))
    await ingest.apply("pg-1", report(deployment, ProgressState.DOWNLOADING, 9, percent=10))
    row = await execution(engine, deployment)
    assert (row["state"], row["progress"], row["report_seq"]) == ("downloading", 50, 10)
    started_at = row["started_at"]
    assert started_at is not None and row["reported_at"] == row["updated_at"] >= started_at
    await ingest.apply("pg-1", report(deployment, ProgressState.COMMITTING, 14))
    row = await execution(engine, deployment)
    assert (row["device_state"], row["state"], row["progress"]) == (
        "committing",
        "health_check",
        50,
    )
    await ingest.apply("pg-1", report(deployment, ProgressState.COMMITTED, 15))
    row = await execution(engine, deployment)
    assert (row["state"], row["progress"]) == ("succeeded", 100)
    assert row["started_at"] == started_at  # the first report's time, kept
    assert row["finished_at"] == row["reported_at"] and row["finished_at"] > started_at
    assert (await device(engine, "pg-1"))["current_version"] == "9.0.0"
    # After the final state nothing changes it: not even a "newer" failure.
    await ingest.apply(
        "pg-1",
        report(deployment, ProgressState.FAILED, 16, error=ProgressError(ErrorCode.INSTALL_FAILED)),
    )
    assert (await execution(engine, deployment))["state"] == "succeeded"
    await ingest.apply("pg-1", report(uuid.uuid4(), ProgressState.DOWNLOADING, 20))
    await ingest.apply("pg-1", Progress("not-a-uuid", ProgressState.FAILED, seq=21, sent_at="t"))
    assert stats.counts["progress.duplicate"] == 2
    assert stats.counts["progress.after_final"] == 1
    assert stats.counts["progress.unknown_execution"] == 2
    assert finals == ["pg-1"]
    assert await deployment_status(engine, deployment) == "completed"


async def test_a_batch_applies_each_devices_reports_as_one_by_one_would(
    app: FastAPI, engine: AsyncEngine
) -> None:
    deployment = await make_execution(engine, "pb-1", "pb-2", "pb-3")
    finals: list[str] = []

    async def on_final(device_ids: list[str]) -> None:
        finals.extend(device_ids)

    stats = TrafficCounters()
    ingest = ProgressIngest(create_sessionmaker(engine), stats, on_final=on_final)
    failed = ProgressError(ErrorCode.HEALTH_CHECK_FAILED, "exit 3")
    await ingest.apply_batch(
        [
            ("pb-1", report(deployment, ProgressState.DOWNLOADING, 1, percent=10)),
            ("pb-2", report(deployment, ProgressState.DOWNLOADING, 5)),
            ("pb-1", report(deployment, ProgressState.DOWNLOADING, 1, percent=10)),  # a repeat
            ("pb-2", report(deployment, ProgressState.ROLLED_BACK, 8, error=failed)),
            ("pb-1", report(deployment, ProgressState.COMMITTED, 4)),
            ("pb-1", report(deployment, ProgressState.DOWNLOADING, 3)),  # late: after final
            ("pb-2", report(deployment, ProgressState.DOWNLOADING, 6)),  # late: after final
            ("pb-3", report(deployment, ProgressState.VERIFYING, 2)),
            ("pb-9", report(deployment, ProgressState.VERIFYING, 2)),  # not in the deployment
        ]
    )
    rows = {r["device_id"]: r for r in await executions(engine, deployment)}
    assert (rows["pb-1"]["state"], rows["pb-1"]["progress"], rows["pb-1"]["report_seq"]) == (
        "succeeded",
        100,
        4,
    )
    assert (rows["pb-2"]["state"], rows["pb-2"]["error_code"], rows["pb-2"]["report_seq"]) == (
        "rolled_back",
        "health_check_failed",
        8,
    )
    assert (rows["pb-3"]["state"], rows["pb-3"]["report_seq"]) == ("verifying", 2)
    assert (await device(engine, "pb-1"))["current_version"] == "9.0.0"
    assert (await device(engine, "pb-2"))["current_version"] is None
    assert stats.counts["progress.applied"] == 5
    assert stats.counts["progress.duplicate"] == 1
    assert stats.counts["progress.after_final"] == 2
    assert stats.counts["progress.unknown_execution"] == 1
    assert sorted(finals) == ["pb-1", "pb-2"]
    assert await deployment_status(engine, deployment) == "running"

    # The last device finishes through the queue and the writer task: the deployment completes.
    writer = asyncio.create_task(ingest.run())
    try:
        ingest.submit("pb-3", report(deployment, ProgressState.COMMITTED, 3))
        for _ in range(100):
            if await deployment_status(engine, deployment) == "completed":
                break
            await asyncio.sleep(0.05)
    finally:
        writer.cancel()
    assert await deployment_status(engine, deployment) == "completed"
    assert ingest.backlog == 0
    assert sorted(finals) == ["pb-1", "pb-2", "pb-3"]


async def executions(engine: AsyncEngine, deployment: uuid.UUID) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT * FROM deployment_executions WHERE deployment_id = :d"),
            {"d": deployment},
        )
        return [dict(r) for r in rows.mappings()]


async def deployment_status(engine: AsyncEngine, deployment: uuid.UUID) -> str:
    async with engine.connect() as conn:
        status = (
            await conn.execute(
                sa.text("SELECT status FROM deployments WHERE id = :d"), {"d": deployment}
            )
        ).scalar_one()
    return str(status)


async def test_a_failure_report_keeps_its_error(app: FastAPI, engine: AsyncEngine) -> None:
    deployment = await make_execution(engine, "pg-2")
    ingest = ProgressIngest(create_sessionmaker(engine), TrafficCounters(), on_final=_noop)
    await ingest.apply(
        "pg-2",
        report(
            deployment,
            ProgressState.ROLLED_BACK,
            3,
            error=ProgressError(ErrorCode.HEALTH_CHECK_FAILED, "exit 1"),
        ),
    )
    row = await execution(engine, deployment)
    assert (row["state"], row["error_code"], row["error_detail"]) == (
        "rolled_back",
        "health_check_failed",
        "exit 1",
    )


async def _noop(device_ids: list[str]) -> None:
    return None


@pytest.mark.reliability(
    "Bad input",
    "foreign topics and unparsable messages at the bridge",
    "dropped and counted; the consumer keeps going",
)
async def test_bridge_drops_bad_traffic_and_keeps_going() -> None:
    seen: list[tuple[str, object]] = []

    async def handler(device_id: str, document: object) -> None:
        seen.append((device_id, document))

    async def broken(device_id: str, document: object) -> None:
        raise RuntimeError("database hiccup")

    bridge = MqttBridge(MqttSettings())
    bridge.route_inline(Channel.HEARTBEAT, Heartbeat.parse, lambda d, p: seen.append((d, p)))
    bridge.route(Channel.PRESENCE, Presence.parse, handler)
    good = beat(1).to_payload()
    await bridge.dispatch("kernex/v1/devices/d-1/heartbeat", b"{not json")
    await bridge.dispatch("kernex/v1/devices/d-1/heartbeat", b'{"v": 9}')
    await bridge.dispatch("kernex/v1/devices/d-1/heartbeat", b"x" * 5000)
    await bridge.dispatch("kernex/v1/devices/d-1/deployment", good)  # a cloud->device topic
    await bridge.dispatch("kernex/v1/devices/a+b/heartbeat", good)
    await bridge.dispatch("elsewhere/topic", good)
    await bridge.dispatch("kernex/v1/devices/d-1/heartbeat", good)
    bridge.route(Channel.PRESENCE, Presence.parse, broken)
    await bridge.dispatch("kernex/v1/devices/d-1/presence", Presence(True, 1).to_payload())
    await bridge.dispatch("kernex/v1/devices/d-1/heartbeat", beat(2).to_payload())
    await bridge.drain()
    assert [d for d, _ in seen] == ["d-1", "d-1"]
    counts = bridge.stats.counts
    assert counts["dropped.malformed"] == 2
    assert counts["dropped.oversized"] == 1
    assert counts["dropped.foreign_topic"] == 3
    assert counts["failed.presence"] == 1


def test_the_client_gate_handles_inline_channels_and_passes_on_the_rest() -> None:
    """The gate on the MQTT client's callback: heartbeats (an inline route) are parsed and
    queued there and never reach the consumer loop; presence goes on to it; bad payloads and a
    failing enqueue are counted, and the gate itself never raises."""
    queued: list[tuple[str, object]] = []

    async def presence_handler(device_id: str, document: object) -> None:
        raise AssertionError("the gate does not run coroutine handlers")

    def enqueue(device_id: str, document: object) -> None:
        if device_id == "bad-1":
            raise RuntimeError("buffer broken")
        queued.append((device_id, document))

    bridge = MqttBridge(MqttSettings())
    bridge.route_inline(Channel.HEARTBEAT, Heartbeat.parse, enqueue)
    bridge.route(Channel.PRESENCE, Presence.parse, presence_handler)
    heartbeat = beat(1).to_payload()
    assert bridge.take("kernex/v1/devices/d-1/heartbeat", heartbeat) is False
    assert [(d, type(doc)) for d, doc in queued] == [("d-1", Heartbeat)]
    assert bridge.take("kernex/v1/devices/d-1/presence", Presence(True, 1).to_payload())
    assert bridge.take("kernex/v1/devices/d-1/heartbeat", b"{not json") is False
    assert bridge.take("kernex/v1/devices/d-1/heartbeat", b"x" * 5000) is False
    assert bridge.take("kernex/v1/devices/bad-1/heartbeat", heartbeat) is False
    assert bridge.take("elsewhere/topic", heartbeat) is False
    assert len(queued) == 1
    counts = bridge.stats.counts
    assert counts["received.heartbeat"] == 4 and counts["received.presence"] == 1
    assert counts["dropped.malformed"] == 1
    assert counts["dropped.oversized"] == 1
    assert counts["failed.heartbeat"] == 1
    assert counts["dropped.foreign_topic"] == 1

    # A bug in the gate's own checks is counted, not raised into the client's packet handling.
    class BrokenBudgets:
        def allow(self, device_id: str, channel: Channel) -> bool:
            raise RuntimeError("a bug")

    bridge.budgets = BrokenBudgets()  # type: ignore[assignment]
    assert bridge.take("kernex/v1/devices/d-1/heartbeat", heartbeat) is False
    assert counts["bridge.gate_errors"] == 1


async def test_silent_executions_time_out(app: FastAPI, engine: AsyncEngine) -> None:
    deployment = await make_execution(engine, "to-1")
    sessionmaker = create_sessionmaker(engine)
    hour = dt.timedelta(hours=1)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE deployment_executions SET notified_at = now() - interval '30 minutes'")
        )
    assert await lifecycle.time_out_silent(sessionmaker, silent_for=hour) == []
    # Two hours ago, but told to wait 90 minutes first (the rollout's jitter): not silent yet.
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE deployment_executions SET notified_at = now() - interval '2 hours', "
                "start_delay_s = 5400"
            )
        )
    assert await lifecycle.time_out_silent(sessionmaker, silent_for=hour) == []
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE deployment_executions SET start_delay_s = 0"))
    assert await lifecycle.time_out_silent(sessionmaker, silent_for=hour) == ["to-1"]
    row = await execution(engine, deployment)
    assert (row["state"], row["error_code"]) == ("timed_out", "timed_out")
    assert await deployment_status(engine, deployment) == "completed"


async def test_a_heartbeat_sent_before_the_goodbye_does_not_bring_the_device_back(
    app: FastAPI, engine: AsyncEngine
) -> None:
    await add_devices(engine, "race-1")
    stats = TrafficCounters()
    presence = PresenceTracker(engine, stats)
    ingest = HeartbeatIngest(engine, stats, batch_size=10, interval_s=0.1, capacity=100)
    await presence.apply("race-1", Presence(online=True, session=3))
    await presence.apply("race-1", Presence(online=False, session=3, reason="shutdown"))
    # The last heartbeat of session 3, flushed after the goodbye was applied.
    await ingest.write([received("race-1", beat(9, session=3))])
    assert not (await device(engine, "race-1"))["online"]
    # A heartbeat of a new session (its birth lost) does bring it online.
    await ingest.write([received("race-1", beat(0, session=4))])
    assert (await device(engine, "race-1"))["online"]
    # Swept offline for silence, then heard from again in the same session: online again.
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE devices SET last_seen_at = now() - interval '1 hour'"))
    assert await presence.sweep(dt.timedelta(minutes=5)) == 1
    await ingest.write([received("race-1", beat(1, session=4))])
    assert (await device(engine, "race-1"))["online"]


async def test_devices_finishing_at_once_complete_their_deployment(
    app: FastAPI, engine: AsyncEngine
) -> None:
    # Two executions of one deployment, their final reports handled concurrently (as the
    # bridge does): whichever commits last must see the other's and complete the deployment.
    deployment = await make_execution(engine, "fin-1")
    await add_devices(engine, "fin-2")
    async with create_sessionmaker(engine)() as session:
        session.add(
            DeploymentExecution(
                deployment_id=deployment, device_id="fin-2", state=ExecutionState.NOTIFIED
            )
        )
        await session.commit()
    ingest = ProgressIngest(create_sessionmaker(engine), TrafficCounters(), on_final=_noop)
    await asyncio.gather(
        ingest.apply("fin-1", report(deployment, ProgressState.COMMITTED, 5)),
        ingest.apply("fin-2", report(deployment, ProgressState.COMMITTED, 5)),
    )
    assert await deployment_status(engine, deployment) == "completed"

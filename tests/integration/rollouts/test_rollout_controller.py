"""The rollout controller against the real database, with an injected clock: waves and their
thresholds, soak and approval, rate, abort with automatic rollback, dynamic targets, supersede,
retries, timeouts, windows, two replicas."""

import asyncio
import datetime as dt
import uuid
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.core.errors import InvalidInput
from kernex_backend.deployments import rollout, service
from kernex_backend.deployments.models import ExecutionState
from kernex_backend.deployments.schemas import DeploymentCreate
from kernex_backend.deployments.service import DevicesBusy
from kernex_protocol.manifest import ReleaseManifest, RollbackApproval, sign_rollback
from kernex_protocol.payloads import ErrorCode, ProgressState
from tests.factories import add_bundle, add_devices
from tests.integration.rollouts.harness import Clock, Rollout

pytestmark = pytest.mark.integration

OK = ProgressState.COMMITTED


def devices(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:03d}" for i in range(n)]


async def fleet(engine: AsyncEngine, ids: list[str], **fields: Any) -> uuid.UUID:
    await add_devices(engine, *ids)
    return await add_bundle(engine, version="2.0.0", **fields)


async def test_waves_advance_on_their_threshold_and_not_before(engine: AsyncEngine) -> None:
    ids = devices("wv", 20)
    bundle = await fleet(engine, ids)
    r = Rollout(engine)
    d = await r.create(
        {
            "name": "waves",
            "bundle_id": str(bundle),
            "device_ids": ids,
            "strategy": {"waves": [1, "50%", "100%"], "success_threshold_percent": 90},
        }
    )
    assert sorted(Counter((await r.states(d)).values()).items()) == [("queued", 20)]
    await r.step(d)
    canary = await r.in_state(d, "pending")
    assert len(canary) == 1
    await r.notify(d)
    await r.step(d, times=3)  # nothing more while the canary has not succeeded
    assert len(await r.in_state(d, "queued")) == 19
    assert (await r.row(d))["waiting_for"].startswith("threshold: wave 0 at 0.0%")

    await r.report(d, canary, OK)
    await r.step(d)
    wave1 = await r.in_state(d, "pending")
    assert len(wave1) == 9 and (await r.row(d))["current_wave"] == 1
    await r.notify(d)
    # 8 of 9 is 88.9 %: below 90 %, and with one still working the rollout waits.
    await r.report(d, wave1[:8], OK)
    await r.step(d)
    assert len(await r.in_state(d, "queued")) == 10
    # The last one fails: the wave ended below its threshold, so the rollout pauses.
    await r.report(d, wave1[8:], ProgressState.FAILED, error=ErrorCode.INSTALL_FAILED)
    await r.step(d)
    row = await r.row(d)
    assert row["status"] == "paused" and row["pause_reason"].startswith("wave 1 ended at 88.9%")
    assert len(await r.in_state(d, "queued")) == 10
    # The operator starts the next wave anyway.
    async with r.sessionmaker() as session:
        assert (
            await service.approve(
                session=session, deployment_id=d, actor="op", override_threshold=True
            )
            == 2
        )
    await r.step(d)
    assert len(await r.in_state(d, "pending")) == 10
    await r.notify(d)
    await r.report(d, await r.in_state(d, "notified"), OK)
    await r.step(d)
    assert (await r.row(d))["status"] == "completed"


async def test_soak_then_approval(engine: AsyncEngine) -> None:
    ids = devices("sk", 4)
    bundle = await fleet(engine, ids)
    r = Rollout(engine)
    d = await r.create(
        {
            "name": "soak",
            "bundle_id": str(bundle),
            "device_ids": ids,
            "strategy": {"waves": [1, "100%"], "soak_s": 600, "approval_required": True},
        }
    )
    await r.step(d)
    await r.notify(d)
    await r.report(d, await r.in_state(d, "notified"), OK)
    await r.step(d)
    assert (await r.row(d))["waiting_for"].startswith("soak: wave 1 starts at")
    r.clock.advance(599)
    await r.step(d)
    assert len(await r.in_state(d, "queued")) == 3
    r.clock.advance(2)
    await r.step(d)
    assert (await r.row(d))["waiting_for"].startswith("approval: wave 1")
    assert len(await r.in_state(d, "queued")) == 3
    async with r.sessionmaker() as session:
        await service.approve(
            session=session, deployment_id=d, actor="op", override_threshold=False
        )
    await r.step(d)
    assert len(await r.in_state(d, "pending")) == 3


async def test_rate_is_honoured_and_grows_with_successes(engine: AsyncEngine) -> None:
    ids = devices("rt", 200)
    bundle = await fleet(engine, ids)
    r = Rollout(engine)
    d = await r.create(
        {
            "name": "rate",
            "bundle_id": str(bundle),
            "device_ids": ids,
            "strategy": {"rate": {"per_minute": 30}},
        }
    )
    admitted_at: list[dt.datetime] = []
    for _ in range(150):  # two and a half minutes, one step a second
        await r.step(d)
        admitted_at += [r.clock()] * len(await r.notify(d))
        r.clock.advance(1)
    start = admitted_at[0]
    # Every sliding minute holds at most 30, every tenth of a minute at most 3.
    for t in admitted_at:
        window = [a for a in admitted_at if t <= a < t + dt.timedelta(minutes=1)]
        burst = [a for a in admitted_at if t <= a < t + dt.timedelta(seconds=6)]
        assert len(window) <= 30 and len(burst) <= 3
    first_minutes = [a for a in admitted_at if a < start + dt.timedelta(minutes=2)]
    assert 55 <= len(first_minutes) <= 60  # the rate, within a step's rounding

    # Exponential: doubles after every 10 successes.
    ids2 = devices("rx", 200)
    await add_devices(engine, *ids2)
    d2 = await r.create(
        {
            "name": "rate-grows",
            "bundle_id": str(bundle),
            "device_ids": ids2,
            "strategy": {
                "rate": {"per_minute": 10, "increase_factor": 2, "increase_every_successes": 10}
            },
        }
    )
    before = 0
    for _ in range(60):
        await r.step(d2)
        before += len(await r.notify(d2))
        r.clock.advance(1)
    assert before == 10
    await r.report(d2, await r.in_state(d2, "notified"), OK)  # 10 successes: 20 a minute now
    after = 0
    for _ in range(60):
        await r.step(d2)
        after += len(await r.notify(d2))
        r.clock.advance(1)
    assert after == 20


def approval_for(old: dict[str, Any], from_version: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    manifest = ReleaseManifest(
        name=old["name"],
        version=old["version"],
        device_type="gw",
        sha256=old["sha256"],
        size=10,
        created_at="2026-11-28T00:00:00+00:00",
    )
    approval = RollbackApproval.for_manifest(
        manifest,
        from_version=from_version,
        created_at=dt.datetime.now(dt.UTC),
        valid_for=dt.timedelta(days=7),
    )
    return sign_rollback(approval, key).to_document()


async def test_abort_withdraws_notices_and_rolls_back_by_itself(engine: AsyncEngine) -> None:
    ids = devices("ab", 10)
    new = await fleet(engine, ids)
    old_fields: dict[str, Any] = {"version": "1.0.0", "sha256": "b" * 64}
    old = await add_bundle(engine, **old_fields)
    key = Ed25519PrivateKey.generate()
    r = Rollout(engine)
    d = await r.create(
        {
            "name": "bad release",
            "bundle_id": str(new),
            "device_ids": ids,
            "strategy": {"waves": [4, "100%"], "success_threshold_percent": 50},
            "abort_criteria": [
                {
                    "failure_types": ["failed", "rolled_back"],
                    "threshold_percent": 50,
                    "min_finished": 2,
                }
            ],
            "rollback": {
                "bundle_id": str(old),
                "approval": approval_for({"name": "app", **old_fields}, "2.0.0", key),
            },
        }
    )
    await r.step(d)
    canaries = await r.notify(d)
    assert len(canaries) == 4
    await r.report(d, canaries[:1], OK)
    await r.report(d, canaries[1:2], ProgressState.DOWNLOADING)
    await r.report(d, canaries[2:3], ProgressState.INSTALLING)
    await r.step(d)
    assert (await r.row(d))["status"] == "running"
    await r.report(d, canaries[3:], ProgressState.ROLLED_BACK, error=ErrorCode.HEALTH_CHECK_FAILED)
    await r.step(d)  # 1 of 2 finished failed: 50 % -> abort
    row = await r.row(d)
    assert row["status"] == "aborted" and "rolled_back" in row["pause_reason"]
    states = await r.states(d)
    # The queued and the downloading device are withdrawn; the installing one finishes.
    assert states[canaries[1]] == "canceled" and states[canaries[2]] == "installing"
    assert sum(1 for s in states.values() if s == "canceled") == 7
    assert set(r.withdrawn) == {d2 for d2, s in states.items() if s == "canceled"}
    async with engine.connect() as conn:
        child = (
            (
                await conn.execute(
                    sa.text("SELECT * FROM deployments WHERE rollback_of = :d"), {"d": d}
                )
            )
            .mappings()
            .one()
        )
        actions = (await conn.execute(sa.text("SELECT action FROM audit_events"))).scalars().all()
    assert "deployment.abort" in actions and "deployment.rollback" in actions
    assert child["bundle_id"] == old and child["rollback_approval"]["key_id"]
    assert await r.states(child["id"]) == {canaries[0]: "queued"}
    # The device that was installing succeeds later: it is rolled back too.
    await r.report(d, canaries[2:3], OK)
    await r.controller.tick()
    assert sorted(await r.states(child["id"])) == sorted([canaries[0], canaries[2]])
    assert len(await r.in_state(child["id"], "pending")) == 2


async def test_dynamic_deployment_takes_devices_that_match_later(engine: AsyncEngine) -> None:
    ids = devices("dy", 3)
    bundle = await fleet(engine, ids)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text('UPDATE devices SET tags = \'{"site": "north"}\' WHERE id = ANY(:ids)'),
            {"ids": ids[:2]},
        )
    r = Rollout(engine)
    d = await r.create(
        {
            "name": "dynamic",
            "bundle_id": str(bundle),
            "selector": {"tags": {"site": "north"}},
            "dynamic": True,
            "max_devices": 3,
        }
    )
    await r.step(d)
    assert sorted(await r.in_state(d, "pending")) == ids[:2]
    await r.notify(d)
    await r.report(d, ids[:2], OK)
    await r.step(d)
    assert (await r.row(d))["status"] == "running"  # open for devices matching later
    # One device is re-tagged, one newly registered: the cap (3) lets only one in.
    await add_devices(engine, "dy-new")
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE devices SET tags = '{\"site\": \"north\"}' WHERE id IN ('dy-002', 'dy-new')"
            )
        )
    r.clock.advance(11)
    await r.step(d)
    joined = set(await r.states(d)) - set(ids[:2])
    assert len(joined) == 1 and joined <= {"dy-002", "dy-new"}
    await r.notify(d)
    await r.report(d, sorted(joined), OK)
    await r.step(d)
    assert (await r.row(d))["status"] == "completed"  # its cap is reached


async def test_busy_devices_are_refused_unless_superseded(engine: AsyncEngine) -> None:
    ids = devices("sp", 3)
    bundle = await fleet(engine, ids)
    r = Rollout(engine)
    first = await r.create({"name": "first", "bundle_id": str(bundle), "device_ids": ids})
    await r.step(first)
    await r.notify(first)
    with pytest.raises(DevicesBusy) as refused:
        await r.create({"name": "second", "bundle_id": str(bundle), "device_ids": ids[:2]})
    assert refused.value.extensions["blocking_deployments"] == [str(first)]
    second = await r.create(
        {"name": "second", "bundle_id": str(bundle), "device_ids": ids[:2], "supersede": True}
    )
    old = await r.execution(first, ids[0])
    assert (old["state"], old["error_code"]) == ("canceled", "superseded")
    assert (await r.execution(first, ids[2]))["state"] == "notified"
    await r.step(second)
    assert sorted(await r.in_state(second, "pending")) == ids[:2]
    # The first deployment ends normally once its last device finishes.
    await r.report(first, ids[2:], OK)
    assert (await r.row(first))["status"] == "completed"


async def test_retries_back_off_and_count_attempts(engine: AsyncEngine) -> None:
    ids = devices("rty", 1)
    bundle = await fleet(engine, ids)
    r = Rollout(engine)
    d = await r.create(
        {
            "name": "retries",
            "bundle_id": str(bundle),
            "device_ids": ids,
            "strategy": {"retry": {"max_retries": 2, "backoff_base_s": 60, "backoff_cap_s": 600}},
        }
    )
    for attempt, wait in [(1, 60), (2, 120)]:
        await r.step(d)
        assert await r.notify(d) == ids
        execution = await r.execution(d, ids[0])
        assert execution["attempt"] == attempt
        await r.report(
            d, ids, ProgressState.FAILED, attempt=attempt, error=ErrorCode.DOWNLOAD_FAILED
        )
        execution = await r.execution(d, ids[0])
        assert execution["state"] == "queued"
        # Queued by the ingest at its own (real) time: the backoff counts from then.
        delay = (execution["not_before"] - execution["updated_at"]).total_seconds()
        assert 0.8 * wait <= delay <= 1.2 * wait
        r.clock.now = execution["updated_at"] + dt.timedelta(seconds=0.7 * wait)
        await r.step(d)
        assert await r.in_state(d, "queued") == ids  # still backing off
        # A late report about the earlier attempt changes nothing.
        await r.report(d, ids, OK, attempt=attempt)
        assert (await r.execution(d, ids[0]))["state"] == "queued"
        r.clock.advance(0.6 * wait)
    await r.step(d)
    assert await r.notify(d) == ids
    assert (await r.execution(d, ids[0]))["attempt"] == 3
    await r.report(d, ids, ProgressState.FAILED, attempt=3, error=ErrorCode.DOWNLOAD_FAILED)
    assert (await r.execution(d, ids[0]))["state"] == "failed"  # no retries left
    assert (await r.row(d))["status"] == "completed"
    assert r.stats.counts["progress.stale_attempt"] == 2
    # A manual retry queues it again at once.
    async with r.sessionmaker() as session:
        assert (
            await service.retry(
                session=session, deployment_id=d, actor="op", states=[ExecutionState.FAILED]
            )
            == 1
        )
    await r.step(d)
    assert (await r.row(d))["status"] == "running"
    assert (await r.execution(d, ids[0]))["attempt"] == 4


async def test_devices_that_never_start_or_never_finish_time_out(engine: AsyncEngine) -> None:
    ids = devices("to", 2)
    bundle = await fleet(engine, ids)
    r = Rollout(engine)
    d = await r.create(
        {
            "name": "timeouts",
            "bundle_id": str(bundle),
            "device_ids": ids,
            "strategy": {"timeouts": {"not_started_s": 120, "in_progress_s": 600}},
        }
    )
    await r.step(d)
    await r.notify(d)
    await r.report(d, ids[1:], ProgressState.DOWNLOADING)
    r.clock.advance(119)
    await r.step(d)
    assert await r.in_state(d, "timed_out") == []
    r.clock.advance(2)
    await r.step(d)
    assert await r.in_state(d, "timed_out") == ids[:1]
    assert (await r.execution(d, ids[0]))["error_code"] == "not_started"
    r.clock.advance(600)
    await r.step(d)
    assert (await r.execution(d, ids[1]))["error_code"] == "in_progress_timeout"
    assert sorted(r.withdrawn) == ids
    assert (await r.row(d))["status"] == "completed"


async def test_maintenance_window_with_an_injected_clock(engine: AsyncEngine) -> None:
    ids = devices("mw", 3)
    bundle = await fleet(engine, ids)
    # 00:30 UTC is 01:30 in Berlin in December: the 02:00-03:00 window is not open yet.
    r = Rollout(engine, clock=Clock(dt.datetime(2026, 12, 2, 0, 30, tzinfo=dt.UTC)))
    window = {"cron": "0 2 * * *", "duration_s": 3600, "timezone": "Europe/Berlin"}
    d = await r.create(
        {
            "name": "nightly",
            "bundle_id": str(bundle),
            "device_ids": ids,
            "strategy": {"schedule": {"windows": [window]}, "rate": {"per_minute": 1}},
        }
    )
    await r.step(d)
    assert await r.in_state(d, "pending") == []
    assert (await r.row(d))["waiting_for"] == (
        "window: the next maintenance window opens 2026-12-02T01:00+00:00"
    )
    r.clock.advance(31 * 60)  # 02:01 Berlin
    await r.step(d)
    assert len(await r.notify(d)) == 1
    r.clock.advance(60 * 60)  # 03:01 Berlin: closed, the others wait for tomorrow
    await r.step(d)
    assert await r.in_state(d, "pending") == []
    assert len(await r.in_state(d, "queued")) == 2


async def test_two_controller_replicas_admit_nobody_twice(engine: AsyncEngine) -> None:
    ids = devices("rp", 300)
    bundle = await fleet(engine, ids)
    r = Rollout(engine)
    other = r.make_controller()
    d = await r.create(
        {
            "name": "replicas",
            "bundle_id": str(bundle),
            "device_ids": ids,
            "strategy": {"waves": ["10%", "100%"], "rate": {"per_minute": 100}},
        }
    )
    for _ in range(20):
        await asyncio.gather(r.controller.step(d), other.step(d), r.controller.tick(), other.tick())
    async with engine.connect() as conn:
        attempts = (
            await conn.execute(
                sa.text(
                    "SELECT attempt, count(*) FROM deployment_executions "
                    "WHERE deployment_id = :d AND state = 'pending' GROUP BY attempt"
                ),
                {"d": d},
            )
        ).all()
    # Wave 0 is 30 devices, the rate 100 a minute in bursts of 10: 10 admitted, each once.
    assert [tuple(a) for a in attempts] == [(1, 10)]


async def test_preview_counts_equal_what_the_deployment_does(engine: AsyncEngine) -> None:
    ids = devices("pv", 30)
    bundle = await fleet(engine, ids)
    await add_devices(engine, "pv-sensor", device_type="sensor")
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE devices SET last_seen_at = now() - interval '30 days' WHERE id = 'pv-000'"
            )
        )
        await conn.execute(
            sa.text("UPDATE devices SET status = 'decommissioned' WHERE id = 'pv-001'")
        )
    r = Rollout(engine)
    busy = await r.create({"name": "busy", "bundle_id": str(bundle), "device_ids": ["pv-002"]})
    body = {
        "name": "everyone",
        "bundle_id": str(bundle),
        "selector": {"all": True},
        "strategy": {"waves": [1, "10%", "100%"]},
    }
    async with r.sessionmaker() as session:
        preview = await service.preview(
            session=session, request=DeploymentCreate.model_validate(body)
        )
    reasons = {e.reason: e.devices for e in preview.excluded}
    assert reasons["offline"] == ["pv-000"] and reasons["decommissioned"] == ["pv-001"]
    assert "pv-sensor" in reasons["wrong_type"] and reasons["busy"] == ["pv-002"]
    assert preview.devices == 27
    assert [(w.size, w.cumulative) for w in preview.waves] == [(1, 1), (2, 3), (24, 27)]
    with pytest.raises(DevicesBusy):
        await r.create(body)
    d = await r.create({**body, "supersede": True})
    assert len(await r.states(d)) == preview.devices + 1  # the busy one taken over
    async with r.sessionmaker() as session:
        again = await service.preview(
            session=session,
            request=DeploymentCreate.model_validate({**body, "selector": {"tags": {"x": "y"}}}),
        )
    assert again.devices == 0
    with pytest.raises(InvalidInput):
        await r.create({**body, "selector": {"tags": {"x": "y"}}})
    assert (await r.execution(busy, "pv-002"))["error_code"] == "superseded"


async def test_start_and_end_times(engine: AsyncEngine) -> None:
    ids = devices("se", 3)
    bundle = await fleet(engine, ids)
    clock = Clock()
    r = Rollout(engine, clock=clock)
    start = clock() + dt.timedelta(hours=1)
    end = start + dt.timedelta(hours=1)
    d = await r.create(
        {
            "name": "timed",
            "bundle_id": str(bundle),
            "device_ids": ids,
            "strategy": {
                "rate": {"per_minute": 1},
                "schedule": {"start_at": start.isoformat(), "end_at": end.isoformat()},
            },
        }
    )
    await r.step(d)
    assert (await r.row(d))["status"] == "scheduled"
    assert await r.in_state(d, "pending") == []
    clock.advance(3600)
    await r.step(d)
    assert (await r.row(d))["status"] == "running" and len(await r.notify(d)) == 1
    clock.advance(3600)  # the end: stop adding; the notified device finishes
    await r.step(d)
    assert len(await r.in_state(d, "canceled")) == 2
    assert (await r.row(d))["status"] == "running"
    await r.report(d, await r.in_state(d, "notified"), OK)
    assert (await r.row(d))["status"] == "completed"


async def test_a_step_stopped_at_its_cap_has_the_next_one_come_at_once(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A step admits at most ADMIT_BATCH devices; when it stops there (and not at a rate, a
    # window or a wave), the controller wakes itself instead of waiting for its next tick.
    monkeypatch.setattr(rollout, "ADMIT_BATCH", 4)
    ids = devices("cap", 10)
    bundle = await fleet(engine, ids)
    r = Rollout(engine)
    d = await r.create({"name": "cap", "bundle_id": str(bundle), "device_ids": ids})
    steps = []
    for _ in range(3):
        r.controller.wake_event.clear()
        await r.step(d)
        steps.append((len(await r.in_state(d, "pending")), r.controller.wake_event.is_set()))
    assert steps == [(4, True), (8, True), (10, False)]
    # A rate below the cap stops a step too, but that is the deployment's limit: no wake.
    ids = devices("capr", 10)
    bundle = await fleet(engine, ids, name="rated")
    d = await r.create(
        {
            "name": "rated",
            "bundle_id": str(bundle),
            "device_ids": ids,
            "strategy": {"rate": {"per_minute": 20}},
        }
    )
    r.controller.wake_event.clear()
    await r.step(d)
    assert len(await r.in_state(d, "pending")) == 2  # a tenth of a minute's 20
    assert not r.controller.wake_event.is_set()

"""The notifier against real PostgreSQL and our Mosquitto: PENDING executions of running
deployments get one signed, retained notice each and become NOTIFIED, batch after batch."""

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.core.config import MqttSettings, Settings
from kernex_backend.core.db import create_sessionmaker
from kernex_backend.core.messaging import DevicePublisher, TrafficCounters
from kernex_backend.deployments.models import DeploymentStatus, ExecutionState
from kernex_backend.deployments.notices import NoticeService
from kernex_devstack.broker import EmbeddedBroker
from kernex_protocol.manifest import key_id
from kernex_protocol.payloads import Notice
from kernex_protocol.topics import Channel, subscription_for_all, topic_for
from tests.conftest import Connector
from tests.factories import add_bundle, add_deployment, add_devices
from tests.integration.conftest import storage_of
from tests.integration.fleet.conftest import bridge_settings, connected_bridge
from tests.integration.mqtt_client import Identity, Received

pytestmark = pytest.mark.integration

BATCH = 4  # small batches, so one call takes many and both lanes take turns


async def states(engine: AsyncEngine, deployment: uuid.UUID) -> dict[str, tuple[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT device_id, state, notified_at FROM deployment_executions"
                " WHERE deployment_id = :d"
            ),
            {"d": deployment},
        )
        return {row.device_id: (row.state, row.notified_at) for row in rows}


def notice_service(
    app: FastAPI,
    settings: Settings,
    engine: AsyncEngine,
    bridge: DevicePublisher,
    mqtt: MqttSettings,
    *,
    stats: TrafficCounters | None = None,
    key: Ed25519PrivateKey | None = None,
) -> NoticeService:
    """The notice service as the backend wires it, publishing through `bridge`."""
    return NoticeService(
        sessionmaker=create_sessionmaker(engine),
        publisher=bridge,
        storage=storage_of(app),
        settings=settings.model_copy(update={"mqtt": mqtt}),
        stats=stats or TrafficCounters(),
        signing_key=key or Ed25519PrivateKey.generate(),
    )


def notices_by_device(messages: list[Received], devices: list[str]) -> dict[str, list[Notice]]:
    """The notices on these devices' topics (the broker is shared: other tests' devices keep
    theirs retained)."""
    topics = {topic_for(device_id, Channel.DEPLOYMENT): device_id for device_id in devices}
    seen: dict[str, list[Notice]] = {}
    for message in messages:
        if message.topic in topics and message.payload:  # empty: a notice withdrawn
            notice = Notice.parse(message.payload)
            assert notice.device_id == topics[message.topic]
            seen.setdefault(notice.device_id, []).append(notice)
    return seen


async def test_every_pending_execution_is_notified_once_in_batches(
    app: FastAPI,
    settings: Settings,
    engine: AsyncEngine,
    broker: EmbeddedBroker,
    mqtt_connect: Connector,
    observer_identity: Identity,
) -> None:
    run = uuid.uuid4().hex[:6]
    running = [f"nt-{run}-{i:02d}" for i in range(23)]  # 5 full batches and a partial one
    paused = [f"nt-{run}-p{i}" for i in range(3)]
    await add_devices(engine, *running, *paused)
    bundle = await add_bundle(engine)
    deployment = await add_deployment(
        engine, dict.fromkeys(running, ExecutionState.PENDING), bundle_id=bundle
    )
    held_back = await add_deployment(
        engine,
        dict.fromkeys(paused, ExecutionState.PENDING),
        bundle_id=bundle,
        status=DeploymentStatus.PAUSED,
    )
    observer = mqtt_connect(observer_identity)
    assert observer.connected.wait(10), observer.error
    observer.subscribe(subscription_for_all(Channel.DEPLOYMENT))

    mqtt = bridge_settings(
        broker,
        notify_batch_size=BATCH,
        publish_concurrency=3,
    )
    key = Ed25519PrivateKey.generate()
    async with connected_bridge(broker, mqtt) as bridge:
        notices = notice_service(app, settings, engine, bridge, mqtt, key=key)
        assert await notices.publish_pending() == len(running)
        assert await notices.publish_pending() == 0  # nothing is left, nothing sent twice

    after = await states(engine, deployment)
    assert {state for state, _ in after.values()} == {"notified"}
    assert all(notified_at is not None for _, notified_at in after.values())
    assert {state for state, _ in (await states(engine, held_back)).values()} == {"pending"}

    seen = notices_by_device(observer.drain(wait=1.0), running + paused)
    assert sorted(seen) == sorted(running)  # the paused deployment's devices got nothing
    trusted = {key_id(key.public_key()): key.public_key()}
    for device_id, received in seen.items():
        assert len(received) == 1, (device_id, received)
        assert received[0].deployment_id == str(deployment)
        received[0].verify(trusted)  # raises unless signed with the notice key


async def test_reconcile_republishes_live_notices_and_clears_ended_ones_in_batches(
    app: FastAPI,
    settings: Settings,
    engine: AsyncEngine,
    broker: EmbeddedBroker,
    mqtt_connect: Connector,
    observer_identity: Identity,
) -> None:
    run = uuid.uuid4().hex[:6]
    live = [f"rc-{run}-l{i}" for i in range(9)]  # more than two batches
    ended = [f"rc-{run}-e{i}" for i in range(3)]
    pending = [f"rc-{run}-p{i}" for i in range(2)]
    await add_devices(engine, *live, *ended, *pending)
    bundle = await add_bundle(engine)
    deployment = await add_deployment(
        engine,
        {
            **dict.fromkeys(live, ExecutionState.NOTIFIED),
            **dict.fromkeys(ended, ExecutionState.SUCCEEDED),
            **dict.fromkeys(pending, ExecutionState.PENDING),
        },
        bundle_id=bundle,
    )
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE deployment_executions SET finished_at = now()"
                " WHERE deployment_id = :d AND state = 'succeeded'"
            ),
            {"d": deployment},
        )
    observer = mqtt_connect(observer_identity)
    assert observer.connected.wait(10), observer.error
    observer.subscribe(subscription_for_all(Channel.DEPLOYMENT))

    mqtt = bridge_settings(broker, notify_batch_size=BATCH, publish_concurrency=3)
    stats = TrafficCounters()
    async with connected_bridge(broker, mqtt) as bridge:
        notices = notice_service(app, settings, engine, bridge, mqtt, stats=stats)
        # Other tests' executions share the database: at least ours are reconciled.
        assert await notices.reconcile() >= len(live) + len(ended)

    messages = observer.drain(wait=1.0)
    seen = notices_by_device(messages, live + ended + pending)
    assert sorted(seen) == sorted(live)  # PENDING ones are left to the notifier
    assert all(len(received) == 1 for received in seen.values())
    assert {n[0].deployment_id for n in seen.values()} == {str(deployment)}
    cleared = {
        m.topic for m in messages if not m.payload and m.topic.split("/")[3] in ended + pending
    }
    assert cleared == {topic_for(device_id, Channel.DEPLOYMENT) for device_id in ended}
    assert stats.counts["notices.cleared"] >= len(ended)
    # Still live, still NOTIFIED: a reconcile changes no execution.
    states_after = await states(engine, deployment)
    assert {states_after[d][0] for d in live} == {"notified"}

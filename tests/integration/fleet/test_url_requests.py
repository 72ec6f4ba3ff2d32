"""URL requests against real PostgreSQL, a real S3 server and our Mosquitto: a device with a live
execution gets a fresh URL on its url/response topic, at most `url_requests_per_minute` a
minute; the rest are counted as rate-limited and get no answer, and another device's requests
are not held back by it."""

import uuid

import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.core.config import Settings
from kernex_backend.core.db import create_sessionmaker
from kernex_backend.core.messaging import TrafficCounters
from kernex_backend.deployments.models import ExecutionState
from kernex_backend.deployments.url_requests import UrlRequests
from kernex_devstack.broker import EmbeddedBroker
from kernex_protocol.payloads import UrlRequest, UrlResponse
from kernex_protocol.topics import Channel, topic_for
from tests.conftest import Connector
from tests.factories import add_bundle, add_deployment, add_devices
from tests.integration.conftest import storage_of
from tests.integration.fleet.conftest import bridge_settings, connected_bridge
from tests.integration.mqtt_client import Identity

pytestmark = pytest.mark.integration

PER_MINUTE = 2


async def test_url_requests_are_answered_up_to_the_per_device_limit(
    app: FastAPI,
    settings: Settings,
    engine: AsyncEngine,
    broker: EmbeddedBroker,
    mqtt_connect: Connector,
    observer_identity: Identity,
) -> None:
    run = uuid.uuid4().hex[:6]
    busy, calm = f"url-{run}-busy", f"url-{run}-calm"
    await add_devices(engine, busy, calm)
    deployment = await add_deployment(
        engine,
        {busy: ExecutionState.NOTIFIED, calm: ExecutionState.DOWNLOADING},
        bundle_id=await add_bundle(engine),
    )
    observer = mqtt_connect(observer_identity)
    assert observer.connected.wait(10), observer.error
    for device_id in (busy, calm):
        observer.subscribe(topic_for(device_id, Channel.URL_RESPONSE))

    mqtt = bridge_settings(
        broker,
        url_requests_per_minute=PER_MINUTE,
    )
    stats = TrafficCounters()
    async with connected_bridge(broker, mqtt) as bridge:
        requests = UrlRequests(
            sessionmaker=create_sessionmaker(engine),
            publisher=bridge,
            storage=storage_of(app),
            settings=settings.model_copy(update={"mqtt": mqtt}),
            stats=stats,
        )
        for i in range(5):
            await requests.answer(busy, UrlRequest(f"req-{i}", str(deployment)))
        await requests.answer(calm, UrlRequest("req-calm", str(deployment)))

    answers: dict[str, list[UrlResponse]] = {}
    for message in observer.drain(wait=1.0):
        response = UrlResponse.parse(message.payload)
        answers.setdefault(message.topic, []).append(response)
    to_busy = answers[topic_for(busy, Channel.URL_RESPONSE)]
    assert [r.request_id for r in to_busy] == ["req-0", "req-1"]
    assert all(r.url and r.url.startswith("http") and r.error is None for r in to_busy)
    assert [r.request_id for r in answers[topic_for(calm, Channel.URL_RESPONSE)]] == ["req-calm"]
    assert stats.counts["url_requests.answered"] == 3
    assert stats.counts["url_requests.rate_limited"] == 3

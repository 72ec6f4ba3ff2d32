"""Webhooks against a real HTTP receiver: configured through the API (admin only, targets
checked), events written in the transaction of each change, delivered signed, retried with
backoff while the receiver is down so that nothing is lost, and disabled after repeated
failures until an operator enables them again."""

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kernex_backend.core.config import Settings
from kernex_backend.core.messaging import TrafficCounters
from kernex_backend.core.runtime import runtime_of
from kernex_backend.devices.presence import PresenceTracker
from kernex_protocol.payloads import Presence
from tests.conftest import make_settings
from tests.integration.webhooks.receiver import Receiver

FAST = {
    "interval_s": 0.1,
    "backoff_min_s": 0.2,
    "backoff_max_s": 0.5,
    "max_attempts": 50,
    "disable_after_failures": 50,
    "allow_private_targets": True,
}


@pytest.fixture
def webhook_settings() -> dict[str, Any]:
    return dict(FAST)


@pytest.fixture
def settings(database_url: str, webhook_settings: dict[str, Any]) -> Settings:
    return make_settings(database_url, webhooks=webhook_settings)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


async def wait_until(check: Any, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def subscribe(
    client: httpx.AsyncClient, headers: dict[str, str], receiver: Receiver, *types: str
) -> dict[str, Any]:
    created = await client.post(
        "/api/v1/webhooks",
        json={"name": "ops", "url": receiver.url, "event_types": list(types)},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    receiver.secret = body["secret"]
    return body


async def test_api_is_admin_only_and_never_shows_the_secret_again(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    write_headers: dict[str, str],
    receiver: Receiver,
) -> None:
    body = {"name": "ops", "url": receiver.url, "event_types": ["device.online"]}
    assert (
        await client.post("/api/v1/webhooks", json=body, headers=write_headers)
    ).status_code == 403
    webhook = await subscribe(client, admin_headers, receiver, "device.online")
    assert len(webhook["secret"]) >= 32
    listed = (await client.get("/api/v1/webhooks", headers=admin_headers)).json()
    assert listed["count"] == 1 and "secret" not in listed["data"][0]
    one = await client.get(f"/api/v1/webhooks/{webhook['id']}", headers=admin_headers)
    assert "secret" not in one.json()
    bad = await client.post(
        "/api/v1/webhooks",
        json={**body, "event_types": ["device.exploded"]},
        headers=admin_headers,
    )
    assert bad.status_code == 422
    gone = await client.delete(f"/api/v1/webhooks/{webhook['id']}", headers=admin_headers)
    assert gone.status_code == 204
    missing = await client.get(f"/api/v1/webhooks/{webhook['id']}", headers=admin_headers)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "webhook_settings", [{**FAST, "allow_private_targets": False}], indirect=False
)
@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8000/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://user:pw@example.invalid/hook", "credentials"),
        ("https://\u0104[x/hook", "does not parse"),  # found by schemathesis: was a 500
        ("http://example.invalid:99999/hook", "does not parse"),
    ],
)
async def test_targets_that_reach_our_own_host_are_refused(
    client: httpx.AsyncClient, admin_headers: dict[str, str], url: str, why: str
) -> None:
    answer = await client.post(
        "/api/v1/webhooks",
        json={"name": "x", "url": url, "event_types": ["device.online"]},
        headers=admin_headers,
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["type"].endswith("webhook-target-refused")
    assert why.split("-", maxsplit=1)[0] in answer.json()["detail"]


async def test_receiver_down_then_back_loses_nothing_and_every_signature_verifies(
    app: Any, client: httpx.AsyncClient, admin_headers: dict[str, str], receiver: Receiver
) -> None:
    webhook = await subscribe(client, admin_headers, receiver, "device.registered", "device.online")
    receiver.failing = True
    for n in range(5):
        created = await client.post(
            "/api/v1/devices",
            json={"id": f"hooked-{n}", "device_type": "gateway"},
            headers=admin_headers,
        )
        assert created.status_code == 201
    # Presence is applied with plain SQL on its own connection: its event is emitted there.
    tracker = PresenceTracker(runtime_of(app).engine, TrafficCounters())
    await tracker.apply("hooked-0", Presence(online=True, session=1))
    await wait_until(lambda: receiver.refused >= 6)
    assert receiver.received == []

    receiver.failing = False
    await wait_until(lambda: len({r.event_id for r in receiver.received}) == 6)
    assert all(r.signature_ok for r in receiver.received)
    registered = sorted(
        r.body["subject"] for r in receiver.received if r.event_type == "device.registered"
    )
    assert registered == [f"hooked-{n}" for n in range(5)]
    online = [r.body for r in receiver.received if r.event_type == "device.online"]
    assert online[0]["data"]["device_id"] == "hooked-0" and online[0]["data"]["session"] == 1

    log = await client.get(f"/api/v1/webhooks/{webhook['id']}/deliveries", headers=admin_headers)
    rows = log.json()["data"]
    assert {row["state"] for row in rows} == {"delivered"}
    assert max(row["attempts"] for row in rows) > 1  # retried while the receiver was down
    assert {row["last_status"] for row in rows} == {204}


async def test_events_nobody_subscribed_to_are_not_written(
    app: Any, client: httpx.AsyncClient, admin_headers: dict[str, str], receiver: Receiver
) -> None:
    await subscribe(client, admin_headers, receiver, "device.registered")
    tracker = PresenceTracker(runtime_of(app).engine, TrafficCounters())
    await client.post(
        "/api/v1/devices", json={"id": "quiet", "device_type": "gateway"}, headers=admin_headers
    )
    await tracker.apply("quiet", Presence(online=True, session=1))
    await wait_until(lambda: len(receiver.received) == 1)
    await asyncio.sleep(0.5)
    assert [r.event_type for r in receiver.received] == ["device.registered"]


@pytest.mark.parametrize("webhook_settings", [{**FAST, "disable_after_failures": 3}])
async def test_a_target_that_keeps_failing_is_disabled_until_enabled_again(
    client: httpx.AsyncClient, admin_headers: dict[str, str], receiver: Receiver
) -> None:
    webhook = await subscribe(client, admin_headers, receiver, "device.registered")
    receiver.failing = True
    await client.post(
        "/api/v1/devices", json={"id": "lost-1", "device_type": "gateway"}, headers=admin_headers
    )
    url = f"/api/v1/webhooks/{webhook['id']}"

    async def enabled() -> bool:
        return bool((await client.get(url, headers=admin_headers)).json()["enabled"])

    for _ in range(200):
        if not await enabled():
            break
        await asyncio.sleep(0.1)
    state = (await client.get(url, headers=admin_headers)).json()
    assert state["enabled"] is False
    assert "3 failed deliveries in a row" in state["disabled_reason"]
    refused = receiver.refused
    await asyncio.sleep(1.0)
    assert receiver.refused == refused  # no more attempts while disabled

    receiver.failing = False
    again = await client.patch(url, json={"enabled": True}, headers=admin_headers)
    assert again.json()["enabled"] and again.json()["consecutive_failures"] == 0
    await wait_until(lambda: [r.body["subject"] for r in receiver.received] == ["lost-1"])


async def test_outbox_keeps_only_what_is_still_needed(
    app: Any, client: httpx.AsyncClient, admin_headers: dict[str, str], receiver: Receiver
) -> None:
    """Events nobody subscribed to are pruned at once; delivered ones after retention_days, with
    their delivery log; an old event whose delivery is still pending stays."""
    import sqlalchemy as sa

    from kernex_backend.core.config import WebhookSettings
    from kernex_backend.webhooks.dispatcher import WebhookDispatcher

    engine = runtime_of(app).engine
    await subscribe(client, admin_headers, receiver, "device.registered")
    for name in ("kept-1", "kept-2"):
        created = await client.post(
            "/api/v1/devices", json={"id": name, "device_type": "gw"}, headers=admin_headers
        )
        assert created.status_code == 201
    await wait_until(lambda: len(receiver.received) == 2)

    async def rows(sql: str) -> list[Any]:
        async with engine.connect() as conn:
            return list((await conn.execute(sa.text(sql))).all())

    # Events of types nobody wants, as the ORM path writes them whatever the subscriptions.
    async with engine.begin() as conn:
        for subject in ("d-1", "d-2", "d-3"):
            await conn.execute(
                sa.text(
                    "INSERT INTO webhook_events (event_id, event_type, subject, data, fanned_out,"
                    " created_at) VALUES (gen_random_uuid(), 'deployment.started', :s, '{}',"
                    " false, now())"
                ),
                {"s": subject},
            )

    async def settled() -> bool:
        pending = await rows("SELECT 1 FROM webhook_events WHERE NOT fanned_out")
        return not pending

    for _ in range(100):
        if await settled():
            break
        await asyncio.sleep(0.1)
    prune = WebhookDispatcher(engine, WebhookSettings(retention_days=1)).prune
    unwanted = await rows(
        "SELECT id FROM webhook_events e WHERE NOT EXISTS "
        "(SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)"
    )
    assert len(unwanted) == 3
    assert await prune() == 3
    assert len(await rows("SELECT id FROM webhook_events")) == 2  # the two delivered ones

    # Age both; one delivery goes back to pending (its webhook was disabled, say).
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE webhook_events SET created_at = now() - interval '2 days'")
        )
        await conn.execute(
            sa.text(
                "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = now() "
                "+ interval '1 day' WHERE id = (SELECT min(id) FROM webhook_deliveries)"
            )
        )
    assert await prune() == 1
    left = await rows("SELECT d.state FROM webhook_deliveries d")
    assert [state for (state,) in left] == ["pending"]
    assert len(await rows("SELECT id FROM webhook_events")) == 1

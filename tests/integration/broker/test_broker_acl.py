"""Per-device ACLs on the real broker: each device reaches its own topics and nothing else.

"Nothing arrives" is proven with barriers: after a message that must be dropped, the same
connection sends one that must arrive. Mosquitto keeps each connection's order, so once the
barrier is in, the dropped message would already have been seen.
"""

import uuid

import pytest

from kernex_devstack.broker import EmbeddedBroker
from kernex_protocol.topics import Channel, topic_for
from tests.conftest import Connector, IdentityFactory
from tests.integration.mqtt_client import Probe


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def assert_nothing_retained(reader: Probe, topic: str) -> None:
    """Subscribing afresh delivers a topic's retained message at once, if there is one."""
    reader.drain()
    reader.subscribe(topic)
    assert [m for m in reader.drain(wait=0.5) if m.topic == topic] == []


def device(issue: IdentityFactory, mqtt_connect: Connector, name: str) -> Probe:
    probe = mqtt_connect(issue(name))
    assert probe.connected.is_set(), probe.error
    return probe


def test_device_uses_its_own_topics_and_finds_its_retained_notice(
    issue: IdentityFactory, mqtt_connect: Connector, backend: Probe
) -> None:
    name = unique("own")
    notice = topic_for(name, Channel.DEPLOYMENT)
    # The notice is published while the device is away; it must be waiting when it subscribes.
    backend.publish(notice, b'{"v":1,"deployment":"d1"}', retain=True)
    backend.subscribe("kernex/v1/devices/+/heartbeat")
    backend.subscribe("kernex/v1/devices/+/progress")

    dev = device(issue, mqtt_connect, name)
    dev.subscribe(notice)
    got = dev.wait_for(notice, b'{"v":1,"deployment":"d1"}')
    assert got[-1].retain

    dev.publish(topic_for(name, Channel.HEARTBEAT), b"hb")
    backend.wait_for(topic_for(name, Channel.HEARTBEAT), b"hb")
    dev.publish(topic_for(name, Channel.PROGRESS), b"progress")
    backend.wait_for(topic_for(name, Channel.PROGRESS), b"progress")

    url_response = topic_for(name, Channel.URL_RESPONSE)
    dev.subscribe(url_response)
    backend.publish(url_response, b"url")
    dev.wait_for(url_response, b"url")
    backend.publish(notice, b"", retain=True)  # clear the retained notice


@pytest.mark.reliability(
    "Hostile devices",
    "publishing on another device's topics",
    "nothing reaches them; the publisher's session is unaffected for others",
)
def test_cross_device_publish_is_dropped(
    issue: IdentityFactory, mqtt_connect: Connector, backend: Probe
) -> None:
    a_name, b_name = unique("a"), unique("b")
    a = device(issue, mqtt_connect, a_name)
    b = device(issue, mqtt_connect, b_name)
    b.subscribe(topic_for(b_name, Channel.DEPLOYMENT))
    b.subscribe(topic_for(b_name, Channel.URL_RESPONSE))
    backend.subscribe("kernex/v1/devices/+/heartbeat")

    # a forges b's heartbeat and writes b's deployment and url/response topics.
    a.publish(topic_for(b_name, Channel.HEARTBEAT), b"forged")
    a.publish(topic_for(b_name, Channel.DEPLOYMENT), b"evil-notice", retain=True)
    a.publish(topic_for(b_name, Channel.URL_RESPONSE), b"evil-url")
    a.publish(topic_for(a_name, Channel.HEARTBEAT), b"barrier")

    seen = backend.wait_for(topic_for(a_name, Channel.HEARTBEAT), b"barrier")
    assert all(m.payload != b"forged" for m in seen)
    backend.publish(topic_for(b_name, Channel.URL_RESPONSE), b"barrier-b")
    seen_by_b = b.wait_for(topic_for(b_name, Channel.URL_RESPONSE), b"barrier-b")
    assert [m.payload for m in seen_by_b] == [b"barrier-b"]

    # Nothing was retained on b's deployment topic either: a new subscription by the backend,
    # which may read it, would be handed a retained message at once.
    assert_nothing_retained(backend, topic_for(b_name, Channel.DEPLOYMENT))


@pytest.mark.reliability(
    "Hostile devices",
    "wildcard, foreign and $SYS subscriptions",
    "no foreign or broker message delivered",
)
def test_cross_device_and_wildcard_subscriptions_get_nothing_foreign(
    issue: IdentityFactory, mqtt_connect: Connector, backend: Probe
) -> None:
    a_name, b_name = unique("a"), unique("b")
    a = device(issue, mqtt_connect, a_name)
    device(issue, mqtt_connect, b_name)
    for pattern in (
        "#",
        "kernex/#",
        "kernex/v1/devices/+/deployment",
        topic_for(b_name, Channel.DEPLOYMENT),
        "$SYS/#",
    ):
        a.client.subscribe(pattern, 1)
    a.subscribe(topic_for(a_name, Channel.DEPLOYMENT))

    backend.publish(topic_for(b_name, Channel.DEPLOYMENT), b"for-b", retain=False)
    backend.publish(topic_for(b_name, Channel.URL_RESPONSE), b"for-b-url")
    backend.publish(topic_for(a_name, Channel.DEPLOYMENT), b"barrier")
    seen = a.wait_for(topic_for(a_name, Channel.DEPLOYMENT), b"barrier")
    assert all(m.topic.startswith(f"kernex/v1/devices/{a_name}/") for m in seen), seen
    assert not any(m.topic.startswith("$SYS") for m in a.drain(wait=0.3))


@pytest.mark.reliability(
    "Hostile devices",
    "writing its own downlink (notice) topic",
    "the retained notice unchanged",
)
def test_device_cannot_write_its_own_deployment_topic(
    issue: IdentityFactory, mqtt_connect: Connector, backend: Probe
) -> None:
    name = unique("self")
    notice = topic_for(name, Channel.DEPLOYMENT)
    backend.subscribe(notice)
    backend.subscribe(topic_for(name, Channel.PRESENCE))
    dev = device(issue, mqtt_connect, name)
    dev.publish(notice, b"self-approved", retain=True)
    dev.publish(topic_for(name, Channel.PRESENCE), b"barrier")  # permitted, same connection
    seen = backend.wait_for(topic_for(name, Channel.PRESENCE), b"barrier")
    assert all(m.payload != b"self-approved" for m in seen)
    backend.client.unsubscribe(notice)
    assert_nothing_retained(backend, notice)


@pytest.mark.reliability(
    "Hostile devices",
    "connecting under another device's client id",
    "refused; the other device stays connected",
)
def test_device_cannot_take_another_devices_client_id(
    issue: IdentityFactory, mqtt_connect: Connector, backend: Probe, broker: EmbeddedBroker
) -> None:
    victim_name, attacker_name = unique("victim"), unique("attacker")
    victim = device(issue, mqtt_connect, victim_name)
    victim.subscribe(topic_for(victim_name, Channel.DEPLOYMENT))

    attacker = mqtt_connect(issue(attacker_name), client_id=victim_name)
    assert attacker.connected.is_set()
    # The broker replaced the requested client id with the attacker's own identity...
    assert f"as {attacker_name} " in broker.log()
    # ...so the victim's session was not taken over: it stays connected and keeps receiving.
    assert not victim.disconnected.wait(1.0)
    backend.publish(topic_for(victim_name, Channel.DEPLOYMENT), b"still-mine")
    victim.wait_for(topic_for(victim_name, Channel.DEPLOYMENT), b"still-mine")


def test_retained_check_would_see_a_retained_message(backend: Probe) -> None:
    """The helper above can fail: a retained message is redelivered on a new subscription."""
    topic = topic_for(unique("retained"), Channel.DEPLOYMENT)
    backend.publish(topic, b"kept", retain=True)
    try:
        assert_nothing_retained(backend, topic)
    except AssertionError:
        pass
    else:
        raise AssertionError("a retained message went unnoticed")
    finally:
        backend.publish(topic, b"", retain=True)

"""Hostile devices against the real backend process, broker, database: no message and no device
stops or starves anyone else's traffic.

Each hostile device is registered through the API and connects over mTLS with its own
certificate, like any device. After each attack a victim device's next heartbeat must be stored,
and its next progress report applied, within 2 s; the backend must stay ready.
"""

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from kernex_protocol.payloads import Heartbeat, Progress, ProgressState
from kernex_protocol.topics import Channel
from tests.e2e.fleet import Fleet, eventually, logs_of
from tests.e2e.raw_device import Device

pytestmark = pytest.mark.e2e

VICTIM_DEADLINE_S = 2.0


@pytest.fixture
def backend(fleet: Fleet) -> Iterator[Fleet]:
    fleet.base_env.update(
        {
            "KERNEX_PKI__CA_DIR": str(fleet.broker.ca_dir),
            "KERNEX_PKI__BROKER_DIR": str(fleet.broker.layout.directory),
            "KERNEX_MQTT__QUARANTINE_AFTER_DROPS": "200",
            "KERNEX_MQTT__QUARANTINE_WINDOW_S": "10",
            "KERNEX_MQTT__PROGRESS_FLUSH_INTERVAL_S": "0.05",
        }
    )
    fleet.start_api()
    yield fleet


def notified_victim(fleet: Fleet, explain: Any) -> tuple[Device, str]:
    """A well-behaved device with a deployment under way: the one attacks must not slow."""
    victim = Device(fleet, "victim")
    deployment_id = fleet.deploy(fleet.upload("2.0.0"), [victim.id])
    eventually(
        lambda: fleet.executions(deployment_id)[victim.id]["state"] == "notified",
        20,
        "the victim notified",
        explain,
    )
    return victim, deployment_id


def victim_is_served(victim: Device, deployment_id: str, explain: Any) -> float:
    """The victim's next heartbeat is stored and its next progress report applied, each in 2 s.
    Returns how long the heartbeat took to be stored.

    Heartbeats and progress reports reach the database through separate buffers, so neither is
    promised to land before the other: each is awaited on its own, from the moment it was sent.
    """
    seq = victim.heartbeat()
    percent = victim.seq % 100
    victim.send(
        Channel.PROGRESS,
        Progress(
            deployment_id, ProgressState.DOWNLOADING, victim.seq * 10, "t", percent=percent
        ).to_payload(),
    )
    started = time.monotonic()
    eventually(lambda: seq in victim.stored_heartbeats(), 10, f"heartbeat {seq}", explain)
    took = time.monotonic() - started
    assert took <= VICTIM_DEADLINE_S, f"the victim's heartbeat took {took:.2f} s"

    def applied_progress() -> dict[str, Any] | None:
        with victim.fleet.api as api:
            rows = api.get(f"/deployments/{deployment_id}/executions").json()["data"]
        row = next(r for r in rows if r["device_id"] == victim.id)
        return row if row["progress"] == percent else None

    row = eventually(applied_progress, 10, f"progress {percent}% applied", explain)
    applied_in = time.monotonic() - started
    assert applied_in <= VICTIM_DEADLINE_S, f"the victim's progress took {applied_in:.2f} s"
    assert row["state"] == "downloading"
    return took


HOSTILE_MESSAGES: list[tuple[Channel, bytes]] = [
    (
        Channel.HEARTBEAT,
        b'{"v":1,"seq":9223372036854775808,"session":1,"sent_at":"t",'
        b'"uptime_s":1,"agent_version":"a"}',
    ),
    (
        Channel.HEARTBEAT,
        b'{"v":1,"seq":2,"session":1,"sent_at":"t","uptime_s":1,"agent_version":"1.0\\u0000"}',
    ),
    (Channel.HEARTBEAT, b'{"v":1,"metrics":' + b"[" * 2000 + b"]" * 2000 + b"}"),
    (Channel.HEARTBEAT, b'{"v":1,"seq":' + b"9" * 5000 + b"}"),
    (
        Channel.HEARTBEAT,
        b'{"v":1,"seq":3,"session":1,"sent_at":"\\ud800","uptime_s":1,"agent_version":"a"}',
    ),
    (Channel.PRESENCE, b'{"v":1,"online":true,"session":99999999999999999999}'),
    (Channel.PRESENCE, b'{"v":true,"online":true,"session":5}'),
    (Channel.PRESENCE, b'{"v":1,"online":true,"session":5,"installed_version":"\\u0000"}'),
    (
        Channel.PROGRESS,
        b'{"v":1,"deployment_id":"d","state":"failed","seq":9223372036854775808,"sent_at":"t"}',
    ),
    (
        Channel.PROGRESS,
        b'{"v":1,"deployment_id":"d","state":"failed","seq":1,"sent_at":"t",'
        b'"error":{"code":"install_failed","detail":"x\\u0000y"}}',
    ),
    (Channel.URL_REQUEST, b'{"v":1,"request_id":' + b"[" * 3000 + b"]" * 3000 + b"}"),
    (Channel.URL_REQUEST, b"\xff\xfe\x00"),
]


@pytest.mark.reliability(
    "Bad input",
    "oversized, malformed, deeply nested, invalid UTF-8, NUL, out-of-range and wrong-version"
    " device payloads",
    "each dropped and counted; a victim device's next heartbeat stored and progress applied"
    " within 2 s; the backend ready",
)
def test_no_message_stops_anyone_elses_traffic(backend: Fleet, tmp_path: Path) -> None:
    fleet = backend
    explain = logs_of(*fleet.processes)
    victim, deployment_id = notified_victim(fleet, explain)
    attacker = Device(fleet, "attacker")
    victim_is_served(victim, deployment_id, explain)
    for channel, payload in HOSTILE_MESSAGES:
        attacker.send(channel, payload)
        victim_is_served(victim, deployment_id, explain)
    # The attacker's own device record is untouched by what it sent.
    assert fleet.device(attacker.id)["agent_version"] is None
    with fleet.api as api:
        status = api.get("/mqtt/status").json()
        ready = api.get("/ready")
    assert ready.status_code == 200, ready.text
    assert status["problems"] == []
    offender = next(o for o in status["offenders"] if o["device_id"] == attacker.id)
    assert offender["total"] == len(HOSTILE_MESSAGES)
    assert set(offender["dropped"]) == {"malformed", "oversized"}
    # One log line per device and reason per minute, not one per message.
    drops = [
        json.loads(line)
        for line in fleet.processes[0].log().splitlines()
        if '"mqtt_message_dropped"' in line and attacker.id in line
    ]
    assert len(drops) == len(offender["dropped"]), drops  # one per reason


@pytest.mark.reliability(
    "Hostile devices",
    "a heartbeat and URL-request flood from one device",
    "budgeted, counted and quarantined at the broker (session ended, reconnection refused until"
    " released); the victim served within 2 s",
)
def test_a_flooding_device_is_budgeted_and_quarantined(
    backend: Fleet, figures: dict[str, Any]
) -> None:
    fleet = backend
    explain = logs_of(*fleet.processes)
    victim, deployment_id = notified_victim(fleet, explain)
    flooder = Device(fleet, "flooder")
    beat = Heartbeat(1, 1, "t", 1, "0.1.0").to_payload()
    topic = flooder.topic(Channel.HEARTBEAT)
    flood_until = time.monotonic() + 4
    sent = 0
    next_victim = time.monotonic()
    victim_waits: list[float] = []
    while time.monotonic() < flood_until:
        for _ in range(200):
            flooder.probe.client.publish(topic, beat, qos=0)
        sent += 200
        if time.monotonic() >= next_victim:
            victim_waits.append(victim_is_served(victim, deployment_id, explain))
            next_victim = time.monotonic() + 1
        time.sleep(0.01)
    assert sent > 2000
    figures["flood messages sent"] = sent
    figures["victim heartbeat stored within, worst (s)"] = max(victim_waits)
    device = eventually(
        lambda: (d := fleet.device(flooder.id))["quarantined_until"] and d,
        10,
        "the flooder quarantined",
        explain,
    )
    assert not device["online"]
    with fleet.api as api:
        status = api.get("/mqtt/status").json()
        audit = api.get("/audit-events", params={"object_id": flooder.id}).json()["data"]
    top = status["offenders"][0]
    assert top["device_id"] == flooder.id
    assert top["dropped"]["over_budget.heartbeat"] >= 200  # the quarantine threshold
    assert any(e["action"] == "device.quarantine" for e in audit)
    # Cut off at the broker: its session was ended (taken over by the backend) and its
    # certificate is on hold, so it cannot come back, and nothing of it reaches the backend.
    assert flooder.probe.disconnected.wait(5), "the quarantined device is still connected"
    received = status["counters"]["received.heartbeat"]
    assert status["counters"]["quarantine.sessions_taken_over"] >= 1
    refused = flooder.connect(timeout=3)
    assert not refused.connected.is_set(), "a quarantined device connected again"
    for _ in range(50):
        flooder.probe.client.publish(topic, beat, qos=0)
    time.sleep(1)
    victim_is_served(victim, deployment_id, explain)
    with fleet.api as api:
        after = api.get("/mqtt/status").json()["counters"]["received.heartbeat"]
        released = api.delete(f"/devices/{flooder.id}/quarantine")
    assert after - received <= 5, "the quarantined device's traffic still reached the backend"
    assert released.status_code == 200, released.text
    assert released.json()["broker_reloaded"] is True
    assert fleet.device(flooder.id)["quarantined_until"] is None
    # Released: let in again and heard (a fresh budget, one heartbeat stored).
    time.sleep(0.5)
    flooder.probe.close()
    flooder.probe = flooder.connect()
    assert flooder.probe.connected.is_set(), flooder.probe.error
    flooder.seq = 100
    seq = flooder.heartbeat()
    eventually(lambda: seq in flooder.stored_heartbeats(), 10, "the released device heard", explain)


def user_properties(packet: int, count: int, value_size: int) -> Properties:
    properties = Properties(packet)  # type: ignore[no-untyped-call]
    properties.UserProperty = [(f"k{i}", "v" * value_size) for i in range(count)]
    return properties


def alias(number: int) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.TopicAlias = number
    return properties


@pytest.mark.reliability(
    "Hostile devices",
    "MQTT v5 user-property and topic-alias abuse",
    "packets over the size limit and invalid aliases cut off by the broker; an alias never"
    " leads to another device's topic; the victim served within 2 s",
)
def test_mqtt5_properties_and_topic_aliases_cannot_be_abused(
    backend: Fleet, figures: dict[str, Any]
) -> None:
    fleet = backend
    explain = logs_of(*fleet.processes)
    victim, deployment_id = notified_victim(fleet, explain)
    attacker = Device(fleet, "v5", protocol=mqtt.MQTTv5)
    own = attacker.topic(Channel.HEARTBEAT)
    foreign = victim.topic(Channel.HEARTBEAT)

    # Many user properties within the packet limit: delivered like any heartbeat, harmless.
    beat = Heartbeat(1, 1, "t", 1, "0.1.0").to_payload()
    many = user_properties(PacketTypes.PUBLISH, 800, 8)
    attacker.probe.client.publish(own, beat, qos=1, properties=many).wait_for_publish(5)
    eventually(lambda: 1 in attacker.stored_heartbeats(), 10, "the attacker's heartbeat", explain)
    victim_is_served(victim, deployment_id, explain)

    # An alias set on a foreign topic, then used alone: the broker checks the resolved topic.
    forged = Heartbeat(999_001, 1, "t", 1, "0.1.0").to_payload()
    attacker.probe.client.publish(foreign, forged, qos=1, properties=alias(1))
    attacker.probe.client.publish("", forged, qos=1, properties=alias(1))
    # An alias of its own topic, then re-pointed at the foreign one: the same.
    attacker.probe.client.publish(own, beat, qos=1, properties=alias(2))
    attacker.probe.client.publish(foreign, forged, qos=1, properties=alias(2))
    attacker.probe.client.publish("", forged, qos=1, properties=alias(2))
    waits = [victim_is_served(victim, deployment_id, explain)]
    assert 999_001 not in victim.stored_heartbeats(), "an alias led to another device's topic"

    # An alias above the broker's maximum is a protocol error: disconnected.
    attacker.probe.client.publish(own, beat, qos=0, properties=alias(65535))
    assert attacker.probe.disconnected.wait(5), "an alias above the maximum was accepted"
    attacker.probe.close()

    # User properties past the packet size limit, on a PUBLISH and on a CONNECT.
    again = attacker.connect(protocol=mqtt.MQTTv5)
    assert again.connected.wait(5), again.error
    oversized = user_properties(PacketTypes.PUBLISH, 3000, 16)
    again.client.publish(own, beat, qos=0, properties=oversized)
    assert again.disconnected.wait(5), "a PUBLISH over the packet limit was accepted"
    again.close()
    crowded = attacker.connect(
        protocol=mqtt.MQTTv5,
        connect_properties=user_properties(PacketTypes.CONNECT, 10_000, 16),
    )
    assert not crowded.connected.wait(2), "a CONNECT over the packet limit was accepted"
    crowded.close()
    waits.append(victim_is_served(victim, deployment_id, explain))
    figures["victim heartbeat stored within, worst (s)"] = max(waits)
    figures["user properties on the refused CONNECT"] = 10_000


@pytest.mark.reliability(
    "Hostile devices",
    "a device reconnecting (a full mTLS handshake) in a tight loop",
    "the broker and backend keep serving: the victim served within 2 s throughout",
)
def test_a_reconnect_loop_does_not_slow_anyone_else(
    backend: Fleet, figures: dict[str, Any]
) -> None:
    fleet = backend
    explain = logs_of(*fleet.processes)
    victim, deployment_id = notified_victim(fleet, explain)
    looper = Device(fleet, "looper")
    looper.probe.close()
    stop = threading.Event()
    connections = 0

    def loop() -> None:
        nonlocal connections
        while not stop.is_set():
            probe = looper.connect(timeout=2.0)
            connections += 1
            probe.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    waits = []
    try:
        until = time.monotonic() + 6
        while time.monotonic() < until:
            waits.append(victim_is_served(victim, deployment_id, explain))
            time.sleep(0.5)
    finally:
        stop.set()
        thread.join(10)
    assert connections >= 20, f"only {connections} connections: the loop was not tight"
    with fleet.api as api:
        assert api.get("/ready").status_code == 200
    figures["connections in 6 s"] = connections
    figures["victim heartbeat stored within, worst (s)"] = max(waits)

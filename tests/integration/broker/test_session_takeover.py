"""Quarantine at the broker: the device's live session is ended (taken over with a one-use
certificate) and its certificate held in the CRL, so it cannot come back until released."""

import asyncio
import time
import uuid

from kernex_backend.core.config import MqttSettings
from kernex_backend.core.messaging import TrafficCounters
from kernex_backend.mqtt.takeover import SessionTakeover
from kernex_devstack.broker import EmbeddedBroker
from kernex_protocol.topics import Channel, topic_for
from kernex_provision import broker as broker_files
from kernex_provision.certificates import CertificateKind
from tests.conftest import Connector, IdentityFactory
from tests.integration.mqtt_client import Probe


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def takeover_for(broker: EmbeddedBroker, stats: TrafficCounters) -> SessionTakeover:
    settings = MqttSettings(host=broker.host, port=broker.port, ca_file=broker.layout.ca_chain)
    return SessionTakeover(settings, broker.authority, stats, again_after_s=0.5)


def hold(broker: EmbeddedBroker, names: list[str]) -> None:
    broker_files.publish_revocations(broker.authority, broker.layout, held=names)
    assert broker_files.reload_broker(broker.layout)


def test_a_quarantined_device_is_disconnected_and_kept_out_until_released(
    broker: EmbeddedBroker, issue: IdentityFactory, mqtt_connect: Connector, backend: Probe
) -> None:
    flooder_name, other_name = unique("flooder"), unique("neighbour")
    flooder_identity = issue(flooder_name)
    flooder = mqtt_connect(flooder_identity)
    other = mqtt_connect(issue(other_name))
    assert flooder.connected.is_set() and other.connected.is_set()
    backend.subscribe("kernex/v1/devices/+/heartbeat")
    stats = TrafficCounters()

    async def quarantine() -> tuple[int, float]:
        takeover = takeover_for(broker, stats)
        started = time.monotonic()
        hold(broker, [flooder_name])
        ended = await takeover.end_sessions([flooder_name])
        assert await asyncio.to_thread(flooder.disconnected.wait, 5), "the session is still open"
        seconds = time.monotonic() - started
        await asyncio.sleep(1.0)  # the second pass runs
        await takeover.aclose()
        return ended, seconds

    ended, seconds = asyncio.run(quarantine())
    assert ended == 1
    print(f"session ended {seconds:.2f} s after the quarantine began")
    assert stats.counts["quarantine.sessions_taken_over"] == 2  # now and after the reload
    assert stats.counts["quarantine.takeover_failed"] == 0

    # It cannot come back: its certificate is on hold, so the handshake is refused.
    again = mqtt_connect(flooder_identity, timeout=3)
    assert not again.connected.is_set(), "a held certificate was let in"
    # The neighbour never noticed.
    assert not other.disconnected.is_set()
    other.publish(topic_for(other_name, Channel.HEARTBEAT), b"still here")
    backend.wait_for(topic_for(other_name, Channel.HEARTBEAT), b"still here")
    # The takeover certificates are on record in the CA's index, and the hold lists only the
    # device's own certificates.
    kinds = [r.kind for r in broker.authority.certificates() if r.common_name == flooder_name]
    assert kinds.count(CertificateKind.TAKEOVER.value) == 2

    # Released: the hold is lifted and the device connects again.
    hold(broker, [])
    time.sleep(0.3)
    back = mqtt_connect(flooder_identity)
    assert back.connected.is_set(), back.error
    back.publish(topic_for(flooder_name, Channel.HEARTBEAT), b"back")
    backend.wait_for(topic_for(flooder_name, Channel.HEARTBEAT), b"back")


def test_no_takeover_for_a_name_the_ca_never_certified_as_a_device(
    broker: EmbeddedBroker,
) -> None:
    stats = TrafficCounters()

    async def attempt() -> int:
        takeover = takeover_for(broker, stats)
        ended = await takeover.end_sessions(["never-issued-1"])
        await takeover.aclose()
        return ended

    assert asyncio.run(attempt()) == 0
    assert stats.counts["quarantine.takeover_failed"] == 1

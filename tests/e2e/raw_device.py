"""A device registered through the API that speaks raw MQTT with its own certificate: for tests
that need to send exactly what they choose (hostile traffic, heartbeats in a given order)."""

import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTProtocolVersion

from kernex_protocol.payloads import Heartbeat
from kernex_protocol.topics import Channel, topic_for
from kernex_provision.authority import pem, write_private_key, write_public
from kernex_provision.certificates import CertificateKind, new_key
from tests.e2e.fleet import Fleet
from tests.integration.agent.harness import DEVICE_TYPE
from tests.integration.mqtt_client import Identity, Probe, connect


class Device:
    """A device registered through the API, speaking raw MQTT with its own certificate."""

    def __init__(
        self, fleet: Fleet, name: str, protocol: MQTTProtocolVersion = mqtt.MQTTv311
    ) -> None:
        self.fleet = fleet
        self.id = f"{name}-{uuid.uuid4().hex[:8]}"
        with fleet.api as api:
            created = api.post("/devices", json={"id": self.id, "device_type": DEVICE_TYPE})
            assert created.status_code == 201, created.text
        folder = fleet.root / "raw" / self.id
        folder.mkdir(parents=True)
        key = new_key()
        authority = fleet.broker.authority
        cert = authority.issue(
            key.public_key(), kind=CertificateKind.DEVICE, common_name=self.id, days=2
        )
        write_private_key(folder / "device.key", key)
        write_public(folder / "device.crt", pem(cert))
        write_public(folder / "ca.pem", authority.chain_pem)
        self.identity = Identity(
            self.id, folder / "ca.pem", folder / "device.crt", folder / "device.key"
        )
        self.probe: Probe = self.connect(protocol=protocol)
        assert self.probe.connected.is_set(), self.probe.error
        self.seq = 0

    def connect(self, **options: Any) -> Probe:
        """A new connection with this device's certificate (`options` as for `connect`)."""
        return connect(self.identity, self.fleet.broker.host, self.fleet.broker.port, **options)

    def topic(self, channel: Channel) -> str:
        return topic_for(self.id, channel)

    def send(self, channel: Channel, payload: bytes, qos: int = 1) -> None:
        self.probe.publish(self.topic(channel), payload, qos=qos)

    def heartbeat(self) -> int:
        self.seq += 1
        beat = Heartbeat(self.seq, 1, "2026-12-02T00:00:00+00:00", 10, "0.1.0")
        self.send(Channel.HEARTBEAT, beat.to_payload(), qos=1)
        return self.seq

    def stored_heartbeats(self) -> list[int]:
        with self.fleet.api as api:
            rows = api.get(f"/devices/{self.id}/heartbeats").json()["data"]
        return [row["sequence"] for row in rows]

"""A small synchronous MQTT test client over mTLS (paho), recording what it receives."""

import queue
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties


@dataclass
class Identity:
    """Files a client presents; key/cert None means no client certificate."""

    name: str
    ca_file: Path
    cert_file: Path | None
    key_file: Path | None


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class Probe:
    """A connected (or refused) client."""

    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    messages: "queue.Queue[Received]" = field(default_factory=queue.Queue)
    connect_reason: str | None = None
    error: str | None = None

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0:
            info.wait_for_publish(5)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_args: done.set()
        self.client.subscribe(topic, qos)
        assert done.wait(5), f"no SUBACK for {topic}"

    def wait_for(
        self, topic: str, payload: bytes | None = None, timeout: float = 5.0
    ) -> list[Received]:
        """Collect messages until one on `topic` (with `payload`) arrives; returns all collected."""
        seen: list[Received] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(message)
            if message.topic == topic and (payload is None or message.payload == payload):
                return seen
        raise AssertionError(f"nothing on {topic} {payload!r} within {timeout}s; got {seen}")

    def drain(self, wait: float = 0.0) -> list[Received]:
        if wait:
            time.sleep(wait)
        out: list[Received] = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(
    identity: Identity,
    host: str,
    port: int,
    *,
    client_id: str | None = None,
    timeout: float = 5.0,
    protocol: MQTTProtocolVersion = mqtt.MQTTv311,
    connect_properties: Properties | None = None,
) -> Probe:
    """Connect and wait for CONNACK; a refused handshake leaves `connected` unset, `error` set.
    MQTT 3.1.1 unless `protocol` says 5 (then `connect_properties` go with the CONNECT)."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id if client_id is not None else identity.name,
        protocol=protocol,
        clean_session=None if protocol == mqtt.MQTTv5 else True,
    )
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(identity.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if identity.cert_file and identity.key_file:
        context.load_cert_chain(str(identity.cert_file), str(identity.key_file))
    client.tls_set_context(context)
    probe = Probe(client)

    def on_connect(_c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        probe.connect_reason = str(reason)
        if not getattr(reason, "is_failure", False):
            probe.connected.set()

    def on_disconnect(*_args: object) -> None:
        probe.disconnected.set()

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        probe.messages.put(Received(message.topic, bytes(message.payload), bool(message.retain)))

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    try:
        client.connect(host, port, keepalive=30, properties=connect_properties)
    except (ssl.SSLError, OSError) as exc:
        probe.error = f"{type(exc).__name__}: {exc}"
        return probe
    client.loop_start()
    if not probe.connected.wait(timeout):
        probe.error = probe.error or f"no CONNACK (reason {probe.connect_reason})"
        client.loop_stop()
    return probe

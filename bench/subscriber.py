"""A plain MQTT subscriber for the benchmarks: connects with its own service identity (granted on
the broker like a backend replica), subscribes, and hands each message with its arrival time to
a callback on paho's network thread. It does nothing else, so it shows what the broker itself
delivers."""

import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from kernex_devstack.broker import EmbeddedBroker

OnMessage = Callable[[str, bytes, float], None]  # topic, payload, time.time() at arrival


class Subscriber:
    """Subscribe to `topic_filter` as a new service identity named `name`, at QoS 0: at QoS 1
    every message to this one client would pass through the broker's window of unacknowledged
    messages, and the instrument would pace what it measures."""

    def __init__(
        self,
        broker: EmbeddedBroker,
        name: str,
        folder: Path,
        topic_filter: str,
        on_message: OnMessage,
    ) -> None:
        broker.add_service_identity(name, folder)
        context = ssl.create_default_context(cafile=str(folder / "ca-chain.pem"))
        context.load_cert_chain(str(folder / "service.crt"), str(folder / "service.key"))
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311
        )
        self._client.tls_set_context(context)
        self._subscribed = threading.Event()
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, 0)
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.on_message = lambda c, u, m: on_message(m.topic, m.payload, time.time())
        self._broker = broker

    def __enter__(self) -> "Subscriber":
        self._client.connect("localhost", self._broker.port, keepalive=60)
        self._client.loop_start()
        if not self._subscribed.wait(15):
            raise RuntimeError("the subscriber got no SUBACK")
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

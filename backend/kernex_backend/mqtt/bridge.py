"""The backend's MQTT connection: consumes device traffic, publishes to devices.

Device traffic is consumed through shared subscriptions (`$share/<group>/...`), so several
replicas split it between them; each replica connects with its own service certificate (the
broker makes the certificate's CN the client id). Messages are checked before any handler sees
them: a topic that is not a device channel, a payload over its channel's limit, or a payload
that does not parse is dropped, counted and logged (truncated), and the consumer carries on.
The connection is re-established with jittered exponential backoff.
"""

import asyncio
import random
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import structlog

from kernex_backend.core.config import MqttSettings
from kernex_protocol.limits import MAX_PAYLOAD_BYTES
from kernex_protocol.payloads import (
    Heartbeat,
    PayloadInvalid,
    Presence,
    Progress,
    UrlRequest,
)
from kernex_protocol.topics import CHANNELS, Channel, Direction, parse_topic, subscription_for_all

log = structlog.get_logger(__name__)

DEVICE_CHANNELS = (Channel.HEARTBEAT, Channel.PRESENCE, Channel.PROGRESS, Channel.URL_REQUEST)
_PARSERS: dict[Channel, Callable[[bytes], object]] = {
    Channel.HEARTBEAT: Heartbeat.parse,
    Channel.PRESENCE: Presence.parse,
    Channel.PROGRESS: Progress.parse,
    Channel.URL_REQUEST: UrlRequest.parse,
}
# Channels whose handlers only queue the message for a batch writer: called inline, in order.
_QUEUED = frozenset({Channel.HEARTBEAT, Channel.PROGRESS})

Handler = Callable[[str, object], Awaitable[None]]


class BridgeUnavailable(RuntimeError):
    """The broker is not connected, or did not acknowledge in time."""


@dataclass
class BridgeStats:
    """Counters of what the bridge received and dropped (exposed by the API)."""

    counts: Counter[str] = field(default_factory=Counter)

    def count(self, name: str, n: int = 1) -> None:
        """Add `n` to counter `name`."""
        self.counts[name] += n


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """Verify the broker (chain and host name) and present the service certificate."""
    assert settings.ca_file and settings.cert_file and settings.key_file
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(settings.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    return context


class MqttBridge:
    """One replica's connection to the broker."""

    def __init__(self, settings: MqttSettings, handlers: dict[Channel, Handler]) -> None:
        self.settings = settings
        self.handlers = handlers
        self.stats = BridgeStats()
        self.connected = asyncio.Event()
        # Run after every (re)connect, e.g. to restore retained notices a broker lost.
        self.on_connected: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._client: aiomqtt.Client | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.handler_concurrency)
        self._connect_tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Stay connected and consume until cancelled."""
        failures = 0
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (aiomqtt.MqttError, ssl.SSLError, OSError) as exc:
                self.connected.clear()
                self._client = None
                failures += 1
                ceiling = min(self.settings.reconnect_max_s, 0.5 * 2**failures)
                delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter
                log.warning("mqtt_disconnected", error=str(exc)[:200], retry_s=round(delay, 2))
                await asyncio.sleep(delay)
            else:
                failures = 0

    async def _session(self) -> None:
        settings = self.settings
        async with aiomqtt.Client(
            settings.host,
            port=settings.port,
            tls_context=tls_context(settings),
            keepalive=settings.keepalive_s,
            clean_session=True,
            protocol=aiomqtt.ProtocolVersion.V311,
            # Unbounded on purpose: paho has already acknowledged a QoS 1 message it hands over,
            # so dropping it here would lose a device's report without trace (a 10,000-device
            # benchmark burst did exactly that at the old bound of 100,000). Memory is bounded
            # further on: every handler of the high-volume channels only appends to a bounded,
            # counted write buffer, so this queue holds only parse-and-dispatch work.
            max_queued_incoming_messages=None,
            max_inflight_messages=settings.publish_concurrency,
        ) as client:
            # We allow publish_concurrency notices in flight; warn only beyond that.
            client.pending_calls_threshold = settings.publish_concurrency
            for channel in DEVICE_CHANNELS:
                topic = f"$share/{settings.share_group}/{subscription_for_all(channel)}"
                await client.subscribe(topic, qos=CHANNELS[channel].qos)
            self._client = client
            self.connected.set()
            log.info("mqtt_connected", host=settings.host, group=settings.share_group)
            if self.on_connected is not None:
                task = asyncio.create_task(self.on_connected())
                self._connect_tasks.add(task)
                task.add_done_callback(self._connect_tasks.discard)
            try:
                async for message in client.messages:
                    await self.dispatch(message.topic.value, _payload_bytes(message.payload))
            finally:
                self.connected.clear()
                self._client = None

    async def drain(self) -> None:
        """Wait for the handlers still running (tests, and a clean stop)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def dispatch(self, topic: str, payload: bytes) -> None:
        """Check one message and hand it to its channel's handler; never raises."""
        parsed = parse_topic(topic)
        if parsed is None or CHANNELS[parsed.channel].direction != Direction.DEVICE_TO_CLOUD:
            self._drop("foreign_topic", topic, b"")
            return
        channel = parsed.channel
        self.stats.count(f"received.{channel.value}")
        if channel == Channel.PRESENCE and not payload:
            return  # a cleared retained presence
        if len(payload) > MAX_PAYLOAD_BYTES[channel]:
            self._drop("oversized", topic, b"")
            return
        try:
            document = _PARSERS[channel](payload)
        except PayloadInvalid as exc:
            self._drop("malformed", topic, payload, str(exc))
            return
        if channel in _QUEUED:
            await self._handle(channel, parsed.device_id, document)  # only queues: no wait
            return
        # Presence and URL requests each take a database round trip: run a bounded number at
        # once. Order per device does not matter: presence is ordered by session, in the
        # database.
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(channel, parsed.device_id, document))
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: "asyncio.Task[None]") -> None:
        self._background.discard(task)
        self._slots.release()

    async def _handle(self, channel: Channel, device_id: str, document: object) -> None:
        try:
            await self.handlers[channel](device_id, document)
        except Exception:  # one bad message or a database hiccup must not stop the consumer
            self.stats.count(f"failed.{channel.value}")
            log.exception("mqtt_handler_failed", channel=channel.value, device_id=device_id)

    def _drop(self, reason: str, topic: str, payload: bytes, detail: str = "") -> None:
        self.stats.count(f"dropped.{reason}")
        log.warning(
            "mqtt_message_dropped",
            reason=reason,
            topic=topic[:128],
            detail=detail[:200],
            payload=payload[:64].decode(errors="replace"),
        )

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and wait for the broker's acknowledgement; BridgeUnavailable if it fails."""
        client = self._client
        if client is None:
            raise BridgeUnavailable("not connected to the broker")
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=10)
        except aiomqtt.MqttError as exc:
            raise BridgeUnavailable(str(exc)) from None


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()

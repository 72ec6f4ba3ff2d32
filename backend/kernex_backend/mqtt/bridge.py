"""The backend's MQTT connection: consumes device traffic, publishes to devices.

Device traffic is consumed through shared subscriptions (`$share/<group>/...`), so several
replicas split it between them; each replica connects with its own service certificate (the
broker makes the certificate's CN the client id). Every message passes the same gate before a
handler sees it, cheapest check first: a topic that is not a device channel, a device over its
traffic budget (budgets.py, decided on the topic alone), a payload over its channel's limit, a
payload that does not parse. What fails is dropped and counted (per device too), and logged at
most once per device and reason a minute, so bad traffic cannot make the log the bottleneck.
Nothing a message does can end the consumer: parser and handler errors are counted, and the
connection is re-established with jittered exponential backoff whatever ended it.
"""

import asyncio
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiomqtt
import structlog
from paho.mqtt.enums import MQTTErrorCode

from kernex_backend.core.config import MqttSettings
from kernex_backend.core.log_limiter import LogLimiter
from kernex_backend.core.messaging import PublishFailed, TrafficCounters
from kernex_backend.mqtt.budgets import TrafficBudgets
from kernex_protocol.limits import MAX_PAYLOAD_BYTES
from kernex_protocol.payloads import PayloadInvalid
from kernex_protocol.topics import (
    CHANNELS,
    Channel,
    Direction,
    ParsedTopic,
    parse_topic,
    subscription_for_all,
    topic_for,
)

log = structlog.get_logger(__name__)

_YIELD_EVERY = 64
_PUBLISH_TIMEOUT_S = 10.0  # a publish the broker has not acknowledged by then has failed
DEVICE_CHANNELS = (Channel.HEARTBEAT, Channel.PRESENCE, Channel.PROGRESS, Channel.URL_REQUEST)
_RECEIVED = {channel: f"received.{channel.value}" for channel in Channel}
_SKIP: Any = object()  # a message dropped (and counted) or with nothing to do

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class Route(Generic[P]):
    """How one device channel is handled: its parser and the handler of the parsed payload.

    An `enqueue` handler only appends the message to a batch writer's buffer: it is called at
    once, in order, from the MQTT client's message callback. A `handle` coroutine takes a
    database round trip: a bounded number run at once, from the consumer loop."""

    parse: Callable[[bytes], P]
    handle: Callable[[str, P], Awaitable[None]] | None = None
    enqueue: Callable[[str, P], None] | None = None


class _GatedClient(aiomqtt.Client):
    """aiomqtt's client with a gate in front of its message queue.

    aiomqtt turns every delivered message into an object and queues it for the consumer loop,
    which costs more than most of our handling. The gate runs on paho's message callback (on the
    event loop's thread): it refuses a flooding device's surplus on the topic alone, and hands
    heartbeats and progress reports, which only go into a batch writer's buffer, straight to it.
    Only what needs a coroutine (presence, URL requests) goes on through aiomqtt's queue.
    `_on_message` is aiomqtt's one entry point for delivered messages (aiomqtt is pinned; the
    flood test fails if the gate stops being called).
    """

    def __init__(self, *args: Any, gate: Callable[[str, bytes], bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = gate
        self._batches: dict[int, tuple[_Acks, int]] = {}  # message id -> its batch and index

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if self._gate(message.topic, message.payload):
            super()._on_message(client, userdata, message)

    def publish_many(
        self, messages: Sequence[tuple[str, bytes]], *, qos: int, retain: bool
    ) -> "_Acks":
        """Hand every (topic, payload) to paho at once, as a bare paho publisher does: its
        in-flight window (max_inflight_messages) paces them, and each acknowledgement is counted
        in the batch's `_Acks`. aiomqtt's publish costs a coroutine, an event and a pending-call
        entry per message, more than paho's own work for it; a notifier sends thousands."""
        acks = _Acks(len(messages))
        for index, (topic, payload) in enumerate(messages):
            info = self._client.publish(topic, payload, qos, retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                acks.refuse(index)  # not connected, or paho's queue is full: failed now
                continue
            if info.is_published():  # QoS 0: sent is all there is
                acks.ack(index)
            else:
                self._batches[info.mid] = (acks, index)
        return acks

    def _on_publish(self, client: Any, userdata: Any, mid: int, *args: Any) -> None:
        entry = self._batches.pop(mid, None)
        if entry is None:
            super()._on_publish(client, userdata, mid, *args)
        else:
            entry[0].ack(entry[1])

    def abandon_batches(self) -> None:
        """The connection is gone: what it had not acknowledged never will be."""
        for acks, _ in self._batches.values():
            acks.close()
        self._batches.clear()


class _Acks:
    """Which messages of one `publish_many` batch the broker acknowledged, and a wait for them
    that ends when all are, when the connection is gone, or when none came for a while."""

    def __init__(self, count: int) -> None:
        self.acked = [False] * count
        self._missing = count
        self._open = True
        self._news = asyncio.Event()

    def ack(self, index: int) -> None:
        if not self.acked[index]:
            self.acked[index] = True
            self._missing -= 1
            self._news.set()

    def refuse(self, index: int) -> None:
        """paho did not take this message: it failed, and no acknowledgement will come."""
        if not self.acked[index]:
            self._missing -= 1
            self._news.set()

    def close(self) -> None:
        self._open = False
        self._news.set()

    async def wait(self, stall_s: float) -> list[bool]:
        """Each message's outcome, once all are acknowledged, the connection is gone, or no
        acknowledgement came for `stall_s` seconds (the broker is stuck: the rest failed)."""
        while self._missing and self._open:
            self._news.clear()
            try:
                async with asyncio.timeout(stall_s):
                    await self._news.wait()
            except TimeoutError:
                break
        return list(self.acked)


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """Verify the broker (chain and host name) and present the service certificate."""
    assert settings.ca_file and settings.cert_file and settings.key_file
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(settings.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    return context


class MqttBridge:
    """One replica's connection to the broker."""

    def __init__(self, settings: MqttSettings, budgets: TrafficBudgets | None = None) -> None:
        self.settings = settings
        self.routes: dict[Channel, Route[Any]] = {}
        self.budgets = budgets
        self.stats = TrafficCounters()
        self.connected = asyncio.Event()
        self._disconnected_at: float | None = time.monotonic()
        self._logs = LogLimiter(interval_s=60.0)
        # Run after every (re)connect, e.g. to restore retained notices a broker lost.
        self.on_connected: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._client: _GatedClient | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.handler_concurrency)
        self._connect_tasks: set[asyncio.Task[None]] = set()

    def route(
        self,
        channel: Channel,
        parse: Callable[[bytes], P],
        handle: Callable[[str, P], Awaitable[None]],
    ) -> None:
        """Handle `channel` with `await handle(device_id, parse(payload))`, a bounded number at
        once."""
        self.routes[channel] = Route(parse, handle=handle)

    def route_inline(
        self, channel: Channel, parse: Callable[[bytes], P], enqueue: Callable[[str, P], None]
    ) -> None:
        """Handle `channel` with `enqueue(device_id, parse(payload))`, at once and in order:
        `enqueue` must only queue (it runs in the MQTT client's callback)."""
        self.routes[channel] = Route(parse, enqueue=enqueue)

    def problem(self, *, grace_s: float = 30.0) -> str | None:
        """Why device traffic is not flowing, or None (for the readiness check)."""
        if self._disconnected_at is not None:
            down = time.monotonic() - self._disconnected_at
            if down > grace_s:
                return f"MQTT bridge disconnected for {down:.0f} s"
        return None

    async def run(self) -> None:
        """Stay connected and consume until cancelled, whatever ends a session."""
        failures = 0
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._mark_disconnected()
                failures += 1
                ceiling = min(self.settings.reconnect_max_s, 0.5 * 2**failures)
                delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter
                expected = isinstance(exc, aiomqtt.MqttError | ssl.SSLError | OSError)
                if expected:
                    log.warning("mqtt_disconnected", error=str(exc)[:200], retry_s=round(delay, 2))
                else:  # a bug: loud, with its traceback, but the bridge comes back
                    log.error("mqtt_session_failed", retry_s=round(delay, 2), exc_info=exc)
                    self.stats.count("bridge.unexpected_errors")
                await asyncio.sleep(delay)
            else:
                failures = 0

    def _mark_disconnected(self) -> None:
        self.connected.clear()
        self._client = None
        if self._disconnected_at is None:
            self._disconnected_at = time.monotonic()

    async def _session(self) -> None:
        settings = self.settings
        async with _GatedClient(
            settings.host,
            gate=self.take,
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
            self.stats.count("bridge.connects")
            self._disconnected_at = None
            log.info("mqtt_connected", host=settings.host, group=settings.share_group)
            if self.on_connected is not None:
                task = asyncio.create_task(self.on_connected())
                self._connect_tasks.add(task)
                task.add_done_callback(self._connect_tasks.discard)
            try:
                handled = 0
                async for message in client.messages:
                    await self.dispatch(
                        message.topic.value, _payload_bytes(message.payload), admitted=True
                    )
                    handled += 1
                    if handled % _YIELD_EVERY == 0:
                        # A full queue never makes the loop wait: let the API, the writers and
                        # the traffic guard (quarantine) run between stretches of messages.
                        await asyncio.sleep(0)
            finally:
                self._mark_disconnected()
                client.abandon_batches()

    async def drain(self) -> None:
        """Wait for the handlers still running (tests, and a clean stop)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def admit(self, topic: str) -> bool:
        """The checks on the topic alone, cheapest first: a device channel, and the device
        within its budget. False (counted) if the message is dropped."""
        return self._admitted(topic) is not None

    def _admitted(self, topic: str) -> ParsedTopic | None:
        parsed = parse_topic(topic)
        if parsed is None or CHANNELS[parsed.channel].direction != Direction.DEVICE_TO_CLOUD:
            self._drop("foreign_topic", None, topic)
            return None
        channel = parsed.channel
        self.stats.count(_RECEIVED[channel])
        if self.budgets is not None and not self.budgets.allow(parsed.device_id, channel):
            self._drop(f"over_budget.{channel.value}", parsed.device_id, topic, counted=True)
            return None
        return parsed

    def take(self, topic: str, payload: bytes) -> bool:
        """The client's gate: refuse what `admit` refuses, handle what an inline route handles,
        and say whether the message goes on to the consumer loop. Never raises: it runs inside
        the MQTT client's packet handling."""
        try:
            parsed = self._admitted(topic)
            if parsed is None:
                return False
            route = self.routes.get(parsed.channel)
            if route is None or route.enqueue is None:
                return True
            document = self._checked(parsed, payload, route, topic)
            if document is not _SKIP:
                self._enqueue(route, parsed, document)
        except Exception as exc:  # a bug here must not break the connection's packet handling
            self.stats.count("bridge.gate_errors")
            log.error("mqtt_gate_failed", topic=topic[:128], exc_info=exc)
        return False

    async def dispatch(self, topic: str, payload: bytes, *, admitted: bool = False) -> None:
        """Check one message and hand it to its channel's handler; never raises. `admitted`:
        the topic already passed `admit` (in the client's gate)."""
        parsed = parse_topic(topic) if admitted else self._admitted(topic)
        if parsed is None:
            return
        route = self.routes.get(parsed.channel)
        if route is None:
            return  # no handler
        document = self._checked(parsed, payload, route, topic)
        if document is _SKIP:
            return
        if route.enqueue is not None:
            self._enqueue(route, parsed, document)
            return
        # Presence and URL requests each take a database round trip: run a bounded number at
        # once. Order per device does not matter: presence is ordered by session, in the
        # database.
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(route, parsed.channel, parsed.device_id, document))
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _checked(self, parsed: ParsedTopic, payload: bytes, route: Route[Any], topic: str) -> Any:
        """The parsed payload, or _SKIP if it is dropped (counted) or there is nothing to do."""
        channel, device_id = parsed.channel, parsed.device_id
        if len(payload) > MAX_PAYLOAD_BYTES[channel]:
            self._drop("oversized", device_id, topic)
            return _SKIP
        if channel == Channel.PRESENCE and not payload:
            return _SKIP  # a cleared retained presence
        try:
            return route.parse(payload)
        except PayloadInvalid as exc:
            self._drop("malformed", device_id, topic, str(exc))
        except Exception as exc:  # a parser bug must not end the consumer
            self._drop("parse_error", device_id, topic, type(exc).__name__)
        return _SKIP

    def _enqueue(self, route: Route[Any], parsed: ParsedTopic, document: object) -> None:
        assert route.enqueue is not None
        try:
            route.enqueue(parsed.device_id, document)
        except Exception as exc:  # one bad message must not stop the consumer
            self._handler_failed(parsed.channel, parsed.device_id, exc)

    def _finished(self, task: "asyncio.Task[None]") -> None:
        self._background.discard(task)
        self._slots.release()

    async def _handle(
        self, route: Route[Any], channel: Channel, device_id: str, document: object
    ) -> None:
        assert route.handle is not None
        try:
            await route.handle(device_id, document)
        except Exception as exc:  # one bad message or a database hiccup must not stop the consumer
            self._handler_failed(channel, device_id, exc)

    def _handler_failed(self, channel: Channel, device_id: str, exc: Exception) -> None:
        self.stats.count(f"failed.{channel.value}")
        # A traceback once per error type a minute; the rest are counted in that line.
        key = ("handler", channel, type(exc).__name__)
        if self._logs.allow(key):
            log.error(
                "mqtt_handler_failed",
                channel=channel.value,
                device_id=device_id,
                suppressed=self._logs.suppressed(key),
                exc_info=exc,
            )

    def _drop(
        self,
        reason: str,
        device_id: str | None,
        topic: str,
        detail: str = "",
        *,
        counted: bool = False,
    ) -> None:
        """Count a refused message (per device too, unless the budget did) and log it at most
        once per device and reason a minute, with how many were not logged."""
        self.stats.count(f"dropped.{reason}")
        if device_id is not None and self.budgets is not None and not counted:
            self.budgets.count(device_id, reason)
        key = (device_id, reason)
        if self._logs.allow(key):
            log.warning(
                "mqtt_message_dropped",
                reason=reason,
                device_id=device_id,
                topic=topic[:128],
                detail=detail[:200],
                suppressed=self._logs.suppressed(key),
            )

    async def publish_to(self, device_id: str, channel: Channel, payload: bytes) -> None:
        """The messaging port (core/messaging.py): publish on a device's channel with the QoS
        and retain flag of the topic table, and wait for the broker's acknowledgement."""
        spec = CHANNELS[channel]
        await self.publish(topic_for(device_id, channel), payload, qos=spec.qos, retain=spec.retain)

    async def publish_many(
        self, channel: Channel, messages: Sequence[tuple[str, bytes]]
    ) -> list[bool]:
        """The messaging port: each (device_id, payload) on that device's `channel`, handed
        over at once; whether each was acknowledged. A batch waits at most
        `_PUBLISH_TIMEOUT_S` for the next acknowledgement, however long it is."""
        client = self._client
        if client is None:
            return [False] * len(messages)
        spec = CHANNELS[channel]
        acks = client.publish_many(
            [(topic_for(device_id, channel), payload) for device_id, payload in messages],
            qos=spec.qos,
            retain=spec.retain,
        )
        return await acks.wait(_PUBLISH_TIMEOUT_S)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and wait for the broker's acknowledgement; PublishFailed if it fails."""
        client = self._client
        if client is None:
            raise PublishFailed("not connected to the broker")
        try:
            # asyncio.timeout rather than aiomqtt's timeout, whose asyncio.wait_for makes a task
            # per publish (about a third of a publish's CPU in the notifier's profile).
            async with asyncio.timeout(_PUBLISH_TIMEOUT_S):
                await client.publish(topic, payload, qos=qos, retain=retain, timeout=math.inf)
        except aiomqtt.MqttError as exc:
            raise PublishFailed(str(exc)) from None
        except TimeoutError:
            raise PublishFailed(f"no acknowledgement within {_PUBLISH_TIMEOUT_S:g} s") from None


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()

"""The MQTT connection: mutual TLS, presence, resubscription, and reconnecting with backoff.

paho-mqtt does the protocol; this module owns the connection's life in one thread:

- TLS verifies the broker's certificate *and host name* against the kit's CA chain (there is no
  option to turn that off) and presents the device certificate, re-read on every attempt so a
  renewed certificate is used without a restart.
- Before every attempt the session number grows, and the Last Will says "offline, session N";
  after CONNACK the agent resubscribes and publishes the retained birth "online, session N".
- Failures are told apart: the broker refusing our certificate or our identity, or us refusing
  the broker's certificate, will not heal by retrying soon (permanent: logged as errors, retried
  at the longest delay so a fix by an operator is picked up); network trouble is transient
  (a warning, retried with jittered exponential backoff).
- QoS 1 messages published while disconnected are queued by paho and sent after reconnecting,
  as are those whose PUBACK never came.

A device runs its one connection in its own thread. A process that runs thousands of agents
(the simulator) passes a `Network` instead, which drives all their connections from one event
loop through the same steps: `open_connection`, `connection_ended`, `retry_delay`.
"""

import contextlib
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from kernex_agent.backoff import Backoff
from kernex_agent.config import MqttConfig
from kernex_agent.counter import PersistentCounter
from kernex_protocol.limits import MAX_PAYLOAD_BYTES
from kernex_protocol.payloads import Presence
from kernex_protocol.topics import CHANNELS, Channel, Direction, parse_topic, topic_for

log = logging.getLogger("kernex_agent.transport")

# TLS alerts by which a broker says it does not accept our certificate.
_CERTIFICATE_REFUSED = frozenset(
    {
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    }
)
# CONNACK reason codes that no retry will change (MQTT 3.1.1 codes 2, 4, 5 and their v5 names).
_CONNACK_PERMANENT = frozenset(
    {
        "Identifier rejected",
        "Client identifier not valid",
        "Bad user name or password",
        "Not authorized",
        "Banned",
    }
)
_TLS_ALERT = re.compile(r"\[SSL: ([A-Z0-9_]+)\]")
_MAX_QUEUED = 1000  # QoS 1 messages kept while offline; beyond that the oldest news is dropped


class Failure(StrEnum):
    """How a failed or lost connection should be treated."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class ConnectionOutcome:
    """Why a connection attempt or a connection ended."""

    failure: Failure
    reason: str


MessageHandler = Callable[[Channel, bytes], None]
PresenceFactory = Callable[[int], Presence]


class Network(Protocol):
    """Keeps the connections of many transports going, in place of a thread each."""

    def attach(self, transport: "MqttTransport") -> None:
        """Start connecting `transport`, and keep it connected until it is stopping."""

    def detach(self, transport: "MqttTransport", timeout: float) -> None:
        """Wait (up to `timeout`) until a stopping transport's connection is closed."""


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """A client context that verifies the broker (chain and host name) and holds our identity."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(config.cert_file), str(config.key_file))
    return context


def classify(exc: BaseException) -> ConnectionOutcome:
    """Tell a connection error that retrying soon will not fix from one it may."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectionOutcome(
            Failure.PERMANENT, f"the broker's certificate is not trusted: {exc.verify_message}"
        )
    if isinstance(exc, ssl.SSLError) and exc.reason in _CERTIFICATE_REFUSED:
        return ConnectionOutcome(
            Failure.PERMANENT, f"the broker refused this device's certificate ({exc.reason})"
        )
    return ConnectionOutcome(Failure.TRANSIENT, f"{type(exc).__name__}: {exc}")


class MqttTransport:
    """One device's connection to the broker, kept up in a background thread."""

    def __init__(
        self,
        config: MqttConfig,
        device_id: str,
        *,
        sessions: PersistentCounter,
        birth: PresenceFactory,
        on_message: MessageHandler,
        on_connected: Callable[[], None] | None = None,
        network: Network | None = None,
    ) -> None:
        self._config = config
        self._network = network
        self._device_id = device_id
        self._sessions = sessions
        self._birth = birth
        self._on_message_cb = on_message
        self._on_connected_cb = on_connected
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._stopping = threading.Event()
        self._paused = threading.Event()
        self._wake = threading.Event()
        self.connected = threading.Event()
        self._connack_failure: ConnectionOutcome | None = None
        self._last_socket_error = ""
        self._permanent_logged: str | None = None  # a permanent refusal is logged once
        self._thread: threading.Thread | None = None
        self._context = tls_context(config)  # fails early on unreadable files

        # The broker forces the client id to the certificate's CN; sending it anyway keeps
        # logs on both ends readable. A clean session: our own outbox is paho's queue.
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=device_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.tls_set_context(self._context)
        client.connect_timeout = config.connect_timeout_s
        client.max_queued_messages_set(_MAX_QUEUED)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_log = self._handle_log
        self._client = client

    @property
    def session(self) -> int:
        """The current (or last) session number."""
        return self._sessions.current

    @property
    def client(self) -> mqtt.Client:
        """The paho client, for a `Network` to drive."""
        return self._client

    @property
    def stopping(self) -> bool:
        """Whether stop() was called."""
        return self._stopping.is_set()

    def start(self) -> None:
        """Connect in the background, and stay connected until stop()."""
        if self._network is not None:
            self._network.attach(self)
            return
        self._thread = threading.Thread(target=self._run, name="kernex-mqtt", daemon=True)
        self._thread.start()

    def stop(self, *, timeout: float = 5.0) -> None:
        """Say goodbye (a retained offline presence, so no Last Will is needed) and disconnect."""
        if self.connected.is_set():
            goodbye = Presence(online=False, session=self.session, reason="shutdown")
            info = self.publish(Channel.PRESENCE, goodbye.to_payload())
            # If the connection went away meanwhile, the Last Will says the same.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=min(timeout, 2.0))
        self._stopping.set()
        self._client.disconnect()
        if self._network is not None:
            self._network.detach(self, timeout)
        elif self._thread is not None:
            self._thread.join(timeout)

    def pause(self, *, timeout: float = 10.0) -> bool:
        """Disconnect cleanly and stay away until resume(): the broker allows one connection
        per device, and a self-update's probe needs it for a moment. True once disconnected.
        Only for a transport with its own thread (the simulator's shared network never pauses).
        """
        if self._network is not None:
            raise RuntimeError("a transport on a shared network cannot pause")
        self._paused.set()
        self._client.disconnect()  # a clean DISCONNECT: the broker drops the Last Will
        deadline = time.monotonic() + timeout
        while self.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.connected.is_set()

    def resume(self) -> None:
        """Reconnect after pause()."""
        self._paused.clear()
        self._wake.set()

    def publish(self, channel: Channel, payload: bytes) -> mqtt.MQTTMessageInfo:
        """Publish on one of this device's channels, with the channel's QoS and retain flag."""
        spec = CHANNELS[channel]
        if spec.direction != Direction.DEVICE_TO_CLOUD:
            raise ValueError(f"a device does not publish on {channel.value}")
        if len(payload) > MAX_PAYLOAD_BYTES[channel]:
            raise ValueError(f"{channel.value} payload over {MAX_PAYLOAD_BYTES[channel]} bytes")
        return self._client.publish(
            topic_for(self._device_id, channel), payload, qos=spec.qos, retain=spec.retain
        )

    # --- the connection thread -------------------------------------------------------------

    def _run(self) -> None:
        # paho writes to the socket straight from the calling thread when it believes no
        # network thread exists. Other threads (heartbeats, progress) publish too, and two
        # threads writing one TLS socket corrupt the stream (the broker drops the connection
        # with "protocol error"). Declaring this thread as paho's network thread makes
        # publish() only queue the packet and wake this thread's select(), which writes it.
        assert hasattr(self._client, "_thread"), "paho-mqtt changed: review the line below"
        self._client._thread = threading.current_thread()
        while not self._stopping.is_set():
            if self._paused.is_set():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            outcome = self.open_connection()
            if outcome is None:
                while not self._stopping.is_set():
                    if self._client.loop(timeout=1.0) != mqtt.MQTT_ERR_SUCCESS:
                        break
                outcome = self.connection_ended()
            if self._stopping.is_set():
                break
            if self._paused.is_set():
                log.info("mqtt.paused")
                continue
            self._stopping.wait(self.retry_delay(outcome))

    # --- the steps of a connection's life, for this thread or a Network ----------------------

    def open_connection(self) -> ConnectionOutcome | None:
        """Start a session: the Last Will, then TCP, TLS and CONNECT (blocking, up to the
        connect timeout). None when the socket is up; otherwise why it failed."""
        session = self._sessions.advance()
        last_will = Presence(online=False, session=session, reason="lost")
        self._client.will_set(
            topic_for(self._device_id, Channel.PRESENCE),
            last_will.to_payload(),
            qos=CHANNELS[Channel.PRESENCE].qos,
            retain=True,
        )
        self._connack_failure = None
        self._last_socket_error = ""
        try:
            # Re-read the certificate and key: a renewal replaces them on disk.
            self._context.load_cert_chain(str(self._config.cert_file), str(self._config.key_file))
            self._client.connect(
                self._config.host, self._config.port, keepalive=self._config.keepalive_s
            )
        except (OSError, ssl.SSLError) as exc:
            return classify(exc)
        return None

    def connection_ended(self) -> ConnectionOutcome:
        """Why the connection opened by open_connection() has closed."""
        self.connected.clear()
        refused = self._refusal()
        if refused is not None:
            return refused
        # With TLS 1.3 the broker judges our certificate after the handshake has completed on
        # our side, so its refusal arrives as an alert on the first read, which paho reports
        # only through its log.
        alert = _TLS_ALERT.search(self._last_socket_error)
        if alert is not None and alert[1] in _CERTIFICATE_REFUSED:
            return ConnectionOutcome(
                Failure.PERMANENT, f"the broker refused this device's certificate ({alert[1]})"
            )
        return ConnectionOutcome(Failure.TRANSIENT, "the connection was lost")

    def retry_delay(self, outcome: ConnectionOutcome) -> float:
        """Log why the connection failed or ended, and say how long to wait before retrying."""
        if outcome.failure == Failure.PERMANENT:
            delay = self._config.reconnect_max_s
            if outcome.reason != self._permanent_logged:
                log.error(
                    "mqtt.connection_refused",
                    extra={"failure": "permanent", "reason": outcome.reason, "retry_s": delay},
                )
                self._permanent_logged = outcome.reason
            return delay
        delay = self._backoff.next_delay()
        self._permanent_logged = None
        log.warning(
            "mqtt.connection_lost",
            extra={"failure": "transient", "reason": outcome.reason, "retry_s": round(delay, 2)},
        )
        return delay

    def _refusal(self) -> ConnectionOutcome | None:
        """The broker's CONNACK refusal in the attempt just ended, if there was one."""
        return self._connack_failure

    def _handle_log(self, client: mqtt.Client, userdata: object, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self._last_socket_error = text

    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            failure = (
                Failure.PERMANENT
                if reason_code.getName() in _CONNACK_PERMANENT
                else Failure.TRANSIENT
            )
            self._connack_failure = ConnectionOutcome(
                failure, f"the broker refused the connection: {reason_code.getName()}"
            )
            client.disconnect()
            return
        self._backoff.reset()
        # Subscriptions do not survive a clean session: make them on every connect.
        for channel in (Channel.DEPLOYMENT, Channel.URL_RESPONSE):
            client.subscribe(topic_for(self._device_id, channel), qos=CHANNELS[channel].qos)
        client.publish(
            topic_for(self._device_id, Channel.PRESENCE),
            self._birth(self.session).to_payload(),
            qos=CHANNELS[Channel.PRESENCE].qos,
            retain=True,
        )
        self.connected.set()
        log.info("mqtt.connected", extra={"session": self.session, "broker": self._config.host})
        if self._on_connected_cb is not None:
            self._on_connected_cb()

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()

    def _handle_message(
        self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage
    ) -> None:
        parsed = parse_topic(message.topic)
        if parsed is None or parsed.device_id != self._device_id:
            log.warning("mqtt.unexpected_topic", extra={"topic": message.topic[:128]})
            return
        if CHANNELS[parsed.channel].direction != Direction.CLOUD_TO_DEVICE:
            return
        if len(message.payload) > MAX_PAYLOAD_BYTES[parsed.channel]:
            log.warning(
                "mqtt.oversized_payload",
                extra={"channel": parsed.channel.value, "bytes": len(message.payload)},
            )
            return
        try:
            self._on_message_cb(parsed.channel, bytes(message.payload))
        except Exception:  # a bug in a handler must not kill the network thread
            log.exception("mqtt.handler_failed", extra={"channel": parsed.channel.value})

"""The simulator's shared network: many agents' connections in one thread, against the real
broker with our mTLS config, living the transport's own connection life (presence sessions,
reconnecting after the network drops, a refused certificate retried at the longest delay, a
clean goodbye on stop)."""

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kernex_agent.config import MqttConfig
from kernex_agent.counter import PersistentCounter
from kernex_agent.transport import MqttTransport
from kernex_devstack.broker import EmbeddedBroker
from kernex_protocol.payloads import Presence
from kernex_protocol.topics import Channel, subscription_for_all, topic_for
from kernex_provision.authority import CertificateAuthority
from kernex_sim.network import SharedNetwork
from tests.conftest import Connector, IdentityFactory
from tests.integration.agent.harness import TcpRelay
from tests.integration.mqtt_client import Identity, Probe

pytestmark = pytest.mark.integration

DEVICES = 40
GOODBYE_OF_SESSION_2 = {"v": 1, "online": False, "session": 2, "reason": "shutdown"}


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


class SimulatedDevice:
    """A transport on the shared network, and what it received."""

    def __init__(self, identity: Identity, port: int, state: Path, network: SharedNetwork) -> None:
        self.device_id = identity.name
        self.received: list[tuple[Channel, bytes]] = []
        assert identity.cert_file is not None and identity.key_file is not None
        config = MqttConfig(
            host="localhost",
            port=port,
            ca_file=identity.ca_file,
            cert_file=identity.cert_file,
            key_file=identity.key_file,
            reconnect_min_s=0.2,
            reconnect_max_s=2.0,
            connect_timeout_s=5.0,
        )
        state.mkdir(parents=True)
        self.transport = MqttTransport(
            config,
            identity.name,
            sessions=PersistentCounter(state / "session"),
            birth=lambda session: Presence(online=True, session=session),
            on_message=lambda channel, payload: self.received.append((channel, payload)),
            network=network,
        )


@pytest.fixture
def relay(broker: EmbeddedBroker) -> Iterator[TcpRelay]:
    server = TcpRelay(broker.port)
    yield server
    server.close()


@pytest.fixture
def watcher(service_identity: Identity, mqtt_connect: Connector) -> Probe:
    probe = mqtt_connect(service_identity)
    assert probe.connected.is_set(), probe.error
    probe.subscribe(subscription_for_all(Channel.PRESENCE))
    probe.subscribe(subscription_for_all(Channel.HEARTBEAT))
    return probe


def presence(
    probe: Probe, seen: dict[str, list[dict[str, object]]]
) -> dict[str, list[dict[str, object]]]:
    """Collect the presence messages that arrived into `seen`, by device; returns `seen`."""
    for message in probe.drain():
        if message.topic.endswith("/presence"):
            device_id = message.topic.split("/")[-2]
            seen.setdefault(device_id, []).append(json.loads(message.payload))
    return seen


def test_many_connections_share_one_thread_and_live_the_transport_life(
    issue: IdentityFactory,
    relay: TcpRelay,
    watcher: Probe,
    tmp_path: Path,
) -> None:
    prefix = f"net-{uuid.uuid4().hex[:6]}"
    network = SharedNetwork(connect_workers=4)
    devices = [
        SimulatedDevice(issue(f"{prefix}-{i:03d}"), relay.port, tmp_path / f"d{i}", network)
        for i in range(DEVICES)
    ]
    stranger_ca = CertificateAuthority.initialise(tmp_path / "stranger-ca", organization="Evil")
    refused = SimulatedDevice(
        issue(f"{prefix}-stranger", authority=stranger_ca), relay.port, tmp_path / "s", network
    )
    seen: dict[str, list[dict[str, object]]] = {}
    try:
        for device in [*devices, refused]:
            device.transport.start()
        wait_until(lambda: all(d.transport.connected.is_set() for d in devices))
        assert network.connections == DEVICES
        # One network thread and a small connect pool, not a thread per connection.
        names = [t.name for t in threading.enumerate()]
        assert "kernex-mqtt" not in names
        assert sum(n.startswith("sim-network") for n in names) <= 1 + 4

        # Both directions: a notice reaches each device, each device's heartbeat arrives.
        for device in devices:
            watcher.publish(topic_for(device.device_id, Channel.DEPLOYMENT), b"notice")
            device.transport.publish(Channel.HEARTBEAT, b'{"hello": 1}')
        wait_until(lambda: all(d.received == [(Channel.DEPLOYMENT, b"notice")] for d in devices))

        # The network drops: every device comes back by itself, as session 2.
        relay.cut()
        wait_until(lambda: not any(d.transport.connected.is_set() for d in devices))
        relay.restore()
        wait_until(lambda: all(d.transport.connected.is_set() for d in devices))
        assert all(d.transport.session == 2 for d in devices)
        wait_until(
            lambda: all(
                latest.get(d.device_id, [{}])[-1].get("session") == 2
                for latest in [presence(watcher, seen)]
                for d in devices
            )
        )
        # A certificate from another CA never connects, however often it is retried.
        assert not refused.transport.connected.is_set()
    finally:
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:  # agents stop from their own event loops
            list(pool.map(lambda d: d.transport.stop(timeout=5.0), [*devices, refused]))
        stop_s = time.monotonic() - started
        network.close()
    # Every device said goodbye for its session; the refused one was not left waiting.
    wait_until(
        lambda: all(
            latest[d.device_id][-1] == GOODBYE_OF_SESSION_2
            for latest in [presence(watcher, seen)]
            for d in devices
        )
    )
    assert stop_s < 10.0
    assert network.connections == 0
    assert refused.device_id not in seen

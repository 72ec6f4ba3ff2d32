"""deploy/nftables/kernex-broker.nft, loaded for real in front of our broker: one source address
reconnecting in a loop is held to the limit, while a device from another address connects."""

import select
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernex_devstack.broker import EmbeddedBroker
from kernex_protocol.topics import Channel, topic_for
from tests.conftest import Connector, IdentityFactory
from tests.integration.mqtt_client import Probe

RULES = Path(__file__).parents[3] / "deploy" / "nftables" / "kernex-broker.nft"
ATTACKER = "127.0.0.2"  # all of 127/8 is this host's loopback: a second source address
BURST = 100  # as in the rules file


def nft(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nft", *args], input=stdin, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.fixture
def rate_limited(broker: EmbeddedBroker) -> Iterator[str]:
    """The shipped rules, for the test broker's port, in a table of this test's own."""
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed (scripts/bootstrap.sh installs nftables as root)")
    table = f"kernex_test_{uuid.uuid4().hex[:8]}"
    text = RULES.read_text()
    assert "define KERNEX_MQTT_PORT = 8883" in text
    text = text.replace(
        "define KERNEX_MQTT_PORT = 8883", f"define KERNEX_MQTT_PORT = {broker.port}"
    )
    loaded = nft("-f", "-", stdin=text.replace("kernex_broker", table))
    if loaded.returncode != 0:
        pytest.skip(f"cannot load nftables rules here (needs CAP_NET_ADMIN): {loaded.stderr}")
    try:
        yield table
    finally:
        nft("delete", "table", "inet", table)


def handshakes_from(source: str, port: int, attempts: int, wait_s: float) -> int:
    """Open `attempts` TCP connections from `source` at once; how many were accepted."""
    sockets = []
    for _ in range(attempts):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((source, 0))
        sock.connect_ex(("127.0.0.1", port))
        sockets.append(sock)
    deadline = time.monotonic() + wait_s
    connected: set[socket.socket] = set()
    while time.monotonic() < deadline and len(connected) < attempts:
        _, writable, _ = select.select([], [s for s in sockets if s not in connected], [], 0.05)
        connected.update(
            s for s in writable if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        )
    for sock in sockets:
        sock.close()
    return len(connected)


@pytest.mark.reliability(
    "Hostile devices",
    "a reconnect loop held at the network edge (deploy/nftables/kernex-broker.nft)",
    "one source address gets a burst of 100 then 20 new connections a second; a device from"
    " another address connects and is heard meanwhile",
)
def test_new_connections_are_limited_per_source_address(
    broker: EmbeddedBroker,
    rate_limited: str,
    issue: IdentityFactory,
    mqtt_connect: Connector,
    backend: Probe,
    figures: dict[str, object],
) -> None:
    started = time.monotonic()
    accepted = handshakes_from(ATTACKER, broker.port, 400, wait_s=1.0)
    elapsed = time.monotonic() - started
    figures["connections accepted of 400 at once from one address"] = accepted
    assert accepted >= BURST / 2, "the limit refuses far more than its burst"
    assert accepted <= BURST + 20 * elapsed + 10, f"{accepted} accepted in {elapsed:.1f} s"
    counters = nft("list", "table", "inet", rate_limited).stdout
    assert "counter packets 0 " not in counters.split("update @new_v4")[1].split("\n")[0]

    # A device from another address is not held back by the attacker's limit.
    name = f"neighbour-{uuid.uuid4().hex[:8]}"
    device = mqtt_connect(issue(name))
    assert device.connected.is_set(), device.error
    backend.subscribe(topic_for(name, Channel.HEARTBEAT))
    device.publish(topic_for(name, Channel.HEARTBEAT), b"through")
    backend.wait_for(topic_for(name, Channel.HEARTBEAT), b"through")

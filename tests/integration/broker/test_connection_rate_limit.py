"""deploy/nftables/kernex-broker.nft, loaded for real: one source address opening connections in
a loop is held to the limit; connections already open (also those open before the rules were
loaded, and more of them than the burst) and other addresses are not touched.

The rules are keyed to a port only, so they are loaded here for an echo server's port: what is
tested is the rule, not the broker behind it (bench/attack_benchmark.py --edge-limit measures
them in front of the broker)."""

import contextlib
import select
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

RULES = Path(__file__).parents[3] / "deploy" / "nftables" / "kernex-broker.nft"
ATTACKER = "127.0.0.2"  # all of 127/8 is this host's loopback: a second source address
BURST, PER_S = 100, 20  # as in the rules file


def nft(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nft", *args], input=stdin, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP server that echoes what it reads, on a free port."""
    server = socket.create_server(("127.0.0.1", 0), backlog=1024)
    stopping = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stopping.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(64):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stopping.set()
    thread.join(5)
    server.close()


def load_rules(port: int) -> str:
    """The shipped rules for `port`, in a table of this test's own; its name."""
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed (scripts/bootstrap.sh installs nftables as root)")
    table = f"kernex_test_{uuid.uuid4().hex[:8]}"
    text = RULES.read_text()
    assert "define KERNEX_MQTT_PORT = 8883" in text
    text = text.replace("define KERNEX_MQTT_PORT = 8883", f"define KERNEX_MQTT_PORT = {port}")
    loaded = nft("-f", "-", stdin=text.replace("kernex_broker", table))
    if loaded.returncode != 0:
        pytest.skip(f"cannot load nftables rules here (needs CAP_NET_ADMIN): {loaded.stderr}")
    return table


def open_from(source: str, port: int, count: int, wait_s: float) -> list[socket.socket]:
    """Start `count` connections from `source` at once; those accepted within `wait_s`."""
    pending = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((source, 0))
        sock.connect_ex(("127.0.0.1", port))
        pending.append(sock)
    deadline = time.monotonic() + wait_s
    connected: list[socket.socket] = []
    while pending and time.monotonic() < deadline:
        _, writable, _ = select.select([], pending, [], 0.05)
        for sock in writable:
            pending.remove(sock)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                connected.append(sock)
            else:
                sock.close()
    for sock in pending:
        sock.close()
    return connected


def echoes(connections: list[socket.socket]) -> int:
    """How many of `connections` carry a byte there and back within 2 s."""
    for sock in connections:
        sock.setblocking(True)
        sock.settimeout(2)
        sock.sendall(b"x")
    answered = 0
    for sock in connections:
        with contextlib.suppress(OSError):
            answered += sock.recv(1) == b"x"
    return answered


@pytest.mark.reliability(
    "Hostile devices",
    "a reconnect loop held at the network edge (deploy/nftables/kernex-broker.nft)",
    "one source address gets its burst, then 20 new connections a second; connections already"
    " open and other addresses are untouched",
)
def test_new_connections_are_limited_per_source_address(
    echo_port: int, figures: dict[str, object]
) -> None:
    # More open connections than the burst, from the address about to be limited, opened
    # before the rules exist (their next packets are the first the rules see of them).
    established = open_from(ATTACKER, echo_port, 2 * BURST, wait_s=5)
    assert len(established) == 2 * BURST
    table = load_rules(echo_port)
    try:
        started = time.monotonic()
        burst = open_from(ATTACKER, echo_port, 4 * BURST, wait_s=1.0)
        elapsed = time.monotonic() - started
        figures["new connections accepted of 400 at once from one address"] = len(burst)
        assert len(burst) >= BURST / 2, "the limit refuses far more than its burst"
        assert len(burst) <= BURST + PER_S * elapsed + 10, f"{len(burst)} in {elapsed:.1f} s"
        # Connections that were open before, and those let in, all carry traffic.
        assert echoes(established) == len(established)
        assert echoes(burst) == len(burst)
        # Another address is not held back by this one's limit.
        neighbour = open_from("127.0.0.1", echo_port, 5, wait_s=2)
        assert echoes(neighbour) == 5
        listing = nft("list", "table", "inet", table).stdout
        assert (
            "update @new_v4" in listing
            and "counter packets 0 " not in listing.split("update @new_v4")[1].split("\n")[0]
        )
        for sock in [*established, *burst, *neighbour]:
            sock.close()
    finally:
        nft("delete", "table", "inet", table)

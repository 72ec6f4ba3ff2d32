"""Ports for embedded services: never from the pool outgoing connections draw on."""

import socket
from pathlib import Path

import pytest

from kernex_devstack import ports


def test_free_ports_stay_outside_the_ephemeral_range_and_are_never_repeated() -> None:
    range_file = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low, high = (int(part) for part in range_file.read_text().split())
    chosen = [ports.free_port() for _ in range(300)]
    assert len(set(chosen)) == len(chosen)
    assert all(not low <= port <= high for port in chosen)
    assert all(port >= 10000 for port in chosen)


def test_a_chosen_port_can_be_bound_by_a_service() -> None:
    port = ports.free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


def test_a_port_in_use_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy_port = busy.getsockname()[1]
        monkeypatch.setattr(ports, "candidate_ports", lambda: [busy_port, busy_port + 1])
        monkeypatch.setattr(ports, "_handed_out", set())
        assert ports.free_port() == busy_port + 1

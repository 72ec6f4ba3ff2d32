"""Free TCP ports on the loopback interface.

Ports are drawn from outside the kernel's ephemeral range. A port the kernel hands out for
`bind(0)` comes from the same pool it uses for outgoing connections, so between choosing it and
the service binding it, any client connecting somewhere (a database driver, a broker peer) can
take it: CI saw Mosquitto fail with "Address already in use" that way. Below or above that range
only another listener can collide, and this process never hands out the same port twice.
"""

import functools
import random
import socket
import threading
import time
from pathlib import Path

_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000  # stay clear of well-known and commonly configured service ports
_HIGHEST = 65535
_handed_out: set[int] = set()
_lock = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(part) for part in _EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


@functools.cache
def candidate_ports() -> tuple[int, ...]:
    """Ports `free_port` may choose: from _LOWEST up, outside the ephemeral range."""
    low, high = _ephemeral_range()
    return tuple(port for port in range(_LOWEST, _HIGHEST + 1) if not low <= port <= high)


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now and that no outgoing connection will
    take before a service binds it."""
    candidates = candidate_ports()
    rng = random.SystemRandom()
    with _lock:
        for _ in range(200):
            port = rng.choice(candidates)
            if port not in _handed_out and _bindable(host, port):
                _handed_out.add(port)
                return port
    raise OSError(f"no free TCP port on {host} outside the ephemeral range")


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """Wait until something accepts TCP connections on host:port; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False

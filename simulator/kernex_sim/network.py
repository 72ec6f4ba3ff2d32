"""Many agents' MQTT connections driven from one thread, over epoll.

A device's agent gives its connection a thread of its own that waits in `select()`. Thousands of
simulated devices in one process cannot live like that: thousands of threads each waking every
second fight over one interpreter lock, and `select()` cannot watch descriptors above 1023. This
network runs paho's external-loop interface instead: one thread waits on every socket with the
platform's selector (epoll on Linux), reads and writes what is ready, and runs keepalives once a
second. Connecting (TCP, TLS handshake, CONNECT) blocks, so a small pool does it.

The connection's life is the transport's own: `open_connection`, `connection_ended` and
`retry_delay` are the steps its thread would take, so simulated devices reconnect, back off and
tell permanent from transient failures exactly as real ones do.

paho calls the socket callbacks from whichever thread it is in (the pool when a socket opens,
the agent's loop when a publish wants writing); they only queue a command for the network
thread, which alone touches the selector.
"""

import contextlib
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kernex_agent.transport import ConnectionOutcome, Failure, MqttTransport

log = logging.getLogger("kernex_sim.network")

_MISC_EVERY_S = 1.0  # keepalive pings and their timeouts, for every connection


@dataclass(eq=False, slots=True)
class _Link:
    """One transport, as the network thread sees it."""

    transport: MqttTransport
    sock: Any = None  # the socket paho opened, while it is open
    writing: bool = False
    connecting: bool = False  # an attempt is running in the pool
    retry: int | None = None  # the timer of the next attempt
    closed: threading.Event = field(default_factory=threading.Event)


class SharedNetwork:
    """Runs the MQTT connections of many transports in one thread."""

    def __init__(self, *, connect_workers: int = 4, name: str = "sim-network") -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._commands: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._sequence = itertools.count()
        self._links: dict[int, _Link] = {}  # by id(transport)
        self._connectors = ThreadPoolExecutor(connect_workers, thread_name_prefix=f"{name}-tls")
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- the Network protocol (any thread) -------------------------------------------------

    def attach(self, transport: MqttTransport) -> None:
        link = _Link(transport)
        client = transport.client
        client.on_socket_open = lambda c, u, sock: self._post(lambda: self._opened(link, sock))
        client.on_socket_close = lambda c, u, sock: self._post(lambda: self._closed(link))
        client.on_socket_register_write = lambda c, u, sock: self._post(
            lambda: self._want_write(link, True)
        )
        client.on_socket_unregister_write = lambda c, u, sock: self._post(
            lambda: self._want_write(link, False)
        )
        self._links[id(transport)] = link
        self._post(lambda: self._start_attempt(link))

    def detach(self, transport: MqttTransport, timeout: float) -> None:
        link = self._links.get(id(transport))
        if link is None:
            return
        self._post(lambda: self._settle(link))
        link.closed.wait(timeout)

    def close(self) -> None:
        """Stop the network thread (transports should be stopped first)."""
        self._closing = True
        self._wake()
        self._thread.join(5.0)
        self._connectors.shutdown(wait=False, cancel_futures=True)
        self._selector.close()
        self._wake_read.close()
        self._wake_write.close()

    @property
    def connections(self) -> int:
        """How many sockets are open."""
        return sum(link.sock is not None for link in list(self._links.values()))

    # --- commands, run on the network thread -----------------------------------------------

    def _post(self, command: Callable[[], None]) -> None:
        self._commands.append(command)
        if threading.current_thread() is not self._thread:
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_write.send(b"\0")

    def _start_attempt(self, link: _Link) -> None:
        link.retry = None
        if link.transport.stopping:
            self._finish(link)
            return
        link.connecting = True
        self._connectors.submit(self._connect_in_pool, link)

    def _connect_in_pool(self, link: _Link) -> None:
        try:
            outcome = link.transport.open_connection()
        except Exception:  # a bug must not leave the device silently offline forever
            log.exception("sim.connect_failed", extra={"transport": id(link.transport)})
            outcome = ConnectionOutcome(Failure.TRANSIENT, "connecting raised an exception")
        self._post(lambda: self._attempt_done(link, outcome))

    def _attempt_done(self, link: _Link, outcome: ConnectionOutcome | None) -> None:
        link.connecting = False
        if outcome is None and link.sock is None:  # opened, and closed again at once
            outcome = link.transport.connection_ended()
        if outcome is not None:
            self._schedule_retry(link, outcome)
        elif link.transport.stopping:  # stop() came while connecting: close now
            link.transport.client.disconnect()

    def _opened(self, link: _Link, sock: Any) -> None:
        link.sock = sock
        link.writing = link.transport.client.want_write()
        self._selector.register(sock, self._events(link), link)

    def _closed(self, link: _Link) -> None:
        if link.sock is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(link.sock)
        link.sock = None
        link.writing = False
        if link.connecting:  # the attempt's end decides what comes next
            return
        outcome = link.transport.connection_ended()
        self._schedule_retry(link, outcome)

    def _settle(self, link: _Link) -> None:
        """A stopping transport with no socket and no attempt running is done."""
        if link.retry is not None:
            self._cancelled.add(link.retry)
            link.retry = None
        if link.sock is None and not link.connecting:
            self._finish(link)

    def _finish(self, link: _Link) -> None:
        self._links.pop(id(link.transport), None)
        link.closed.set()

    def _schedule_retry(self, link: _Link, outcome: ConnectionOutcome) -> None:
        if link.transport.stopping:
            self._finish(link)
            return
        delay = link.transport.retry_delay(outcome)
        link.retry = self._call_later(delay, lambda: self._start_attempt(link))

    def _want_write(self, link: _Link, writing: bool) -> None:
        if link.sock is None or link.writing == writing:
            return
        link.writing = writing
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.modify(link.sock, self._events(link), link)

    @staticmethod
    def _events(link: _Link) -> int:
        return selectors.EVENT_READ | (selectors.EVENT_WRITE if link.writing else 0)

    def _call_later(self, delay: float, command: Callable[[], None]) -> int:
        token = next(self._sequence)
        heapq.heappush(self._timers, (time.monotonic() + delay, token, command))
        return token

    # --- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        next_misc = time.monotonic() + _MISC_EVERY_S
        while not self._closing:
            now = time.monotonic()
            due = min(next_misc, self._timers[0][0] if self._timers else next_misc)
            timeout = 0.0 if self._commands else max(0.0, due - now)
            for key, events in self._selector.select(timeout):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_read.recv(4096)
                    continue
                self._serve(key.data, events)
            self._run_commands()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, token, command = heapq.heappop(self._timers)
                if token in self._cancelled:
                    self._cancelled.discard(token)
                else:
                    command()
            if now >= next_misc:
                next_misc = now + _MISC_EVERY_S
                self._misc()
                self._run_commands()

    def _run_commands(self) -> None:
        while self._commands:
            command = self._commands.popleft()
            try:
                command()
            except Exception:
                log.exception("sim.network_command_failed")

    def _serve(self, link: _Link, events: int) -> None:
        client = link.transport.client
        try:
            if events & selectors.EVENT_READ:
                client.loop_read()
            if events & selectors.EVENT_WRITE and link.sock is not None:
                client.loop_write()
        except Exception:
            log.exception("sim.network_io_failed")

    def _misc(self) -> None:
        for link in list(self._links.values()):
            if link.sock is None:
                continue
            client = link.transport.client
            try:
                client.loop_misc()
                # A publish from another thread can slip between paho's "nothing left to
                # write" and its unregistering; whatever is still queued goes out here.
                if link.sock is not None and client.want_write():
                    client.loop_write()
            except Exception:
                log.exception("sim.network_misc_failed")

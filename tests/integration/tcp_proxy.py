"""A TCP proxy for network faults: it forwards a local port to a target and can be told to
stall (hold every byte, connections left open), trickle (a few hundred bytes a second), or go
down (drop every connection and refuse new ones), then to pass again."""

import contextlib
import socket
import threading
import time
from typing import Literal

Mode = Literal["pass", "stall", "trickle", "down"]
TRICKLE_BYTES_PER_S = 512
_CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.mode: Mode = "pass"
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "TcpProxy":
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()
        return self

    def set(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "down":
            self._drop_all()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self._drop_all()

    def _drop_all(self) -> None:
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "down":
                client.close()  # refused: what a client of a dead server sees
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, target), daemon=True, name="proxy-pump"
                ).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                view = memoryview(data)
                while view:
                    mode = self.mode  # read once a step: the test may change it any time
                    if mode == "down":
                        return
                    if mode == "stall":
                        time.sleep(0.05)
                    elif mode == "trickle":
                        step = TRICKLE_BYTES_PER_S // 4
                        target.sendall(view[:step])
                        view = view[step:]
                        time.sleep(0.25)
                    else:
                        target.sendall(view)
                        break
        except OSError:
            pass
        finally:
            for sock in (source, target):  # wakes the other direction's pump too
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.difference_update((source, target))
            source.close()
            target.close()

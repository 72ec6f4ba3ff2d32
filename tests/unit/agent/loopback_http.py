"""A loopback HTTP(S) server speaking just enough HTTP/1.1 to serve a body, resume it, or
misbehave: real sockets, for the download tests."""

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

BODY = bytes(range(256)) * 40  # 10,240 bytes

Behaviour = Callable[[socket.socket, bytes], None]


@contextmanager
def server(behaviour: Behaviour, *, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serve every connection with `behaviour(connection, request)` until the block ends; over
    TLS with `tls` (a server context), and then a client that refuses the handshake is simply
    gone."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            # OSError (SSLError among them): the client cut us off or refused our certificate,
            # which is what some tests want.
            with connection, contextlib.suppress(OSError):
                connection.settimeout(10)
                stream = (
                    connection if tls is None else tls.wrap_socket(connection, server_side=True)
                )
                with stream:
                    stream.settimeout(None)
                    behaviour(stream, stream.recv(65536))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    scheme = "http" if tls is None else "https"
    try:
        yield f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/bundle?X-Amz-Signature=secret"
    finally:
        done.set()
        thread.join()
        listener.close()


def _headers(length: int, status: str = "200 OK", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


def drip(interval_s: float) -> Behaviour:
    def behaviour(connection: socket.socket, _: bytes) -> None:
        connection.sendall(_headers(len(BODY)))
        for i in range(len(BODY)):
            connection.sendall(BODY[i : i + 1])
            time.sleep(interval_s)

    return behaviour


def stall_after(count: int) -> Behaviour:
    def behaviour(connection: socket.socket, _: bytes) -> None:
        connection.sendall(_headers(len(BODY)) + BODY[:count])
        connection.settimeout(30)
        connection.recv(1)  # until the client goes away

    return behaviour


def slow_headers(connection: socket.socket, _: bytes) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
        connection.sendall(bytes([byte]))
        time.sleep(0.2)


def ranged(connection: socket.socket, request: bytes) -> None:
    start = 0
    for line in request.decode().split("\r\n"):
        if line.lower().startswith("range: bytes="):
            start = int(line.split("=")[1].rstrip("-"))
    if start:
        head = _headers(
            len(BODY) - start,
            "206 Partial Content",
            f"Content-Range: bytes {start}-{len(BODY) - 1}/{len(BODY)}\r\n",
        )
    else:
        head = _headers(len(BODY))
    connection.sendall(head + BODY[start:])

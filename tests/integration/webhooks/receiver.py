"""A real HTTP receiver for webhook tests: it checks every signature like a customer's
receiver would, and can be told to fail (answer 503) or to go away entirely."""

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kernex_backend.webhooks import signing


@dataclass
class Received:
    event_id: str
    event_type: str
    body: dict[str, Any]
    signature_ok: bool


@dataclass
class Receiver:
    """Listens on 127.0.0.1; `secret` is set once the webhook exists."""

    secret: str = ""
    failing: bool = False
    received: list[Received] = field(default_factory=list)
    refused: int = 0

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.failing:
                    receiver.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                ok = signing.verify(
                    receiver.secret,
                    self.headers[signing.SIGNATURE_HEADER],
                    self.headers[signing.TIMESTAMP_HEADER],
                    body,
                    now=time.time(),
                )
                receiver.received.append(
                    Received(
                        self.headers[signing.ID_HEADER],
                        self.headers[signing.EVENT_HEADER],
                        json.loads(body),
                        ok,
                    )
                )
                self.send_response(204 if ok else 401)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/kernex"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""`kernex-provision emqx-sync`, the EMQX side of revocation, run as a process against a stand-in
for EMQX's management API (an HTTP server in this test that records what it is asked and checks
the API key): on start it pushes the rendered rules; after a revocation written the way the
backend writes it, it pushes the new rules and kicks the revoked device within a second or two;
while EMQX answers errors it retries until it is in step. No EMQX runs here: that these are the
right calls for EMQX 5 is from its documentation, not from a run (docs/security.md)."""

import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kernex_provision.broker import BrokerLayout, publish_revocations
from kernex_provision.emqx_sync import blocked_identities
from tests.unit.test_broker_runner import wait_for
from tests.unit.test_emqx_config import rendered

BIN = Path(sys.executable).parent
KEY, SECRET = "kernex-sync", "s3cret-value"


class StandIn(ThreadingHTTPServer):
    """Records (method, path, body); answers 503 while `failures` is above zero."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.calls: list[tuple[str, str, dict[str, object] | None]] = []
        self.failures = 0
        self.unauthorised = 0


class Handler(BaseHTTPRequestHandler):
    server: StandIn

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        expected = "Basic " + base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.server.unauthorised += 1
            self.send_response(401)
        elif self.server.failures > 0:
            self.server.failures -= 1
            self.send_response(503)
        else:
            self.server.calls.append((self.command, self.path, body))
            self.send_response(204 if self.command == "PUT" else 404)
        self.end_headers()

    do_PUT = _answer
    do_DELETE = _answer

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def emqx_api() -> Iterator[StandIn]:
    server = StandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_pushes_rules_and_kicks_a_revoked_device(tmp_path: Path, emqx_api: StandIn) -> None:
    _, acl, authority = rendered(tmp_path)  # bad-1 is revoked already, good-1 is not
    key_file = tmp_path / "emqx-api-key"
    key_file.write_text(f"{KEY}:{SECRET}\n")
    emqx_api.failures = 2  # EMQX not answering yet when the companion starts
    sync = subprocess.Popen(
        [
            str(BIN / "kernex-provision"),
            "emqx-sync",
            "--broker-dir",
            str(acl.parent),
            "--api",
            f"http://127.0.0.1:{emqx_api.server_address[1]}",
            "--api-key-file",
            str(key_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: ("DELETE", "/api/v5/clients/bad-1", None) in emqx_api.calls)
        put, path, body = emqx_api.calls[0]
        assert (put, path) == ("PUT", "/api/v5/authorization/sources/file")
        assert body is not None and body["type"] == "file" and body["enable"] is True
        assert body["rules"] == acl.read_text()
        assert emqx_api.unauthorised == 0

        # The backend revokes good-1: CRL and ACLs rewritten in the broker directory.
        authority.revoke(common_name="good-1")
        started = time.monotonic()
        publish_revocations(authority, BrokerLayout(acl.parent))
        assert blocked_identities(acl.read_text()) == {"bad-1", "good-1"}
        wait_for(lambda: ("DELETE", "/api/v5/clients/good-1", None) in emqx_api.calls)
        assert time.monotonic() - started < 3.0
        pushed = [b for m, _, b in emqx_api.calls if m == "PUT"]
        assert pushed[-1] is not None and '{deny, {user, "good-1"}, all, ["#"]}.' in str(
            pushed[-1]["rules"]
        )
        # Each device kicked once, the rules pushed once per change.
        kicks = [p for m, p, _ in emqx_api.calls if m == "DELETE"]
        assert sorted(kicks) == ["/api/v5/clients/bad-1", "/api/v5/clients/good-1"]
        assert len(pushed) == 2
    finally:
        sync.terminate()
        _, stderr = sync.communicate(timeout=10)
    assert "retrying" in stderr  # the two 503s were retried, not fatal


def test_refuses_a_key_file_without_a_secret(tmp_path: Path) -> None:
    _, acl, _ = rendered(tmp_path)
    key_file = tmp_path / "emqx-api-key"
    key_file.write_text("only-a-key\n")
    result = subprocess.run(
        [
            str(BIN / "kernex-provision"),
            "emqx-sync",
            "--broker-dir",
            str(acl.parent),
            "--api",
            "http://127.0.0.1:9",
            "--api-key-file",
            str(key_file),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode != 0 and "KEY:SECRET" in result.stderr

"""The EMQX half of revocation: push the rendered ACL to EMQX and kick revoked clients.

On Mosquitto one SIGHUP re-reads the CRL and the ACL and takes a live session's access away
(broker_runner.py). EMQX needs two calls to its REST API instead (docs/security.md):

- `PUT /api/v5/authorization/sources/file` with the ACL text: EMQX replaces the file source's
  rules at once on every node of the cluster (it keeps its own copy from then on, which is why the
  rules are always pushed, never edited in EMQX);
- `DELETE /api/v5/clients/{clientid}` for every identity newly blocked: the session is closed, and
  a reconnect is refused by the new rules. A 404 (not connected) is success.

`kernex-provision emqx-sync` runs this beside EMQX with the broker directory the backend writes
(a shared volume, as for Mosquitto): it polls acl.conf, and on start and on every change pushes
the rules and kicks whoever was added to the blocked list. A failed call is retried on the next
poll, so EMQX converges once it answers again.
"""

import base64
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from kernex_provision.broker_runner import POLL_INTERVAL_S

_BLOCKED: Final = re.compile(r'^\{deny, \{user, "([^"]+)"\}, all, \["#"\]\}\.$', re.MULTILINE)
REQUEST_TIMEOUT_S: Final = 5.0


class EmqxApiError(RuntimeError):
    """EMQX answered with an error, or did not answer."""


def blocked_identities(acl_text: str) -> set[str]:
    """The identities the rendered ACL denies everything (emqx.py writes one line each)."""
    return set(_BLOCKED.findall(acl_text))


@dataclass(slots=True)
class EmqxApi:
    """The two calls of EMQX 5's management API that revocation needs (API key auth)."""

    base_url: str  # e.g. http://emqx:18083
    api_key: str
    api_secret: str = field(repr=False)

    def _call(self, method: str, path: str, body: object | None = None) -> int:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - the operator's configured EMQX URL
            f"{self.base_url.rstrip('/')}/api/v5{path}", data=data, method=method
        )
        token = base64.b64encode(f"{self.api_key}:{self.api_secret}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError) as exc:
            raise EmqxApiError(f"{method} {path}: {exc}") from None

    def replace_file_rules(self, rules: str) -> None:
        """Replace the file authorization source's rules."""
        status = self._call(
            "PUT", "/authorization/sources/file", {"type": "file", "enable": True, "rules": rules}
        )
        if status not in (200, 204):
            raise EmqxApiError(f"PUT /authorization/sources/file answered {status}")

    def kick(self, client_id: str) -> None:
        """Close `client_id`'s session; not connected is fine."""
        status = self._call("DELETE", f"/clients/{urllib.parse.quote(client_id, safe='')}")
        if status not in (200, 204, 404):
            raise EmqxApiError(f"DELETE /clients/{client_id} answered {status}")


class EmqxSync:
    """Keeps EMQX's rules and sessions in step with the rendered acl.conf."""

    def __init__(self, acl_file: Path, api: EmqxApi, *, say: Callable[[str], None]) -> None:
        self.acl_file = acl_file
        self.api = api
        self.say = say
        self._pushed: str | None = None
        self._kicked: set[str] = set()

    def sync_once(self) -> bool:
        """Push the rules if they changed and kick the newly blocked. True when EMQX is in step."""
        try:
            text = self.acl_file.read_text()
        except OSError as exc:
            self.say(f"emqx-sync: cannot read {self.acl_file}: {exc.strerror}")
            return False
        blocked = blocked_identities(text)
        try:
            if text != self._pushed:
                self.api.replace_file_rules(text)
                self._pushed = text
                self.say(f"emqx-sync: rules pushed ({len(blocked)} blocked identities)")
            for client_id in sorted(blocked - self._kicked):
                self.api.kick(client_id)
                self._kicked.add(client_id)
                self.say(f"emqx-sync: kicked {client_id}")
        except EmqxApiError as exc:
            self.say(f"emqx-sync: {exc}; retrying")
            return False
        # A device let back in (provisioned again) may be kicked again if blocked later.
        self._kicked &= blocked
        return True

    def run(self, *, should_stop: Callable[[], bool], interval_s: float = POLL_INTERVAL_S) -> None:
        """Sync, then poll until `should_stop`."""
        while not should_stop():
            self.sync_once()
            time.sleep(interval_s)

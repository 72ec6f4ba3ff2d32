"""The REST API as the CLI sees it: JSON in and out, every refusal as one ApiError that says
what the server said (its problem type, title and detail), and the exit status it maps to."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import Any

import httpx

from kernex_cli import __version__
from kernex_cli.profiles import Profile

API_PREFIX = "/api/v1"
TIMEOUT_S = 30.0


class Exit(IntEnum):
    """The CLI's exit statuses (cli/README.md)."""

    OK = 0
    REFUSED = 1  # the API refused the request (4xx), or a watched rollout did not succeed
    USAGE = 2  # a bad command line (typer's own)
    NOT_SIGNED_IN = 3  # no URL or key; or the key was refused (401/403)
    UNAVAILABLE = 4  # the server could not be reached, or failed (5xx)


class ApiError(Exception):
    """A request that did not succeed, as one line for a person."""

    def __init__(self, message: str, exit_code: Exit, problem_type: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.problem_type = problem_type


def _error(response: httpx.Response) -> ApiError:
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    problem = str(body.get("type") or "")
    title = str(body.get("title") or response.reason_phrase or "error")
    detail = str(body.get("detail") or "").strip()
    kind = re.split(r"[/:]", problem)[-1] if problem else str(status)
    message = f"{status} {title}" + (f": {detail}" if detail and detail != title else "")
    message += f" [{kind}]"
    if status in (401, 403):
        return ApiError(message, Exit.NOT_SIGNED_IN, problem)
    if status >= 500:
        return ApiError(message, Exit.UNAVAILABLE, problem)
    return ApiError(message, Exit.REFUSED, problem)


class Api:
    """A signed-in client for one profile."""

    def __init__(self, profile: Profile, *, transport: httpx.BaseTransport | None = None) -> None:
        self.profile = profile
        self._client = httpx.Client(
            base_url=profile.url + API_PREFIX,
            headers={
                "Authorization": f"Bearer {profile.api_key}",
                "User-Agent": f"kernex-cli/{__version__}",
            },
            timeout=TIMEOUT_S,
            transport=transport,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send; raise ApiError unless the answer is 2xx."""
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(
                f"cannot reach {self.profile.url}: {exc or type(exc).__name__}", Exit.UNAVAILABLE
            ) from None
        if not response.is_success:
            raise _error(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        """GET and decode JSON (None-valued parameters are left out)."""
        clean = {k: v for k, v in params.items() if v is not None and v != []}
        return self.request("GET", path, params=clean).json()

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        """POST and decode JSON (None for an empty answer)."""
        response = self.request("POST", path, json=json, **kwargs)
        return response.json() if response.content else None

    def patch(self, path: str, json: Any) -> Any:
        """PATCH and decode JSON."""
        return self.request("PATCH", path, json=json).json()

    def delete(self, path: str) -> None:
        """DELETE."""
        self.request("DELETE", path)

    def pages(self, path: str, *, limit: int | None = None, **params: Any) -> list[Any]:
        """Every item of a paginated list (`data`, `count`), up to `limit` items."""
        items: list[Any] = []
        page = 500 if limit is None else min(limit, 500)
        while True:
            body = self.get(path, limit=page, offset=len(items), **params)
            items += body["data"]
            if not body["data"] or len(items) >= body.get("count", 0):
                break
            if limit is not None and len(items) >= limit:
                break
        return items if limit is None else items[:limit]

    @contextmanager
    def stream(self, path: str, headers: dict[str, str] | None = None) -> Iterator[httpx.Response]:
        """A streaming GET (Server-Sent Events), without a read timeout."""
        try:
            with self._client.stream(
                "GET", path, headers=headers, timeout=httpx.Timeout(TIMEOUT_S, read=None)
            ) as response:
                if not response.is_success:
                    response.read()
                    raise _error(response)
                yield response
        except httpx.TransportError as exc:
            raise ApiError(f"the event stream broke: {exc}", Exit.UNAVAILABLE) from None

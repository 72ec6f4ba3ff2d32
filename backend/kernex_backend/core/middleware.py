"""ASGI middleware: request ids with a request log line, and request body limits.

Both are plain ASGI rather than BaseHTTPMiddleware so they add no task or buffering per request
and can stop an oversized body while it streams in.
"""

import re
import time
import uuid
from collections.abc import Callable

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kernex_backend.core.errors import problem_response

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
log = structlog.get_logger("kernex.http")


class RequestContextMiddleware:
    """Binds a request id to the log context, echoes it, logs one line per request, and
    reports each finished request to `on_finished` (the latency metrics)."""

    def __init__(
        self, app: ASGIApp, *, on_finished: Callable[[Scope, int, float], None] | None = None
    ) -> None:
        self.app = app
        self._on_finished = on_finished

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = supplied if _REQUEST_ID_RE.match(supplied) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            # The path only: query strings could carry values we must not log.
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )
            if self._on_finished is not None:
                self._on_finished(scope, status, elapsed)
            structlog.contextvars.clear_contextvars()


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes its limit.

    An HTTPException, because FastAPI re-raises those from body parsing (it would turn anything
    else into a 400), so the problem handler answers it with 413.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


class BodySizeLimitMiddleware:
    """Answers 413 when a request body exceeds its limit, checked while it streams."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, overrides: dict[str, int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        # Path prefix -> limit, for routes such as bundle upload that take large bodies.
        self.overrides = overrides or {}

    def _limit_for(self, path: str) -> int:
        for prefix, limit in self.overrides.items():
            if path.startswith(prefix):
                return limit
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(scope, receive, send, limit)
            return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if response_started:
                raise
            await self._reject(scope, receive, send, limit)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem_response(
            413,
            "payload-too-large",
            "Payload too large",
            f"the request body exceeds the limit of {limit} bytes",
            instance=scope["path"],
        )
        await response(scope, receive, send)

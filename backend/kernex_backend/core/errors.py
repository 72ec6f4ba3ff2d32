"""Domain errors and their one mapping to HTTP: RFC 9457 problem details.

Services raise subclasses of KernexError; a single handler turns them into
`application/problem+json` with a stable `type` URI. Validation errors and unknown routes are
answered in the same shape. A failure a retry can cure (the database down, full or restarting,
a lost deadlock) is a 503 with Retry-After; any other unexpected exception becomes a logged 500
that reveals nothing.
"""

import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, ClassVar

import sqlalchemy as sa
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kernex_backend.core.db import is_transient

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:kernex:problem:"

log = structlog.get_logger(__name__)


class KernexError(Exception):
    """Base of every error a service may raise on purpose."""

    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions
        self.headers: dict[str, str] = {}


class BadRequest(KernexError):
    """The request is malformed."""


class Unauthorized(KernexError):
    """No valid credentials were presented."""

    status = 401
    slug = "unauthorized"
    title = "Authentication required"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail, **extensions)
        self.headers["WWW-Authenticate"] = 'Bearer realm="kernex"'


class Forbidden(KernexError):
    """The credentials lack a required scope."""

    status = 403
    slug = "forbidden"
    title = "Not allowed"


class NotFound(KernexError):
    """The addressed object does not exist."""

    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(KernexError):
    """The request conflicts with the object's current state."""

    status = 409
    slug = "conflict"
    title = "Conflict"


class PayloadTooLarge(KernexError):
    """The request body exceeds its limit."""

    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class InvalidInput(KernexError):
    """The request is well-formed but its values are not acceptable."""

    status = 422
    slug = "invalid-input"
    title = "Invalid input"


class ServiceUnavailable(KernexError):
    """A dependency (database, broker, storage) cannot be reached."""

    status = 503
    slug = "service-unavailable"
    title = "Service unavailable"


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    extensions: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Build an RFC 9457 problem response."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if extensions:
        body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    # The offending input is not echoed back: it may be large, or a secret sent by mistake.
    return [
        {"loc": [str(part) for part in error.get("loc", ())], "msg": error.get("msg", "")}
        for error in errors
    ]


async def handle_kernex_error(request: Request, exc: Exception) -> JSONResponse:
    """A KernexError as problem+json (also used by the dashboard for non-page paths)."""
    assert isinstance(exc, KernexError)
    return problem_response(
        exc.status,
        exc.slug,
        exc.title,
        exc.detail,
        instance=request.url.path,
        extensions=exc.extensions,
        headers=exc.headers,
    )


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        return problem_response(
            400,
            "malformed-json",
            "Malformed JSON",
            "the request body is not valid JSON",
            instance=request.url.path,
        )
    return problem_response(
        422,
        "validation-failed",
        "Validation failed",
        "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors
        )[:1000],
        instance=request.url.path,
        extensions={"errors": _validation_errors(errors)},
    )


# Slugs for statuses raised by the framework rather than by our services.
_FRAMEWORK_SLUGS = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}


def _allowed_methods(request: Request) -> str | None:
    """Every method the API documents at this path (Starlette names only one route's)."""
    paths = request.app.openapi().get("paths", {})
    path = request.url.path
    if path in paths:  # a literal path wins over a template it also fits (/deployments/preview)
        return ", ".join(sorted(method.upper() for method in paths[path])) or None
    methods: set[str] = set()
    for template, operations in paths.items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            methods |= {method.upper() for method in operations}
    return ", ".join(sorted(methods)) if methods else None


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        if allowed:
            headers["Allow"] = allowed
    return problem_response(
        exc.status_code,
        _FRAMEWORK_SLUGS.get(exc.status_code, phrase.lower().replace(" ", "-")),
        phrase,
        str(exc.detail),
        instance=request.url.path,
        headers=headers or None,
    )


# Seconds a client is asked to wait after a 503 for a failure that a retry can cure.
RETRY_AFTER_S = 5


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled_error", path=request.url.path)
    return problem_response(
        500,
        "internal-error",
        "Internal error",
        "an unexpected error occurred; the request id identifies it in the server logs",
        instance=request.url.path,
    )


async def _handle_infrastructure(request: Request, exc: Exception) -> JSONResponse:
    """Database and I/O errors: a 503 with Retry-After when a retry can cure them (the database
    down, full or restarting, a lost deadlock: not a bug, and the same request may well succeed
    in a moment), a 500 otherwise. Registered for these classes rather than caught by the
    catch-all, whose response also closes the client's connection."""
    if not is_transient(exc):
        return await _handle_unexpected(request, exc)
    log.warning("request_unavailable", path=request.url.path, error=type(exc).__name__)
    return problem_response(
        503,
        ServiceUnavailable.slug,
        ServiceUnavailable.title,
        "the database cannot take this request now; try again shortly",
        instance=request.url.path,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the problem+json handlers on `app`."""
    app.add_exception_handler(KernexError, handle_kernex_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    for infrastructure in (sa.exc.DBAPIError, sa.exc.TimeoutError, OSError, TimeoutError):
        app.add_exception_handler(infrastructure, _handle_infrastructure)
    app.add_exception_handler(Exception, _handle_unexpected)

"""The OpenAPI document as the API's contract: every operation declares the error statuses the
server can answer with, each as `application/problem+json` with the one Problem model, so that a
generated client knows every answer it can get (tests/unit/test_openapi_contract.py)."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; some problems add fields (e.g. `errors`).",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "urn:kernex:problem:<slug>"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "validation failures: where and why (422)",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": "string"}},
                    "msg": {"type": "string"},
                },
            },
        },
    },
    "additionalProperties": True,
}

# Why each status can happen, for operations the rule applies to.
DESCRIPTIONS = {
    400: "The body is not valid JSON, or a header is malformed",
    401: "No API key, or an unknown or revoked one",
    403: "The key lacks the scope this operation needs",
    404: "Nothing has that id (or the path does not exist)",
    409: "The object's state does not allow this (it exists already, is decommissioned, is in "
    "use, or has finished)",
    413: "The body is larger than the server accepts",
    422: "The input breaks a rule of the schema or of the service; `errors` says where",
    503: "A dependency (the database, the object store or the CA) is unavailable",
}


def _statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    statuses = {422, 503}
    if operation.get("security"):
        statuses |= {401, 403}
    if "requestBody" in operation:
        statuses |= {400, 413}
    if "{" in path:
        statuses.add(404)
    if method in ("post", "patch", "put", "delete"):
        statuses.add(409)
    return statuses


def _declare(path: str, method: str, operation: dict[str, Any]) -> None:
    if "security" in operation:  # an operation's own entries may repeat the router's
        unique: list[dict[str, Any]] = []
        for requirement in operation["security"]:
            if requirement not in unique:
                unique.append(requirement)
        operation["security"] = unique
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for code in _statuses(path, method, operation):
        responses.setdefault(str(code), {"description": DESCRIPTIONS[code]})
    if responses.get("422", {}).get("description") == "Validation Error":  # FastAPI's default
        responses["422"]["description"] = DESCRIPTIONS[422]
    for status, response in responses.items():
        if status.isdigit() and int(status) >= 400:
            response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}}


def _limit_page_size(operation: dict[str, Any], page_size_max: int) -> None:
    for parameter in operation.get("parameters", []):
        if parameter.get("in") == "query" and parameter.get("name") == "limit":
            schema = parameter.get("schema", {})
            for option in schema.get("anyOf", [schema]):
                if option.get("type") == "integer":
                    option["maximum"] = page_size_max


def _no_null_parameters(operation: dict[str, Any]) -> None:
    """An optional header, query or path parameter is absent or a string on the wire, never
    null: drop the `null` branch FastAPI writes for `X | None` (a client would send "null")."""
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        options = schema.get("anyOf")
        if not options:
            continue
        kept = [option for option in options if option.get("type") != "null"]
        if len(kept) == 1:
            del schema["anyOf"]
            schema.update(kept[0])
        else:
            schema["anyOf"] = kept


def install_contract(app: FastAPI, *, page_size_max: int) -> None:
    """Generate the document once, with the error responses declared on every operation, no
    null in any parameter's schema, and the configured page-size limit on every `limit`
    parameter."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas["Problem"] = PROBLEM_SCHEMA
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)  # replaced by Problem on every 422
            for path, operations in schema.get("paths", {}).items():
                for method, operation in operations.items():
                    _declare(path, method, operation)
                    _no_null_parameters(operation)
                    _limit_page_size(operation, page_size_max)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

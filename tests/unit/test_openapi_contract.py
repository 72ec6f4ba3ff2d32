"""The OpenAPI document declares what the server does: every operation lists its error statuses
as application/problem+json with the Problem model, secured operations their 401 and 403, every
`limit` its maximum. (Issue: a client generated from the schema must not meet an undeclared
answer.)"""

from typing import Any

import pytest

from kernex_backend.core.openapi import PROBLEM_MEDIA_TYPE
from kernex_backend.main import create_app
from tests.conftest import make_settings

SPEC = create_app(make_settings("postgresql+asyncpg://nobody@127.0.0.1:1/none")).openapi()
OPERATIONS = [
    (method.upper(), path, operation)
    for path, operations in SPEC["paths"].items()
    for method, operation in operations.items()
]


@pytest.mark.parametrize(("method", "path", "operation"), OPERATIONS, ids=lambda v: str(v)[:60])
def test_every_error_answer_is_declared_as_a_problem(
    method: str, path: str, operation: dict[str, Any]
) -> None:
    responses = operation["responses"]
    expected = {"422", "503"}
    if operation.get("security"):
        expected |= {"401", "403"}
    if "requestBody" in operation:
        expected |= {"400", "413"}
    if "{" in path:
        expected.add("404")
    if method in ("POST", "PATCH", "PUT", "DELETE"):
        expected.add("409")
    assert expected <= set(responses), (method, path, sorted(responses))
    for status, response in responses.items():
        if int(status) >= 400:
            assert set(response["content"]) == {PROBLEM_MEDIA_TYPE}, (method, path, status)
            schema = response["content"][PROBLEM_MEDIA_TYPE]["schema"]
            assert schema == {"$ref": "#/components/schemas/Problem"}


def test_every_operation_but_probes_is_secured() -> None:
    open_paths = {p for m, p, op in OPERATIONS if not op.get("security")}
    # The probes, and the CRL at its distribution point (public by nature: brokers fetch it).
    assert open_paths <= {
        "/api/v1/health",
        "/api/v1/ready",
        "/api/v1/metrics",
        "/api/v1/pki/crl",
    }


def test_page_size_limits_are_declared() -> None:
    limits = [
        parameter
        for _, _, operation in OPERATIONS
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "query" and parameter["name"] == "limit"
    ]
    assert limits
    for parameter in limits:
        options = parameter["schema"].get("anyOf", [parameter["schema"]])
        integer = next(o for o in options if o.get("type") == "integer")
        assert integer["maximum"] == 500 and integer["minimum"] == 1


def test_no_reference_to_a_removed_schema() -> None:
    import json

    text = json.dumps(SPEC)
    assert "HTTPValidationError" not in text
    assert "#/components/schemas/Problem" in text

"""Canonical JSON: the byte form that release manifests and notices are signed over.

Keys sorted, no insignificant white space, UTF-8, no NaN or infinities, integers only (floats
have no single textual form across languages, so signed documents carry none).
"""

import json
from typing import Any


class NotCanonicalisable(ValueError):
    """Raised when a document holds a value canonical JSON does not allow."""


def _check(value: Any, path: str) -> None:
    if value is None or isinstance(value, (bool, str, int)):
        return
    if isinstance(value, float):
        raise NotCanonicalisable(f"{path}: floats are not allowed in signed documents")
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotCanonicalisable(f"{path}: object keys must be strings")
            _check(item, f"{path}.{key}")
        return
    raise NotCanonicalisable(f"{path}: {type(value).__name__} is not a JSON value")


def canonical_json(document: dict[str, Any]) -> bytes:
    """Encode `document` in canonical form."""
    _check(document, "$")
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")

"""Canonical JSON: the byte form that release manifests and notices are signed over.

Keys sorted, no insignificant white space, UTF-8, no NaN or infinities, integers only (floats
have no single textual form across languages, so signed documents carry none).
"""

import json
from typing import Any


class NotCanonicalisable(ValueError):
    """Raised when a document holds a value canonical JSON does not allow."""


# Values that need no further look (exact types: a subclass, say an enum, takes the long way).
_PLAIN: frozenset[type] = frozenset({str, int, bool, type(None)})


def _check(value: Any, path: str) -> None:
    # The path of a nested value is formatted only when that value needs a closer look: the
    # backend signs a notice per device, and formatting a path for every plain field, read only
    # in an error message, was a third of the time of canonical_json on a notice's claims.
    if value is None or isinstance(value, (bool, str, int)):
        return
    if isinstance(value, float):
        raise NotCanonicalisable(f"{path}: floats are not allowed in signed documents")
    if isinstance(value, list):
        for index, item in enumerate(value):
            if type(item) not in _PLAIN:
                _check(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotCanonicalisable(f"{path}: object keys must be strings")
            if type(item) not in _PLAIN:
                _check(item, f"{path}.{key}")
        return
    raise NotCanonicalisable(f"{path}: {type(value).__name__} is not a JSON value")


def canonical_json(document: dict[str, Any]) -> bytes:
    """Encode `document` in canonical form."""
    _check(document, "$")
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")

"""Scopes and what each implies."""

from enum import StrEnum
from typing import Final


class Scope(StrEnum):
    """What an API key may do: read, change fleet state, or administer the service."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


IMPLIED: Final[dict[Scope, frozenset[Scope]]] = {
    Scope.READ: frozenset({Scope.READ}),
    Scope.WRITE: frozenset({Scope.READ, Scope.WRITE}),
    Scope.ADMIN: frozenset({Scope.READ, Scope.WRITE, Scope.ADMIN}),
}


def effective(scopes: list[str]) -> frozenset[Scope]:
    """Every scope granted by `scopes`, with implied ones; unknown names grant nothing."""
    granted: set[Scope] = set()
    for name in scopes:
        if name in Scope.__members__.values():
            granted |= IMPLIED[Scope(name)]
    return frozenset(granted)

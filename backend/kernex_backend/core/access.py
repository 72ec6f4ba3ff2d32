"""Request authentication and scope checks as FastAPI dependencies.

Every router declares what it needs (`ReadAccess`, `WriteAccess`, `AdminAccess`); who holds
which key is the api_keys domain's business, reached through the KeyVerifier port the
composition root provides, so no router and nothing in core imports that domain."""

from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.core.errors import Forbidden, Unauthorized
from kernex_backend.core.runtime import SessionDep, component
from kernex_backend.core.scopes import Scope

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer kx_...`")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an authenticated API key."""

    key_id: str
    name: str
    scopes: frozenset[Scope]

    @property
    def actor(self) -> str:
        """How the caller appears in audit events and created_by columns."""
        return f"api-key:{self.key_id}"


class KeyVerifier(Protocol):
    """Turns a bearer token into the principal it belongs to (the api_keys domain)."""

    async def verify(self, session: AsyncSession, token: str) -> Principal | None:
        """The principal of a live key, or None for a malformed, unknown or revoked token."""


VerifierDep = Annotated[KeyVerifier, Depends(component(KeyVerifier))]


async def _authenticate(
    verifier: VerifierDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    principal = await verifier.verify(session, credentials.credentials)
    if principal is None:
        raise Unauthorized("invalid or revoked API key")
    return principal


def _require(scope: Scope) -> object:
    async def check(principal: Annotated[Principal, Depends(_authenticate)]) -> Principal:
        if scope not in principal.scopes:
            raise Forbidden(
                f"this operation needs the {scope.value!r} scope", required_scope=scope.value
            )
        return principal

    return Depends(check)


async def _optional_write(
    verifier: VerifierDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    if credentials is None:
        return None
    principal = await _authenticate(verifier, session, credentials)
    if Scope.WRITE not in principal.scopes:
        raise Forbidden("this operation needs the 'write' scope", required_scope="write")
    return principal


ReadAccess = Annotated[Principal, _require(Scope.READ)]
WriteAccess = Annotated[Principal, _require(Scope.WRITE)]
AdminAccess = Annotated[Principal, _require(Scope.ADMIN)]
# Routes that devices may also call with proof of their own (checked by the service).
OptionalWriteAccess = Annotated[Principal | None, Depends(_optional_write)]

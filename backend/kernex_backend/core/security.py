"""Request authentication with API keys, and scope checks as FastAPI dependencies."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from kernex_backend.api_keys import service as api_keys
from kernex_backend.api_keys.scopes import Scope, effective
from kernex_backend.core.db import SessionDep, utc_now
from kernex_backend.core.errors import Forbidden, Unauthorized

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


async def _authenticate(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    key = await api_keys.authenticate(session=session, token=credentials.credentials)
    if key is None:
        raise Unauthorized("invalid or revoked API key")
    request.app.state.last_used.touch(key.id, utc_now())
    return Principal(key_id=key.id, name=key.name, scopes=effective(key.scopes))


def _require(scope: Scope) -> object:
    async def check(principal: Annotated[Principal, Depends(_authenticate)]) -> Principal:
        if scope not in principal.scopes:
            raise Forbidden(
                f"this operation needs the {scope.value!r} scope", required_scope=scope.value
            )
        return principal

    return Depends(check)


async def _optional_write(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    if credentials is None:
        return None
    principal = await _authenticate(request, session, credentials)
    if Scope.WRITE not in principal.scopes:
        raise Forbidden("this operation needs the 'write' scope", required_scope="write")
    return principal


ReadAccess = Annotated[Principal, _require(Scope.READ)]
WriteAccess = Annotated[Principal, _require(Scope.WRITE)]
AdminAccess = Annotated[Principal, _require(Scope.ADMIN)]
# Routes that devices may also call with proof of their own (checked by the service).
OptionalWriteAccess = Annotated[Principal | None, Depends(_optional_write)]

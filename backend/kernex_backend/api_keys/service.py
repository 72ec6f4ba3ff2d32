"""API key lifecycle and authentication."""

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.api_keys import tokens
from kernex_backend.api_keys.models import ApiKey
from kernex_backend.audit import service as audit
from kernex_backend.core.db import utc_now
from kernex_backend.core.errors import Conflict, NotFound
from kernex_backend.core.pagination import Page, paginate
from kernex_backend.core.scopes import Scope


class ApiKeyNotFound(NotFound):
    """No API key has that id."""

    slug = "api-key-not-found"
    title = "API key not found"


class ApiKeyAlreadyRevoked(Conflict):
    """The key was revoked before."""

    slug = "api-key-revoked"
    title = "API key already revoked"


async def create(
    *, session: AsyncSession, name: str, scopes: list[Scope], actor: str
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the token, which is never stored."""
    new = tokens.generate()
    key = ApiKey(
        id=new.key_id,
        name=name,
        secret_sha256=new.secret_sha256,
        scopes=sorted({s.value for s in scopes}),
        created_by=actor,
    )
    session.add(key)
    audit.record(
        session,
        actor=actor,
        action="api_key.create",
        object_type="api_key",
        object_id=key.id,
        details={"name": name, "scopes": key.scopes},
    )
    await session.commit()
    return key, new.token


async def authenticate(*, session: AsyncSession, token: str) -> ApiKey | None:
    """The live key a token belongs to, or None for a malformed, unknown or revoked token."""
    parsed = tokens.parse(token)
    if parsed is None:
        return None
    key_id, secret = parsed
    key = await session.get(ApiKey, key_id)
    if not tokens.matches(secret, key.secret_sha256 if key else None):
        return None
    if key is None or key.revoked_at is not None:
        return None
    return key


async def list_keys(*, session: AsyncSession, page: Page) -> tuple[list[ApiKey], int]:
    """Keys, newest first."""
    return await paginate(
        session, ApiKey, page, order_by=[col(ApiKey.created_at).desc(), col(ApiKey.id)]
    )


async def revoke(*, session: AsyncSession, key_id: str, actor: str) -> ApiKey:
    """Revoke a key; it stops working at once."""
    key = await session.get(ApiKey, key_id, with_for_update=True)
    if key is None:
        raise ApiKeyNotFound(f"no API key with id {key_id!r}")
    if key.revoked_at is not None:
        raise ApiKeyAlreadyRevoked(
            f"API key {key_id!r} was revoked at {key.revoked_at.isoformat()}"
        )
    key.revoked_at = utc_now()
    session.add(key)
    audit.record(
        session, actor=actor, action="api_key.revoke", object_type="api_key", object_id=key.id
    )
    await session.commit()
    return key


async def revoke_named(*, session: AsyncSession, name: str, actor: str) -> int:
    """Revoke every live key called `name` (used to rotate the demo's bootstrap key)."""
    result = await session.exec(
        select(ApiKey).where(ApiKey.name == name, col(ApiKey.revoked_at).is_(None))
    )
    keys = list(result)
    now = utc_now()
    for key in keys:
        key.revoked_at = now
        session.add(key)
        audit.record(
            session, actor=actor, action="api_key.revoke", object_type="api_key", object_id=key.id
        )
    await session.commit()
    return len(keys)

"""API key endpoints (admin only)."""

from typing import Annotated

from fastapi import APIRouter, Path, status

from kernex_backend.api_keys import service
from kernex_backend.api_keys.models import ApiKey
from kernex_backend.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, ApiKeysPublic
from kernex_backend.core.access import AdminAccess
from kernex_backend.core.pagination import PageDep
from kernex_backend.core.runtime import SessionDep

router = APIRouter(prefix="/api-keys", tags=["api-keys"])

KeyIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]


def _public(key: ApiKey) -> ApiKeyPublic:
    return ApiKeyPublic.model_validate(key, from_attributes=True)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
async def create_api_key(
    body: ApiKeyCreate, session: SessionDep, principal: AdminAccess
) -> ApiKeyCreated:
    """Create a key. The token in the answer is shown only this once."""
    key, token = await service.create(
        session=session, name=body.name, scopes=body.scopes, actor=principal.actor
    )
    return ApiKeyCreated(**_public(key).model_dump(), token=token)


@router.get("", response_model=ApiKeysPublic)
async def list_api_keys(session: SessionDep, _: AdminAccess, page: PageDep) -> ApiKeysPublic:
    """List keys (without secrets)."""
    keys, count = await service.list_keys(session=session, page=page)
    return ApiKeysPublic(data=[_public(k) for k in keys], count=count)


@router.post("/{key_id}/revoke", response_model=ApiKeyPublic)
async def revoke_api_key(
    key_id: KeyIdPath, session: SessionDep, principal: AdminAccess
) -> ApiKeyPublic:
    """Revoke a key; requests with it fail from now on."""
    return _public(await service.revoke(session=session, key_id=key_id, actor=principal.actor))

"""Bundle endpoints (read side; upload arrives with object storage)."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from kernex_backend.bundles import service
from kernex_backend.bundles.schemas import BundlePublic, BundlesPublic
from kernex_backend.core.db import SessionDep
from kernex_backend.core.pagination import PageDep
from kernex_backend.core.security import ReadAccess

router = APIRouter(prefix="/bundles", tags=["bundles"])


@router.get("", response_model=BundlesPublic)
async def list_bundles(
    session: SessionDep,
    _: ReadAccess,
    page: PageDep,
    name: Annotated[str | None, Query(max_length=64)] = None,
    device_type: Annotated[str | None, Query(max_length=64)] = None,
) -> BundlesPublic:
    """List bundles, newest first."""
    bundles, count = await service.list_bundles(
        session=session, page=page, name=name, device_type=device_type
    )
    return BundlesPublic(
        data=[BundlePublic.model_validate(b, from_attributes=True) for b in bundles], count=count
    )


@router.get("/{bundle_id}", response_model=BundlePublic)
async def get_bundle(bundle_id: uuid.UUID, session: SessionDep, _: ReadAccess) -> BundlePublic:
    """One bundle."""
    bundle = await service.get(session=session, bundle_id=bundle_id)
    return BundlePublic.model_validate(bundle, from_attributes=True)

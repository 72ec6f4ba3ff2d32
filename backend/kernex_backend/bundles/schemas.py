"""API shapes for bundles."""

import uuid
from datetime import datetime

from pydantic import BaseModel


class BundlePublic(BaseModel):
    """A bundle as the API shows it (never its storage credentials or URLs)."""

    id: uuid.UUID
    name: str
    version: str
    device_type: str
    sha256: str
    size_bytes: int
    signature: str | None
    signing_key_id: str | None
    created_at: datetime
    created_by: str


class BundlesPublic(BaseModel):
    """A page of bundles."""

    data: list[BundlePublic]
    count: int

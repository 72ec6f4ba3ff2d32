"""API shapes for API keys."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from kernex_backend.core.scopes import Scope
from kernex_backend.core.text import Label


class ApiKeyCreate(BaseModel):
    """Request to create a key."""

    model_config = ConfigDict(extra="forbid")

    name: Label
    scopes: list[Scope] = Field(min_length=1, max_length=3)


class ApiKeyPublic(BaseModel):
    """A key as listed: never its secret."""

    id: str
    name: str
    scopes: list[str]
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    """A key just created: the token is shown this once and cannot be recovered."""

    token: str


class ApiKeysPublic(BaseModel):
    """A page of keys."""

    data: list[ApiKeyPublic]
    count: int

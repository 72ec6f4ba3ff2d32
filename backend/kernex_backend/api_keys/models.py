"""The api_keys table. Secrets are stored as SHA-256 digests, never in plaintext."""

from datetime import datetime

from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from kernex_backend.core.columns import created_at_field, optional_timestamp_field


class ApiKey(SQLModel, table=True):
    """An operator credential."""

    __tablename__ = "api_keys"

    # The public part of the token (kx_<id>_<secret>), used to find the row in one index lookup.
    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=128)
    secret_sha256: str = Field(max_length=64)
    scopes: list[str] = Field(default_factory=list, sa_type=JSONB, nullable=False)
    created_by: str = Field(max_length=128)
    created_at: datetime = created_at_field()
    last_used_at: datetime | None = optional_timestamp_field()
    revoked_at: datetime | None = optional_timestamp_field()

"""The bundles table: released, signed update artefacts."""

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from kernex_backend.core.columns import created_at_field


class Bundle(SQLModel, table=True):
    """One immutable release of a named artefact for one device type."""

    __tablename__ = "bundles"
    __table_args__ = (
        sa.UniqueConstraint("name", "version"),
        sa.CheckConstraint("size_bytes >= 0", name="size_non_negative"),
        sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="sha256_hex"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=64)
    version: str = Field(max_length=64)
    device_type: str = Field(max_length=64, index=True)
    sha256: str = Field(max_length=64)
    size_bytes: int = Field(sa_type=sa.BigInteger)
    storage_key: str = Field(max_length=256)
    # Detached signature over the canonical release manifest, made offline by the release team.
    signature: str | None = Field(default=None, max_length=512)
    signing_key_id: str | None = Field(default=None, max_length=64)
    # The manifest's created_at exactly as signed: with the fields above it rebuilds the signed
    # manifest that deployment notices carry to devices.
    manifest_created_at: str | None = Field(default=None, max_length=40)
    created_at: datetime = created_at_field()
    created_by: str = Field(max_length=128)

"""Column helpers shared by the table models."""

from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field

from kernex_backend.core.db import utc_now


def created_at_field() -> Any:
    """A non-null, timezone-aware creation timestamp set by the application."""
    return Field(default_factory=utc_now, sa_type=sa.DateTime(timezone=True), nullable=False)


def optional_timestamp_field(*, index: bool = False) -> Any:
    """A nullable timezone-aware timestamp."""
    return Field(default=None, sa_type=sa.DateTime(timezone=True), nullable=True, index=index)


def enum_field(enum: type[StrEnum], default: StrEnum, *, name: str, index: bool = False) -> Any:
    """A string column limited to `enum`'s values by a CHECK constraint (no native PG enum type:
    adding a state later is then a plain constraint change, not an ALTER TYPE)."""
    return Field(
        default=default,
        sa_type=sa.Enum(
            enum,
            name=name,
            native_enum=False,
            create_constraint=True,
            length=32,
            values_callable=lambda e: [member.value for member in e],
            validate_strings=True,
        ),
        nullable=False,
        index=index,
    )

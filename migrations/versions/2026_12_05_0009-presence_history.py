"""Presence history: every applied change of a device's presence, for the device page.

Expand only (docs/upgrades.md): a new table the running version does not know about. It keeps
writing presence without history until the new version replaces it; nothing it does conflicts.

Revision ID: 20261205_0009
Revises: 20261203_0008
Create Date: 2026-12-05 16:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261205_0009"
down_revision: str | None = "20261203_0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "presence_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("session", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_presence_events")),
    )
    op.create_index("ix_presence_events_device_id_at", "presence_events", ["device_id", "at"])
    op.create_index("ix_presence_events_at", "presence_events", ["at"])


def downgrade() -> None:
    op.drop_index("ix_presence_events_at", table_name="presence_events")
    op.drop_index("ix_presence_events_device_id_at", table_name="presence_events")
    op.drop_table("presence_events")

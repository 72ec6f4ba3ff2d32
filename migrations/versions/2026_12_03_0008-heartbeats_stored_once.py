"""Heartbeats stored once per (device, session, seq), whatever replica or order they arrive in.

Expand only (docs/upgrades.md): two nullable device columns and one nullable heartbeat column,
all catalog-only changes (no table rewrite, no long lock on the partitioned heartbeats table).
The running version ignores them; rows it stores meanwhile have no `session` column value, and
the new ingest reads their session from the metrics it always wrote.

- heartbeats.session: the agent session the heartbeat belongs to, for the duplicate check.
- devices.heartbeat_high_session/seq: the highest (session, seq) ever stored for the device.
  Unlike heartbeat_session/seq (the newest, which a stale lying claim may move back), it never
  moves back, so a heartbeat above it is certainly new and needs no lookup.

Revision ID: 20261203_0008
Revises: 20261203_0007
Create Date: 2026-12-03 13:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261203_0008"
down_revision: str | None = "20261203_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("heartbeats", sa.Column("session", sa.BigInteger(), nullable=True))
    op.add_column("devices", sa.Column("heartbeat_high_session", sa.BigInteger(), nullable=True))
    op.add_column("devices", sa.Column("heartbeat_high_seq", sa.BigInteger(), nullable=True))
    # Before this release the newest was also the highest stored: start from it.
    op.execute(
        "UPDATE devices SET heartbeat_high_session = heartbeat_session,"
        " heartbeat_high_seq = heartbeat_seq WHERE heartbeat_session IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_column("devices", "heartbeat_high_seq")
    op.drop_column("devices", "heartbeat_high_session")
    op.drop_column("heartbeats", "session")

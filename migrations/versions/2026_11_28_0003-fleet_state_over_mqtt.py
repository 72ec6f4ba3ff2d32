"""Fleet state over MQTT: heartbeat ordering on devices, progress ordering on executions.

devices.heartbeat_session/heartbeat_seq hold the newest heartbeat stored, so QoS 1 repeats and
late arrivals are not stored twice; deployment_executions.report_seq does the same for progress
messages, device_state keeps the device's finer state name, and notified_at/reported_at drive
notice reconciliation and the silence timeout. bundles.manifest_created_at keeps the manifest's
created_at exactly as signed, so notices can carry the signed manifest (bundles uploaded before
this revision have none and must be uploaded again to be deployed).
Only nullable columns are added: no table rewrite. Reviewed by hand.

Revision ID: 20261128_0003
Revises: 20261128_0002
Create Date: 2026-11-28 06:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261128_0003"
down_revision: str | None = "20261128_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("bundles", sa.Column("manifest_created_at", sa.String(40), nullable=True))
    op.add_column("deployment_executions", sa.Column("device_state", sa.String(32), nullable=True))
    op.add_column("devices", sa.Column("heartbeat_session", sa.BigInteger(), nullable=True))
    op.add_column("devices", sa.Column("heartbeat_seq", sa.BigInteger(), nullable=True))
    op.add_column("deployment_executions", sa.Column("report_seq", sa.BigInteger(), nullable=True))
    op.add_column(
        "deployment_executions",
        sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "deployment_executions",
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("deployment_executions", "device_state")
    op.drop_column("bundles", "manifest_created_at")
    op.drop_column("deployment_executions", "reported_at")
    op.drop_column("deployment_executions", "notified_at")
    op.drop_column("deployment_executions", "report_seq")
    op.drop_column("devices", "heartbeat_seq")
    op.drop_column("devices", "heartbeat_session")

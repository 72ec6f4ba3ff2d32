"""An index for pruning the webhook outbox: whether an event still has a pending delivery.

Expand only (docs/upgrades.md): a new index, which the running version ignores. Built plainly,
not CONCURRENTLY: migrations run in one transaction under the advisory lock, and the delivery
log is small (pruned to `webhooks.retention_days`), so the write lock lasts moments.

Revision ID: 20261203_0007
Revises: 20261203_0006
Create Date: 2026-12-03 10:00:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "20261203_0007"
down_revision: str | None = "20261203_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_webhook_deliveries_event_id", "webhook_deliveries", ["event_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_event_id", table_name="webhook_deliveries")

"""Device traffic safety: quarantine, and how old a device's session claim is.

devices.quarantined_until: while in the future, the device is cut off at the broker (it flooded
its traffic budget); cleared when it passes or an operator releases the device.
devices.presence_at: when the presence session held was last applied. A session number is a
device's own claim; one far ahead of the device's real counter (a lie, a restored disk image)
would otherwise make its real births and Last Wills look old for ever. A claim older than the
offline threshold no longer outranks a lower session (devices/presence.py).
Only nullable columns are added: no table rewrite. Reviewed by hand.

Revision ID: 20261202_0004
Revises: 20261128_0003
Create Date: 2026-12-02 18:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261202_0004"
down_revision: str | None = "20261128_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "devices", sa.Column("quarantined_until", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("devices", sa.Column("presence_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("devices", "presence_at")
    op.drop_column("devices", "quarantined_until")

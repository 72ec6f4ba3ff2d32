"""Deployments keep their history when their bundle is deleted.

deployments.bundle_id becomes nullable with ON DELETE SET NULL (was NOT NULL, RESTRICT), so a
bundle that no unfinished deployment needs can be deleted (by an operator or the retention
worker) while finished deployments stay listed. Reviewed by hand.

Revision ID: 20261128_0002
Revises: 20261128_0001
Create Date: 2026-11-28 03:57:32+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261128_0002"
down_revision: str | None = "20261128_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# contract: the foreign key is replaced in place (dropped and re-created with ON DELETE SET
# NULL) in one transaction; a backend of the version before still writes a bundle into every
# deployment, which the new schema accepts, so it runs on beside it. Written before
# docs/upgrades.md.
FK = "fk_deployments_bundle_id_bundles"


def upgrade() -> None:
    op.alter_column("deployments", "bundle_id", existing_type=sa.UUID(), nullable=True)
    op.drop_constraint(FK, "deployments", type_="foreignkey")
    op.create_foreign_key(FK, "deployments", "bundles", ["bundle_id"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    orphans = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM deployments WHERE bundle_id IS NULL"))
        .scalar_one()
    )
    if orphans:
        raise RuntimeError(
            f"{orphans} deployment(s) outlived their bundle; the old schema cannot hold them. "
            "Delete those deployments first if you really mean to downgrade."
        )
    op.drop_constraint(FK, "deployments", type_="foreignkey")
    op.create_foreign_key(FK, "deployments", "bundles", ["bundle_id"], ["id"], ondelete="RESTRICT")
    op.alter_column("deployments", "bundle_id", existing_type=sa.UUID(), nullable=False)

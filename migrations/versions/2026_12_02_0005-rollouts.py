"""Rollouts: waves, rate, retries, windows, abort and automatic rollback.

deployment_executions: state "queued" (targeted, waiting for its wave, the rate, a window or a
retry backoff) before "pending" (admitted, notice being published); wave and position (the
random draw order); not_before (retry backoff); admitted_at (the rate counts admissions per
minute); start_delay_s (the jitter the device waits before it starts).
deployments: the controller's state (current wave, when it met its threshold, approvals, why it
waits, why it is paused) and the automatic rollback (bundle, signed approval, and on the
rollback deployment the one it undoes). deployment_events: the rollout's event log, also the
source of GET /deployments/{id}/events.
Columns are added with constant defaults or as nullable: no table rewrite. The state CHECK is
replaced (downgrade first turns queued executions back into pending). Reviewed by hand.

Revision ID: 20261202_0005
Revises: 20261202_0004
Create Date: 2026-12-02 22:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "20261202_0005"
down_revision: str | None = "20261202_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATES = (
    "pending",
    "notified",
    "downloading",
    "verifying",
    "installing",
    "health_check",
    "succeeded",
    "failed",
    "rolled_back",
    "canceled",
    "timed_out",
)
CHECK = "ck_deployment_executions_execution_state"


def _state_check(states: Sequence[str]) -> None:
    op.drop_constraint(op.f(CHECK), "deployment_executions", type_="check")
    listed = ", ".join(f"'{s}'" for s in states)
    op.create_check_constraint(
        "execution_state", "deployment_executions", sa.text(f"state IN ({listed})")
    )


def upgrade() -> None:
    _state_check(("queued", *STATES))
    for name in ("wave", "position", "start_delay_s"):
        op.add_column(
            "deployment_executions",
            sa.Column(name, sa.Integer(), nullable=False, server_default="0"),
        )
        op.alter_column("deployment_executions", name, server_default=None)
    for name in ("not_before", "admitted_at"):
        op.add_column(
            "deployment_executions", sa.Column(name, sa.DateTime(timezone=True), nullable=True)
        )
    for name in ("current_wave", "approved_wave", "forced_wave"):
        op.add_column(
            "deployments", sa.Column(name, sa.Integer(), nullable=False, server_default="0")
        )
        op.alter_column("deployments", name, server_default=None)
    op.add_column("deployments", sa.Column("wave_reached_at", sa.DateTime(timezone=True)))
    op.add_column("deployments", sa.Column("waiting_for", sa.String(length=256)))
    op.add_column("deployments", sa.Column("pause_reason", sa.String(length=256)))
    op.add_column("deployments", sa.Column("resumed_at_finished", sa.Integer()))
    op.add_column("deployments", sa.Column("rollback_bundle_id", sa.Uuid()))
    op.add_column(
        "deployments",
        sa.Column("rollback_approval", postgresql.JSONB(astext_type=sa.Text())),
    )
    op.add_column("deployments", sa.Column("rollback_of", sa.Uuid()))
    op.create_foreign_key(
        op.f("fk_deployments_rollback_bundle_id_bundles"),
        "deployments",
        "bundles",
        ["rollback_bundle_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_foreign_key(
        op.f("fk_deployments_rollback_of_deployments"),
        "deployments",
        "deployments",
        ["rollback_of"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_index(op.f("ix_deployments_rollback_of"), "deployments", ["rollback_of"])
    op.create_table(
        "deployment_events",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("deployment_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deployment_events_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_events")),
    )
    op.create_index(
        "ix_deployment_events_deployment_id_id", "deployment_events", ["deployment_id", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_deployment_events_deployment_id_id", table_name="deployment_events")
    op.drop_table("deployment_events")
    op.drop_index(op.f("ix_deployments_rollback_of"), table_name="deployments")
    op.drop_constraint(
        op.f("fk_deployments_rollback_of_deployments"), "deployments", type_="foreignkey"
    )
    op.drop_constraint(
        op.f("fk_deployments_rollback_bundle_id_bundles"), "deployments", type_="foreignkey"
    )
    for name in (
        "rollback_of",
        "rollback_approval",
        "rollback_bundle_id",
        "resumed_at_finished",
        "pause_reason",
        "waiting_for",
        "wave_reached_at",
        "forced_wave",
        "approved_wave",
        "current_wave",
    ):
        op.drop_column("deployments", name)
    for name in ("admitted_at", "not_before", "start_delay_s", "position", "wave"):
        op.drop_column("deployment_executions", name)
    op.execute("UPDATE deployment_executions SET state = 'pending' WHERE state = 'queued'")
    _state_check(STATES)

"""the rollout engine's durable state: plan specs, and the analyzing / rolling-back states

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 18:40:00

``rollout_specs`` holds each plan's ``RolloutPlan`` (what the controller executes);
the plan CHECK constraint takes the states ``core.states.RolloutState``
gained (``analyzing``, ``rolling-back``). The circuit breaker is a control flag
(``rollout.breaker``), so it needs no table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = ("draft", "awaiting-approval", "approved", "running", "paused",
           "awaiting-promotion", "succeeded", "failed", "aborted", "rolled-back")
_AFTER = (*_BEFORE, "analyzing", "rolling-back")


def _in(values: tuple[str, ...]) -> str:
    return f"status IN ({', '.join(repr(v) for v in values)})"


def _plan_states(values: tuple[str, ...]) -> None:
    with op.batch_alter_table("rollout_plans", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_rollout_plans_status"), type_="check")
        batch_op.create_check_constraint(op.f("ck_rollout_plans_status"), _in(values))


def upgrade() -> None:
    op.create_table(
        "rollout_specs",
        sa.Column("plan_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["plan_id"], ["rollout_plans.id"],
                                name=op.f("fk_rollout_specs_plan_id_rollout_plans"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("plan_id", name=op.f("pk_rollout_specs")),
    )
    _plan_states(_AFTER)


def downgrade() -> None:
    op.execute("UPDATE rollout_plans SET status = 'failed' "
               "WHERE status IN ('analyzing', 'rolling-back')")
    _plan_states(_BEFORE)
    op.drop_table("rollout_specs")

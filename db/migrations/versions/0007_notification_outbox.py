"""the webhook notification outbox

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 18:40:00

One row per message (``db.outbox``): queued in the transaction of the event it is
about, delivered by the controller's notify step, retried with backoff until sent
or dead. The due index serves "pending and due now" without a scan.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.base

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=False),
        sa.Column("created_at", db.base.UtcDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", db.base.UtcDateTime(), nullable=False),
        sa.Column("sent_at", db.base.UtcDateTime(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.CheckConstraint("state IN ('pending', 'sent', 'dead')",
                           name=op.f("ck_notifications_state")),
        sa.CheckConstraint("kind IN ('approval-waiting', 'rollout-failed', 'rolled-back', "
                           "'breaker-opened', 'critical-alert')",
                           name=op.f("ck_notifications_kind")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_notifications_attempts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_notifications_dedupe_key")),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index("ix_notifications_due", ["state", "next_attempt_at"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_due")
    op.drop_table("notifications")

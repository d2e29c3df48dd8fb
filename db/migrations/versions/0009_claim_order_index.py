"""the queue's claim-order index and batch placement

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 18:40:00

A claim takes the most urgent, then oldest, queued requests. With only
(status, available_at) indexed, each single-request claim sorted every queued
row (slower than a naive read-then-write). With (status, priority_rank, id) the
claim walks the priority ranks from the most urgent and reads each rank's rows
oldest first straight from the index (an ascending index: SQLite's reflection
keeps no DESC, so ``alembic check`` could not compare one).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("placement_requests", schema=None) as batch_op:
        batch_op.create_index("ix_placement_requests_claim_order",
                              ["status", "priority_rank", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("placement_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_placement_requests_claim_order")

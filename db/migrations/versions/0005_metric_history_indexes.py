"""metric history indexes: a covering series index, samples by age, roll-ups by age

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 18:00:00

Charts read (metric, key, ts, value) from the index alone; retention deletes raw
samples and roll-ups by age, and finds the newest roll-up, on an index instead of
scanning the tables.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("metric_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_metric_samples_series")
        batch_op.create_index("ix_metric_samples_series", ["metric", "key", "ts", "value"],
                              unique=False)
        batch_op.create_index("ix_metric_samples_ts", ["ts"], unique=False)
    with op.batch_alter_table("metric_rollups", schema=None) as batch_op:
        batch_op.create_index("ix_metric_rollups_age", ["resolution_s", "bucket_ts"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("metric_rollups", schema=None) as batch_op:
        batch_op.drop_index("ix_metric_rollups_age")
    with op.batch_alter_table("metric_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_metric_samples_ts")
        batch_op.drop_index("ix_metric_samples_series")
        batch_op.create_index("ix_metric_samples_series", ["metric", "key", "ts"], unique=False)

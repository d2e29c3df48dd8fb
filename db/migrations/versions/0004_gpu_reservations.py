"""GPU reservations in the store, with a lock row per GPU

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.base

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gpu_locks",
        sa.Column("node", sa.String(length=253), nullable=False),
        sa.Column("gpu_index", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("node", "gpu_index", name=op.f("pk_gpu_locks")),
    )
    op.create_table(
        "gpu_reservations",
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("node", sa.String(length=253), nullable=False),
        sa.Column("gpu_index", sa.Integer(), nullable=False),
        sa.Column("thread_pct", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("reserved_by", sa.String(length=160), nullable=False),
        sa.Column("reserved_at", db.base.UtcDateTime(), nullable=False),
        sa.CheckConstraint("memory_mib >= 0", name=op.f("ck_gpu_reservations_memory_mib")),
        sa.CheckConstraint("thread_pct >= 1 AND thread_pct <= 100",
                           name=op.f("ck_gpu_reservations_thread_pct")),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_gpu_reservations")),
    )
    with op.batch_alter_table("gpu_reservations", schema=None) as batch_op:
        batch_op.create_index("ix_gpu_reservations_gpu", ["node", "gpu_index"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("gpu_reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_gpu_reservations_gpu")
    op.drop_table("gpu_reservations")
    op.drop_table("gpu_locks")

"""roll-ups stored in series order: the bucket key is the primary key

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 06:30:00

A chart reads one series' buckets of one tier: (metric, key, resolution_s,
bucket_ts) in order. Keyed by an autoincrement id, the rows lay in write order,
one series' buckets scattered among every other series' (a 5,000-GPU fleet
writes 15,000 series per bucket), so a 30-day chart fetched a table page per
bucket through the unique index. With the bucket key as the primary key (and,
on SQLite, a WITHOUT ROWID table, whose rows are the key's B-tree) a series'
buckets are neighbours: the read is one short range scan, and the unique index
that duplicated the key is gone. Nothing referenced the id.

SQLite cannot change a primary key in place: the table is copied in key order
(a 5,000-GPU store with 30 days of roll-ups, 11 million rows, takes a minute or
two once). PostgreSQL swaps the constraints in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = ["metric", "key", "resolution_s", "bucket_ts"]
VALUES = ["count", "total", "minimum", "maximum"]


def _columns() -> list[sa.Column[object]]:
    return [sa.Column("bucket_ts", sa.Float(), nullable=False),
            sa.Column("resolution_s", sa.Integer(), nullable=False),
            sa.Column("metric", sa.String(length=64), nullable=False),
            sa.Column("key", sa.String(length=256), nullable=False),
            sa.Column("count", sa.Integer(), nullable=False),
            sa.Column("total", sa.Float(), nullable=False),
            sa.Column("minimum", sa.Float(), nullable=False),
            sa.Column("maximum", sa.Float(), nullable=False)]


def _rebuild_sqlite(*keys: sa.schema.SchemaItem, id_column: bool,
                    with_rowid: bool) -> None:
    """SQLite: the table again with other keys, its rows copied in bucket-key order."""
    columns = ([sa.Column("id", sa.Integer(), autoincrement=True, nullable=False)]
               if id_column else [])
    op.create_table("metric_rollups_rebuilt", *columns, *_columns(), *keys,
                    sqlite_with_rowid=with_rowid)
    names = ", ".join(f'"{c}"' for c in (*KEY, *VALUES))
    op.execute(f"INSERT INTO metric_rollups_rebuilt ({names}) SELECT {names} "
               f"FROM metric_rollups ORDER BY metric, key, resolution_s, bucket_ts")
    op.drop_table("metric_rollups")
    op.rename_table("metric_rollups_rebuilt", "metric_rollups")
    op.create_index("ix_metric_rollups_age", "metric_rollups", ["resolution_s", "bucket_ts"],
                    unique=False)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(sa.PrimaryKeyConstraint(*KEY, name="pk_metric_rollups"),
                        id_column=False, with_rowid=False)
        return
    op.drop_constraint("pk_metric_rollups", "metric_rollups", type_="primary")
    op.drop_constraint("uq_metric_rollups_bucket", "metric_rollups", type_="unique")
    op.drop_column("metric_rollups", "id")
    op.create_primary_key("pk_metric_rollups", "metric_rollups", KEY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(sa.PrimaryKeyConstraint("id", name="pk_metric_rollups"),
                        sa.UniqueConstraint(*KEY, name="uq_metric_rollups_bucket"),
                        id_column=True, with_rowid=True)
        return
    op.drop_constraint("pk_metric_rollups", "metric_rollups", type_="primary")
    op.add_column("metric_rollups", sa.Column("id", sa.BigInteger(), sa.Identity(),
                                              nullable=False))
    op.create_primary_key("pk_metric_rollups", "metric_rollups", ["id"])
    op.create_unique_constraint("uq_metric_rollups_bucket", "metric_rollups", KEY)

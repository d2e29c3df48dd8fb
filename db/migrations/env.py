"""Alembic environment: runs on the engine handed over by ``db.engine``.

``render_as_batch`` lets SQLite alter tables (it rebuilds them). Several
processes may start together on an empty database (two controllers, a console):
``db.engine.migration_lock`` makes them migrate one at a time, and the later
ones find the schema at head.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from core.adapters.settings_source import load_settings
from db.engine import database_url, make_engine, migration_lock
from db.models import Base

config = context.config
engine: Engine = config.attributes.get("engine") or make_engine(
    database_url(load_settings().runtime.database_url))

with engine.connect() as connection, migration_lock(connection):
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()

"""Engine and session factory from the configured URL (``DATABASE_URL``); migrations at
start-up.

Default: a SQLite file under ``./var/`` in WAL mode with foreign keys on and a
busy timeout, so that a console, a controller thread and a second process
can share it. Production: ``DATABASE_URL=postgresql+psycopg://…``.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from core.errors import ValidationError
from core.redact import redact_url

DEFAULT_SQLITE_PATH = Path("var") / "gpu-scheduler.db"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def database_url(configured: str = "") -> str:
    """The store's URL: ``configured`` (``settings.runtime.database_url``, which
    ``DATABASE_URL`` sets) checked, or the default SQLite file (its folder created)."""
    url = configured.strip()
    if url:
        try:
            parsed = make_url(url)
        except Exception as exc:
            raise ValidationError("DATABASE_URL", "is not a valid database URL") from exc
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValidationError("DATABASE_URL", "use sqlite:/// or postgresql+psycopg://")
        return url
    DEFAULT_SQLITE_PATH.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_SQLITE_PATH}"


def redacted(url: str) -> str:
    """The URL without credentials, for logs and the UI (``core.redact``, the one helper)."""
    return redact_url(url)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    if make_url(url).get_backend_name() == "sqlite":
        if ":memory:" in url or url.rstrip("/") == "sqlite:":
            raise ValidationError("DATABASE_URL", "in-memory SQLite is not shared between "
                                                  "threads; use a file")
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


# Any fixed 64-bit key: the advisory lock that serializes migrations on PostgreSQL.
MIGRATION_LOCK_KEY = 0x6773_635F_6D69_6772  # "gsc_migr"


@contextlib.contextmanager
def migration_lock(connection: Connection) -> Iterator[None]:
    """Hold the database's migration lock while the body runs.

    PostgreSQL: a session advisory lock on this connection (released when the
    body ends, or when the connection drops). SQLite: an exclusive ``flock`` on a
    file beside the database (SQLite's own write lock is taken lazily, after
    Alembic has already read the current revision).
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"),
                               {"key": MIGRATION_LOCK_KEY})
            connection.commit()
        return
    database = connection.engine.url.database
    if not database:
        yield
        return
    with open(f"{database}.migrate-lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    command.downgrade(alembic_config(engine), revision)

"""Store fixtures: the same tests run on a SQLite temp file and on a real PostgreSQL.

PostgreSQL comes from ``TEST_DATABASE_URL`` when set (its database is used to
create and drop scratch databases), otherwise from a throwaway cluster
started for the session (``bench.pg_cluster``). Without PostgreSQL binaries the
PostgreSQL half is skipped, or fails under ``REQUIRE_INTEGRATION=1``.
Every test gets a fresh database already migrated to head, copied from a
template that is migrated once per session.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from bench import pg_cluster
from db.engine import make_engine, session_factory, upgrade

BACKENDS = ("sqlite", "postgresql")


@dataclass
class PgServer:
    """Where scratch databases are created: an admin URL and a migrated template."""

    admin_url: str
    template: str

    def url(self, database: str) -> str:
        return make_url(self.admin_url).set(database=database).render_as_string(
            hide_password=False)

    def admin_engine(self) -> Engine:
        return create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)

    def create_database(self, name: str, *, template: str | None = None) -> str:
        engine = self.admin_engine()
        try:
            with engine.connect() as conn:
                suffix = f' TEMPLATE "{template}"' if template else ""
                conn.execute(text(f'CREATE DATABASE "{name}"{suffix}'))
        finally:
            engine.dispose()
        return self.url(name)

    def drop_database(self, name: str) -> None:
        engine = self.admin_engine()
        try:
            with engine.connect() as conn:
                # FORCE: a worker process that died mid-test may leave a connection.
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            engine.dispose()


@dataclass
class Store:
    backend: str
    url: str
    engine: Engine
    factory: sessionmaker[Session]


def _postgres_missing(reason: str) -> None:
    if os.environ.get("REQUIRE_INTEGRATION") == "1":
        pytest.fail(f"REQUIRE_INTEGRATION=1 but {reason}")
    pytest.skip(reason)


def scratch_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    cluster: pg_cluster.Cluster | None = None
    admin_url = os.environ.get("TEST_DATABASE_URL", "").strip()
    if not admin_url:
        try:
            cluster = pg_cluster.start()
        except pg_cluster.PostgresUnavailable as exc:
            _postgres_missing(f"{exc} (or set TEST_DATABASE_URL)")
        assert cluster is not None
        admin_url = cluster.url()
    parsed = make_url(admin_url)
    if parsed.drivername == "postgresql":  # psycopg 3 is the driver this project installs
        admin_url = parsed.set(drivername="postgresql+psycopg").render_as_string(
            hide_password=False)
    try:
        server = PgServer(admin_url=admin_url, template=scratch_name("gsc_template"))
        server.create_database(server.template)
        engine = make_engine(server.url(server.template))
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        try:
            yield server
        finally:
            server.drop_database(server.template)
    finally:
        if cluster is not None:
            cluster.stop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        upgrade(engine)
        with engine.connect() as conn:  # fold the WAL into the main file before copying
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
    return path


@pytest.fixture()
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database (no tables) on the backend named by ``request.param``."""
    backend = request.param
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server: PgServer = request.getfixturevalue("pg_server")
    name = scratch_name("gsc_empty")
    url = server.create_database(name)
    try:
        yield url
    finally:
        server.drop_database(name)


@contextmanager
def fresh_database(request: pytest.FixtureRequest, *, backend: str,
                   directory: Path) -> Iterator[str]:
    """A new database migrated to head (a copy of the template), dropped afterwards."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = directory / f"store-{uuid.uuid4().hex[:8]}.db"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
        return
    server: PgServer = request.getfixturevalue("pg_server")
    name = scratch_name("gsc_test")
    url = server.create_database(name, template=server.template)
    try:
        yield url
    finally:
        server.drop_database(name)


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database migrated to head, as a URL (for tests that start processes)."""
    with fresh_database(request, backend=request.param, directory=tmp_path) as url:
        yield url


@pytest.fixture()
def store(store_url: str) -> Iterator[Store]:
    """A fresh database migrated to head, with an engine and a session factory."""
    backend = make_url(store_url).get_backend_name()
    engine = make_engine(store_url)
    try:
        yield Store(backend=backend, url=store_url, engine=engine,
                    factory=session_factory(engine))
    finally:
        engine.dispose()

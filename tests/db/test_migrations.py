"""Alembic migrations from an empty database, down to base and up again, on both backends."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from core.model import PlacementRequest
from db import queue
from db.engine import alembic_config, downgrade, make_engine, session_factory, upgrade
from db.models import Base
from tests.db.conftest import BACKENDS

ROOT = Path(__file__).resolve().parents[2]
MODEL_TABLES = set(Base.metadata.tables)


@pytest.fixture()
def empty_engine(empty_database: str) -> Iterator[Engine]:
    engine = make_engine(empty_database)
    try:
        yield engine
    finally:
        engine.dispose()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def a_request_round_trips(engine: Engine) -> None:
    factory = session_factory(engine)
    now = datetime.now(UTC)
    with factory.begin() as s:
        queue.enqueue(s, PlacementRequest.parse({
            "model_name": "llama-2-7b", "model_memory_gb": 14, "priority": "HIGH",
            "latency_sla_ms": 100, "request_id": "r1"}), now=now)
        claimed = queue.claim(s, worker="w1", now=now, lease_seconds=30)
    assert [q.request_id for q in claimed] == ["r1"]


@pytest.mark.parametrize("empty_database", BACKENDS, indirect=True)
def test_upgrade_from_an_empty_database_creates_every_table(empty_engine: Engine) -> None:
    assert tables(empty_engine) == set()

    upgrade(empty_engine)

    assert tables(empty_engine) == MODEL_TABLES
    assert current_revision(empty_engine) == head_revision()
    inspector = inspect(empty_engine)
    for name, table in Base.metadata.tables.items():
        assert {c["name"] for c in inspector.get_columns(name)} == set(table.columns.keys())
    a_request_round_trips(empty_engine)


@pytest.mark.parametrize("empty_database", BACKENDS, indirect=True)
def test_downgrade_to_base_removes_every_table_and_upgrade_works_again(
        empty_engine: Engine) -> None:
    upgrade(empty_engine)
    a_request_round_trips(empty_engine)

    downgrade(empty_engine, "base")

    assert tables(empty_engine) == set()
    assert current_revision(empty_engine) is None

    upgrade(empty_engine)

    assert tables(empty_engine) == MODEL_TABLES
    assert current_revision(empty_engine) == head_revision()
    a_request_round_trips(empty_engine)  # and the store starts empty again


@pytest.mark.parametrize("empty_database", BACKENDS, indirect=True)
def test_models_and_migrations_agree_on_each_backend(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    command.check(alembic_config(empty_engine))  # raises when autogenerate finds a diff


def test_the_migrate_check_command_reports_agreement() -> None:
    proc = subprocess.run([sys.executable, "-m", "db.migrate", "check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "migrations match the models" in proc.stdout

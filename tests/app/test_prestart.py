"""The runtime starts with the console process (``python -m app.serve``), not with the
first browser: the history backfill streams into the store before anyone opens a page,
and the first page takes that runtime instead of building a second one."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import prestart
from core.adapters.settings_source import load_settings
from tests.app.conftest import open_page
from tests.e2e.console import ROOT, free_port


@pytest.fixture()
def fresh_prestart(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(prestart, "_pending", None)
    yield
    holder = prestart._pending
    if holder is not None:
        holder.done.wait(60)
        if holder.runtime is not None and not holder.taken:
            holder.runtime.close()


def test_the_first_page_takes_the_runtime_built_at_start(fresh_prestart: None) -> None:
    assert prestart.status() == "not started"
    prestart.start(load_settings())
    prestart.start(load_settings())  # a second call starts nothing more
    at = open_page("overview")
    assert prestart.status() == "taken"
    assert prestart.take(timeout_s=1) is None  # only once
    assert at.title[0].value == "Overview"


def test_the_runtime_built_at_start_is_out_of_the_collectors_sight(
        fresh_prestart: None) -> None:
    """A 5,000-GPU runtime is ~140k objects that never die: frozen once built, so the
    full collections a monitor sample triggers do not walk them again."""
    import gc

    gc.unfreeze()
    try:
        prestart.start(load_settings())
        runtime = prestart.take(timeout_s=120)
        assert runtime is not None
        assert gc.get_freeze_count() > 10_000
        # In none of the collected generations: the permanent one.
        assert not any(o is runtime for g in (0, 1, 2) for o in gc.get_objects(g))
        runtime.close()
    finally:
        gc.unfreeze()


def test_a_runtime_that_failed_at_start_is_built_again_by_the_page(
        fresh_prestart: None, tmp_path: Path) -> None:
    settings = load_settings()
    broken = dataclasses.replace(settings, runtime=dataclasses.replace(
        settings.runtime, database_url=f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}"))
    prestart.start(broken)
    assert prestart.take(timeout_s=60) is None
    assert prestart.status().startswith("failed:")
    at = open_page("overview")  # builds its own, on the store the environment names
    assert at.title[0].value == "Overview"


def _samples(db: Path) -> int:
    """Samples of the simulated past (the backfill's), not the live monitor's."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("select count(*) from metric_samples where ts < ?",
                                    (time.time() - 600,)).fetchone()[0])
    except sqlite3.OperationalError:  # not migrated yet
        return 0


def test_the_backfill_starts_with_the_process_before_any_browser(tmp_path: Path) -> None:
    db = tmp_path / "console.db"
    port = free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db}", "GSC_BACKFILL_HOURS": "0.5",
           "GSC_EMBEDDED_CONTROLLER": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("PROMETHEUS_URL", None)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.serve", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while _samples(db) == 0:  # nobody has opened a page: no session exists
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, f"no history written: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        while True:  # and the server listens meanwhile
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                            timeout=5) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.3)
        first = _samples(db)
        while _samples(db) <= first:  # the backfill goes on, still without a browser
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode in (0, -15), log.read_text()[-2000:]

"""The embedded twin is kept caught up to the clock in the background: a page's read then
simulates at most a tick's worth, not the seconds since the last read."""

from __future__ import annotations

import time
from pathlib import Path

from app.bootstrap import TwinTicker, build_runtime
from core.adapters.settings_source import load_settings
from core.clock import ManualClock
from core.sim.twin import Twin, TwinConfig


def test_the_ticker_advances_the_twin_with_no_read(tmp_path: Path) -> None:
    settings = load_settings(env={"DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}"})
    clock = ManualClock(1_700_000_000.0)
    twin = Twin(settings, clock=clock, config=TwinConfig(warmup_s=0, seed=0))
    before = twin.simulated_until
    ticker = TwinTicker(twin, every_s=0.05)
    try:
        clock.advance(30.0)
        deadline = time.monotonic() + 20
        while twin.simulated_until < before + 29 and time.monotonic() < deadline:
            time.sleep(0.05)
        # Caught up by the ticker alone (no port call was made).
        assert twin.simulated_until >= before + 29
    finally:
        ticker.stop()
    assert not ticker._thread.is_alive()


def test_an_embedded_runtime_runs_a_ticker_and_stops_it_on_close(tmp_path: Path) -> None:
    rt = build_runtime(load_settings(env={
        "DATABASE_URL": f"sqlite:///{tmp_path / 'e.db'}", "GSC_BACKFILL_HOURS": "0",
        "GSC_EMBEDDED_CONTROLLER": "0"}))
    try:
        assert rt.ticker is not None and rt.ticker.twin is rt.twin
    finally:
        rt.close()
    assert rt.ticker is not None and not rt.ticker._thread.is_alive()

"""Retention size: the default fleet's metric history over 30 simulated days, retention on.

Run: ``python -m bench.retention_size [--days 30] [--out FILE]``.

The digital twin of the default fleet (``[fleet]``: 4 H100 + 8 A100) with a
manual clock gives the exact series the monitor stores per sample
(``core.monitor.metric_points``: 115 points per sample) and their values,
read from the twin every 10 simulated minutes; each 30 s sample in between
carries those values with ±2 % noise (so the stored floats are as varied as
real ones). Samples are written every 10 minutes of simulated time (20
samples per transaction; the monitor writes one per transaction, which makes
no difference to the size), and the controller's retention step
(``core.controller.retention``, default ``[retention]``: raw 48 h, 5-minute
buckets 8 days, hourly buckets 35 days) runs on its cadence (every 10 min)
with its real time budget.

Reported per checkpoint day: rows per tier and the SQLite file size after
VACUUM; then the longest store call of the retention step (the longest time
it held a transaction), what the Overview's 30-day range reads per chart
(points and Plotly JSON bytes for its six charts, and the time to read
them), and the same without retention (every raw sample of 30 days: its
size extrapolated from the first day, its JSON built from one raw day).
The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from sqlalchemy import func, select

from app.widgets.charts import series_figure
from core.adapters.settings_source import load_settings
from core.clock import ManualClock
from core.controller.retention import RetentionStep, retention_step
from core.monitor import FLEET, metric_points
from core.ports import MetricPoint, RollupBatch
from core.sim.twin import Twin, TwinConfig
from db import metrics
from db.engine import make_engine, session_factory, upgrade
from db.models import MetricRollupRow, MetricSampleRow
from db.stores import SqlRetentionStore

DAY = 86_400.0
SAMPLE_S = 30.0  # [runtime] monitor_interval_s
WRITE_EVERY_S = 600.0
T0 = 1_800_000_000.0 // DAY * DAY
# The Overview's charts (pages/overview.py CHARTS) and its longest range.
OVERVIEW_METRICS = ("qps_1m", "success_rate", "p99_ms", "power_w", "cost_per_1k", "tops_per_w")
CHECKPOINTS = (1, 2, 7, 14, 21, 30)

T = TypeVar("T")


class TimedStore:
    """The retention store with the longest call (one transaction) recorded."""

    def __init__(self, inner: SqlRetentionStore) -> None:
        self.inner = inner
        self.longest = 0.0
        self.longest_call = ""
        self.calls = 0

    def _timed(self, name: str, call: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return call()
        finally:
            self.calls += 1
            took = time.perf_counter() - started
            if took > self.longest:
                self.longest, self.longest_call = took, name

    def rolled_until(self, *, resolution_s: int) -> float | None:
        return self._timed("rolled_until",
                           lambda: self.inner.rolled_until(resolution_s=resolution_s))

    def roll_up_next(self, *, before_ts: float, resolutions: Sequence[int],
                     max_rows: int) -> RollupBatch | None:
        return self._timed("roll_up_next", lambda: self.inner.roll_up_next(
            before_ts=before_ts, resolutions=resolutions, max_rows=max_rows))

    def prune_samples(self, *, before_ts: float, limit: int) -> int:
        return self._timed("prune_samples", lambda: self.inner.prune_samples(
            before_ts=before_ts, limit=limit))

    def prune_rollups(self, *, resolution_s: int, before_ts: float, limit: int) -> int:
        return self._timed("prune_rollups", lambda: self.inner.prune_rollups(
            resolution_s=resolution_s, before_ts=before_ts, limit=limit))


def vacuumed_size(engine: Any, directory: Path) -> int:
    path = directory / "vacuumed.db"
    path.unlink(missing_ok=True)
    with engine.connect() as conn:
        conn.exec_driver_sql(f"VACUUM INTO '{path}'")
    size = path.stat().st_size
    path.unlink()
    return size


def chart_payload(points: Sequence[tuple[float, float]]) -> int:
    frame = pd.DataFrame(points, columns=["ts", "value"])
    frame["time"] = pd.to_datetime(frame["ts"], unit="s", utc=True)
    return len(series_figure(frame, title="t", unit="u").to_json())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    settings = load_settings()
    cfg = settings.retention
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    clock = ManualClock(T0)
    twin = Twin(settings, clock=clock, config=TwinConfig(warmup_s=900, seed=0))
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        engine = make_engine(f"sqlite:///{directory / 'history.db'}")
        upgrade(engine)
        factory = session_factory(engine)
        store = TimedStore(SqlRetentionStore(factory))
        step: RetentionStep = retention_step(store=store, settings=cfg,
                                             timer=time.perf_counter)
        say(f"retention: raw {cfg.raw_hours:g} h, {cfg.fine_resolution_s} s buckets "
            f"{cfg.fine_days:g} d, {cfg.coarse_resolution_s} s buckets {cfg.coarse_days:g} d, "
            f"a pass every {cfg.interval_s:g} s; samples every {SAMPLE_S:g} s")
        written = 0
        per_sample = 0
        first_day_size = 0
        longest_pass = 0.0
        t = T0
        started = time.perf_counter()
        end = T0 + args.days * DAY
        while t < end:
            base = metric_points(twin.telemetry(), layout=twin.nodes(), catalog=settings.catalog)
            per_sample = len(base)
            batch: list[MetricPoint] = []
            for i in range(int(WRITE_EVERY_S // SAMPLE_S)):
                ts = t + i * SAMPLE_S
                batch += [MetricPoint(ts, p.metric, p.key, p.value * rng.uniform(0.98, 1.02))
                          for p in base]
            with factory.begin() as s:
                metrics.add_samples(s, batch)
            written += len(batch)
            t += WRITE_EVERY_S
            clock.advance(WRITE_EVERY_S)
            if step.due(t):
                begun = time.perf_counter()
                step.run(now=t, leading=True)
                longest_pass = max(longest_pass, time.perf_counter() - begun)
            day = (t - T0) / DAY
            if day in CHECKPOINTS or t >= end:
                with factory() as s:
                    raw = s.scalar(select(func.count()).select_from(MetricSampleRow)) or 0
                    tiers = dict(s.execute(select(MetricRollupRow.resolution_s, func.count())
                                           .group_by(MetricRollupRow.resolution_s)).all())
                size = vacuumed_size(engine, directory)
                if day == 1:
                    first_day_size = size
                say(f"day {day:4.0f}: raw {raw:>9,} rows, {cfg.fine_resolution_s} s "
                    f"{tiers.get(cfg.fine_resolution_s, 0):>8,}, {cfg.coarse_resolution_s} s "
                    f"{tiers.get(cfg.coarse_resolution_s, 0):>7,}; file after VACUUM "
                    f"{size / 2**20:7.1f} MiB (written so far {written:,} samples, "
                    f"{time.perf_counter() - started:.0f} s)")
        final_size = size
        say(f"{per_sample} points per sample; retention: {store.calls:,} store calls, the "
            f"longest {store.longest * 1000:.0f} ms ({store.longest_call}); the longest pass "
            f"{longest_pass * 1000:.0f} ms (budget {cfg.pass_budget_s:g} s)")
        # The Overview's 30-day range.
        now = t
        read_started = time.perf_counter()
        with factory() as s:
            charts = [metrics.series(s, metric=m, key=FLEET, since=now - 30 * DAY, until=now,
                                     max_points=cfg.chart_max_points, retention=cfg)
                      for m in OVERVIEW_METRICS]
            raw_day = metrics.series(s, metric="qps_1m", key=FLEET, since=now - DAY, until=now)
        read_s = time.perf_counter() - read_started
        payload = sum(chart_payload(c) for c in charts)
        # Without retention: a chart of 30 days holds every raw sample of the series.
        raw_payload = chart_payload(raw_day) * 30 * len(OVERVIEW_METRICS)
        say(f"Overview 30 d: {max(len(c) for c in charts)} points per chart at most "
            f"(cap {cfg.chart_max_points}); {payload / 1024:.0f} KiB of chart JSON for its "
            f"{len(charts)} charts, read in {read_s * 1000:.0f} ms; without retention about "
            f"{raw_payload / 2**20:.1f} MiB ({len(raw_day) * 30:,} points per chart)")
        no_retention = first_day_size * args.days
        say(f"store after {args.days} days: {final_size / 2**20:.1f} MiB with retention; "
            f"without, about {no_retention / 2**20:,.0f} MiB (day 1 × {args.days})")
        engine.dispose()
    record = {"days": args.days, "points_per_sample": per_sample,
              "store_bytes": final_size, "no_retention_bytes_estimate": no_retention,
              "chart_points_max": max(len(c) for c in charts), "chart_json_bytes": payload,
              "longest_store_call_s": round(store.longest, 4)}
    say(json.dumps(record))
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

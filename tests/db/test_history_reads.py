"""History reads and the start-up backfill: charts read a capped number of points from the
tier that fits their range, aggregated in the store on the covering index; a history
still being written reads as what is there; the backfill streams into the store one
coarse bucket at a time, rolls up and prunes as retention would, and resumes."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from app.history import Backfill, BackfillProgress, refresh_s
from core.monitor import FLEET
from core.ports import MetricPoint
from core.retention_settings import RetentionSettings
from core.settings import Settings
from db import metrics
from db.models import CostLedgerRow, MetricRollupRow, MetricSampleRow
from tests.db.conftest import Store

DAY, HOUR = 86_400.0, 3_600.0
T0 = 1_800_000_000.0 // DAY * DAY
OVERVIEW_RANGES_H = (1.0, 6.0, 24.0, 168.0, 720.0)  # pages/overview.py RANGES


def wave(t: float, i: int = 0) -> float:
    return 50 + 40 * math.sin(t / 5000 + i)


STEP = 120.0


def thirty_days(store: Store, *, now: float, cfg: RetentionSettings) -> list[MetricPoint]:
    """30 days every ``STEP`` of one series, left as retention leaves them: hourly
    buckets over the whole month, 5-minute ones over ``fine_days``, raw over
    ``raw_hours`` (one transaction a day). Returns every raw point (the reference)."""
    points = [MetricPoint(T0 + k * STEP, "qps_1m", FLEET, wave(T0 + k * STEP))
              for k in range(int((now - T0) // STEP))]
    fine_from, raw_from = now - cfg.fine_days * DAY, now - cfg.raw_keep_s
    coarse = cfg.coarse_resolution_s
    per_hour = int(coarse // STEP)
    for day in range(int((now - T0) // DAY)):
        with store.factory.begin() as s:
            for h in range(day * 24, day * 24 + 24):
                hour = T0 + h * coarse
                metrics.add_samples(s, points[h * per_hour:(h + 1) * per_hour])
                tiers = cfg.resolutions if hour + coarse > fine_from else (coarse,)
                metrics.roll_up_span(s, start=hour, end=hour + coarse, resolutions=tiers)
                if hour + coarse <= raw_from:
                    metrics.delete_samples_between(s, start=hour, end=hour + coarse)
    return points


def reference(points: list[MetricPoint], *, since: float, until: float,
              width: float) -> list[tuple[float, float]]:
    buckets: dict[float, list[float]] = defaultdict(list)
    for p in points:
        if since <= p.ts <= until:
            buckets[math.floor(p.ts / width) * width].append(p.value)
    return [(max(b, since), sum(v) / len(v)) for b, v in sorted(buckets.items())]


def test_every_overview_range_is_capped_read_from_its_tier_and_equals_the_raw_means(
        store: Store) -> None:
    cfg = RetentionSettings()  # 500 points at most
    now = T0 + 30 * DAY
    raw = thirty_days(store, now=now, cfg=cfg)
    tiers = {1.0: 0, 6.0: 0, 24.0: 0, 168.0: 300, 720.0: 3600}
    with store.factory() as s:
        for hours in OVERVIEW_RANGES_H:
            since = now - hours * HOUR
            chosen, width = metrics.chart_width(since=since, until=now,
                                                max_points=cfg.chart_max_points, retention=cfg)
            assert chosen == tiers[hours], hours
            got = metrics.series(s, metric="qps_1m", key=FLEET, since=since, until=now,
                                 max_points=cfg.chart_max_points, retention=cfg)
            want = reference(raw, since=since, until=now, width=width)
            assert 2 <= len(got) <= cfg.chart_max_points, hours
            assert [t for t, _ in got] == [t for t, _ in want], hours
            for (_, a), (_, b) in zip(got, want, strict=True):
                assert math.isclose(a, b, rel_tol=1e-9), hours


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_chart_reads_aggregate_in_sql_on_the_covering_index(store: Store) -> None:
    """Every statement a chart read sends is a GROUP BY in the store; the raw one is
    answered from the covering index alone (no table lookups), the roll-up ones search
    the bucket's unique index; none returns more rows than the chart has points."""
    cfg = RetentionSettings(chart_max_points=100)
    now = T0 + 30 * DAY
    thirty_days(store, now=now, cfg=cfg)
    sent: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        sent.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        with store.factory() as s:
            for hours in (6.0, 720.0):
                got = metrics.series(s, metric="qps_1m", key=FLEET, since=now - hours * HOUR,
                                     until=now, max_points=cfg.chart_max_points,
                                     retention=cfg)
                assert len(got) <= cfg.chart_max_points
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    reads = [(q, p) for q, p in sent if q.lstrip().upper().startswith("SELECT")]
    assert reads and all("GROUP BY" in q for q, _ in reads)
    with store.engine.connect() as conn:
        for q, p in reads:
            plan = " | ".join(str(r[-1]) for r in conn.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {q}", p).all())  # type: ignore[arg-type]
            if "FROM metric_samples" in q:
                assert "USING COVERING INDEX ix_metric_samples_series" in plan, plan
            else:
                # The bucket key is the table's own key (WITHOUT ROWID): one range scan of
                # the series' neighbouring rows, no lookup from an index into the table.
                assert "SEARCH metric_rollups USING PRIMARY KEY" in plan, plan
                assert "(metric=? AND key=? AND resolution_s=? AND bucket_ts>" in plan, plan
            assert "SCAN metric" not in plan, plan
            rows = conn.exec_driver_sql(q, p).all()  # type: ignore[arg-type]
            assert len(rows) <= cfg.chart_max_points


def test_a_history_still_being_written_reads_as_what_is_there(store: Store) -> None:
    """The backfill has written the first hours of a day and the live monitor its first
    samples at the end: the day's chart shows both, and nothing in between (no zeros)."""
    cfg = RetentionSettings()
    now = T0 + DAY
    written = [MetricPoint(T0 + k * 30.0, "power_w", FLEET, wave(T0 + k * 30.0))
               for k in range(int(5 * HOUR // 30))]
    live = [MetricPoint(now - 90.0 + k * 30.0, "power_w", FLEET, 7.0) for k in range(3)]
    with store.factory.begin() as s:
        metrics.add_samples(s, written + live)
        metrics.roll_up_span(s, start=T0, end=T0 + 4 * HOUR, resolutions=cfg.resolutions)
    with store.factory() as s:
        got = metrics.series(s, metric="power_w", key=FLEET, since=T0, until=now,
                             max_points=200, retention=cfg)
    _, width = metrics.chart_width(since=T0, until=now, max_points=200, retention=cfg)
    want = reference(written + live, since=T0, until=now, width=width)
    assert [t for t, _ in got] == [t for t, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-9)
    gap = [t for t, _ in got if T0 + 5 * HOUR <= t < now - 2 * width]
    assert gap == [] and got[-1][1] == 7.0


def test_refresh_grows_with_the_range_within_bounds() -> None:
    assert refresh_s(HOUR) == 5.0
    assert refresh_s(6 * HOUR) == 30.0
    assert refresh_s(30 * DAY) == 300.0
    assert refresh_s(60.0) == 5.0


def test_progress_says_how_many_hours_are_loaded() -> None:
    p = BackfillProgress(done_hours=3.4, total_hours=719.99, samples=400, finished=False)
    assert p.note() == "history still loading: 3 of 720 hours"
    assert BackfillProgress(done_hours=720, total_hours=720, samples=1,
                            finished=True).note() is None
    failed = BackfillProgress(done_hours=2, total_hours=720, samples=1, finished=True,
                              error="OperationalError: disk full")
    assert "stopped after 2 of 720 hours" in (failed.note() or "")


# --------------------------------------------------------------------------- backfill


def hourly_fleet_power_counts(s: Session) -> dict[float, int]:
    """The fleet's power roll-ups of one hour: samples per bucket."""
    return dict(s.execute(  # type: ignore[arg-type]
        select(MetricRollupRow.bucket_ts, MetricRollupRow.count)
        .where(MetricRollupRow.metric == "power_w", MetricRollupRow.key == FLEET,
               MetricRollupRow.resolution_s == 3600)).all())


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_backfill_streams_one_bucket_per_batch_rolls_up_and_prunes_old_raw_samples(
        store: Store, settings: Settings) -> None:
    cfg = RetentionSettings(raw_hours=1.1, fine_days=0.08)  # fine tier: the last 1.9 h
    settings = dataclasses.replace(settings, retention=cfg)
    now = T0 + 1234.0  # the first and the last hour are partial
    seen: list[BackfillProgress] = []
    batch_rows: list[int] = []

    def on_batch(p: BackfillProgress) -> None:
        seen.append(p)
        with store.factory() as s:  # the store is free between batches
            batch_rows.append(s.scalar(select(func.count()).select_from(MetricSampleRow)
                                       .where(MetricSampleRow.key == FLEET,
                                              MetricSampleRow.metric == "power_w")) or 0)

    fill = Backfill(settings, store.factory, hours=3, interval_s=60, start=False, now=now,
                    on_batch=on_batch)
    assert fill.progress().total_hours == pytest.approx(3.0)
    written = fill.run()
    assert written == 3 * 60 - 1  # every 60 s from now - 3 h, the last one before now - 60 s
    assert len(seen) == 4  # one batch per hour bucket: partial, whole, whole, partial
    assert [p.samples for p in seen] == sorted(p.samples for p in seen)
    assert all(b - a <= 60 for a, b in zip([0] + [p.samples for p in seen],
                                            [p.samples for p in seen], strict=False))
    assert fill.progress().finished and fill.progress().note() is None
    assert batch_rows == [0, 0, 60, 79]  # raw samples older than 1.1 h go as it writes
    with store.factory() as s:
        oldest = s.scalar(select(func.min(MetricSampleRow.ts)))
        assert oldest is not None and oldest >= now - cfg.raw_keep_s - HOUR
        per_bucket = hourly_fleet_power_counts(s)
        first = math.floor((now - 3 * HOUR) / HOUR) * HOUR
        assert per_bucket == {first: 40, first + HOUR: 60, first + 2 * HOUR: 60}
        fine = s.scalar(select(func.min(MetricRollupRow.bucket_ts))
                        .where(MetricRollupRow.resolution_s == 300))
        assert fine is not None and fine >= first + HOUR  # none past fine_days
        assert (s.scalar(select(func.count()).select_from(CostLedgerRow)) or 0) > 0
        chart = metrics.series(s, metric="power_w", key=FLEET, since=now - 3 * HOUR,
                               until=now, max_points=50, retention=cfg)
    assert 20 <= len(chart) <= 50 and all(v > 0 for _, v in chart)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_large_fleets_backfill_stores_smaller_batches_with_the_same_buckets(
        store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import app.history

    monkeypatch.setattr(app.history, "BATCH_GPU_READINGS", 25 * 12)  # 12 GPUs: 25 samples
    now = T0 + 1234.0
    sizes: list[int] = []
    fill = Backfill(settings, store.factory, hours=3, interval_s=60, start=False, now=now,
                    on_batch=lambda p: sizes.append(p.samples - sum(sizes)))
    assert fill.run() == 3 * 60 - 1
    # Each hour bucket (40, 60, 60, 19 samples) is split into batches of at most 25.
    assert sizes == [25, 15, 25, 25, 10, 25, 25, 10, 19]
    with store.factory() as s:
        per_bucket = hourly_fleet_power_counts(s)
    first = math.floor((now - 3 * HOUR) / HOUR) * HOUR
    assert per_bucket == {first: 40, first + HOUR: 60, first + 2 * HOUR: 60}


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_stopped_backfill_keeps_what_it_wrote_and_the_next_start_carries_on(
        store: Store, settings: Settings) -> None:
    now = T0 + 600.0
    first = Backfill(settings, store.factory, hours=2, interval_s=60, start=False, now=now)
    first.on_batch = lambda p: first.stop()
    written = first.run()
    progress = first.progress()
    assert 0 < written < 119 and not progress.finished
    assert (progress.note() or "").startswith("history still loading: ")
    with store.factory() as s:
        stored = s.scalar(select(func.count()).select_from(MetricRollupRow).where(
            MetricRollupRow.key == FLEET, MetricRollupRow.metric == "power_w",
            MetricRollupRow.resolution_s == 3600)) or 0
    assert stored == 1  # the first batch's hour, rolled up
    again = Backfill(settings, store.factory, hours=2, interval_s=60, start=False, now=now)
    assert again.start == first.start + written * 60  # on from the last sample written
    assert again.run() == 119 - written
    with store.factory() as s:
        times = [t for (t,) in s.execute(
            select(MetricSampleRow.ts).where(MetricSampleRow.key == FLEET,
                                             MetricSampleRow.metric == "power_w")
            .order_by(MetricSampleRow.ts)).all()]
    assert len(times) == len(set(times))  # nothing written twice


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_next_to_prometheus_the_monitor_stores_the_fleets_series_and_the_ledger_only(
        store: Store, settings: Settings) -> None:
    from app.bootstrap import build_monitor
    from core.clock import ManualClock
    from core.sim.twin import Twin, TwinConfig

    clock = ManualClock(T0)
    twin = Twin(settings, clock=clock, config=TwinConfig(warmup_s=900, seed=1))
    both = {flag: build_monitor(metrics=twin, factory=store.factory, interval_s=30,
                                cluster=twin, catalog=settings.catalog, fleet_only=flag)
            for flag in (False, True)}
    keys: dict[bool, set[str]] = {}
    for flag, monitor in both.items():
        with store.factory.begin() as s:
            s.execute(MetricSampleRow.__table__.delete())
            s.execute(CostLedgerRow.__table__.delete())
        for _ in range(2):  # two samples: the second books the interval's cost
            monitor.sample_once()
            clock.advance(30)
        with store.factory() as s:
            keys[flag] = set(s.scalars(select(MetricSampleRow.key).distinct()))
    assert keys[True] == {FLEET} and len(keys[False]) > 10
    with store.factory() as s:
        fleet_metrics = set(s.scalars(select(MetricSampleRow.metric).distinct()))
        assert {"qps_1m", "power_w", "cost_per_1k"} <= fleet_metrics  # what decisions read
        assert (s.scalar(select(func.count()).select_from(CostLedgerRow)) or 0) > 0

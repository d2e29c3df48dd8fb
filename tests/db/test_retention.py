"""Retention: roll-ups in two tiers, pruning by age in bounded batches, charts that read the
tier fitting their range, and a store that stays under a bound over 30 simulated days."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.bootstrap import build_controller
from core.clock import ManualClock
from core.controller import ControllerLoop
from core.controller.retention import Retention, RetentionStep, retention_step
from core.errors import ValidationError
from core.ports import MetricPoint
from core.retention_settings import RetentionSettings
from core.settings import Settings
from core.sim.twin import Twin, TwinConfig
from db import metrics
from db.models import MetricRollupRow, MetricSampleRow
from db.stores import SqlLeaseStore, SqlPlacementStore, SqlRetentionStore
from tests.db.conftest import Store

DAY, HOUR = 86_400.0, 3_600.0
T0 = 1_800_000_000.0 // DAY * DAY  # midnight UTC: every bucket boundary lines up
OVERVIEW_RANGES_H = (1.0, 6.0, 24.0, 168.0, 720.0)  # pages/overview.py RANGES


def samples(*, start: float, end: float, step: float, series: int = 1,
            value: float | None = None, seed: int = 0) -> list[MetricPoint]:
    rng = random.Random(seed)
    out = []
    t = start
    while t < end:
        for i in range(series):
            out.append(MetricPoint(t, "qps_1m", f"model=m{i}",
                                   value if value is not None else rng.uniform(0, 100)))
        t += step
    return out


def write(store: Store, points: list[MetricPoint]) -> None:
    with store.factory.begin() as s:
        metrics.add_samples(s, points)


def counts(store: Store) -> tuple[int, dict[int, int]]:
    with store.factory() as s:
        raw = s.scalar(select(func.count()).select_from(MetricSampleRow)) or 0
        tiers = dict(s.execute(select(MetricRollupRow.resolution_s, func.count())
                               .group_by(MetricRollupRow.resolution_s)).all())
    return int(raw), {int(r): int(n) for r, n in tiers.items()}


class Ticks:
    """A fake monotonic timer: each reading is one second after the last."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


# --------------------------------------------------------------------------- settings


def test_retention_defaults_and_refusals() -> None:
    cfg = RetentionSettings()
    assert (cfg.raw_hours, cfg.resolutions, cfg.fine_days, cfg.coarse_days) == \
        (48.0, (300, 3600), 8.0, 35.0)
    assert RetentionSettings.from_mapping({"raw_hours": "24"}).raw_keep_s == DAY
    for bad, field in (({"raw_hourz": 1}, "retention.raw_hourz"),
                       ({"coarse_resolution_s": 1000}, "retention.coarse_resolution_s"),
                       ({"coarse_resolution_s": 300}, "retention.coarse_resolution_s"),
                       ({"fine_days": 1}, "retention.fine_days"),
                       ({"coarse_days": 7}, "retention.coarse_days"),
                       ({"raw_hours": 1}, "retention.raw_hours"),
                       ({"chart_max_points": True}, "retention.chart_max_points"),
                       ({"interval_s": [600]}, "retention.interval_s")):
        with pytest.raises(ValidationError) as err:
            RetentionSettings.from_mapping(bad)
        assert err.value.field == field, bad


def test_the_settings_file_carries_the_retention_section(settings: Settings) -> None:
    assert settings.retention == RetentionSettings()


def test_the_controller_runs_retention_on_the_leader_after_placement(
        store: Store, settings: Settings) -> None:
    clock = ManualClock(T0)
    twin = Twin(settings, clock=clock, config=TwinConfig(startup_delay_s=0))
    loop = build_controller(factory=store.factory, cluster=twin, clock=clock,
                            settings=settings, identity="ctrl")
    names = [step.name for step in loop.steps]
    # Retention runs after placement and rollouts; then the outbox is kept small (no
    # webhook is configured here: old messages go, sent or not).
    assert names[-4:] == ["placement", "rollout", "retention", "outbox-prune"]
    retention = loop.steps[-2]
    assert isinstance(retention, RetentionStep) and retention.leader_only
    assert retention.retention.settings == settings.retention
    write(store, samples(start=T0 - 3 * HOUR, end=T0, step=60))
    loop.step()
    assert retention.last_pass is not None and retention.last_pass.rolled == 1
    # The last hour ended less than rollup_delay_s ago: it waits for the next pass.
    assert counts(store)[1] == {300: 2 * 12, 3600: 2}


# --------------------------------------------------------------------------- roll-ups


def test_roll_up_next_rolls_one_coarse_bucket_into_both_tiers_and_skips_gaps(
        store: Store) -> None:
    # Hour 0 and hour 3 hold samples (a gap of two hours between), hour 4 is in progress.
    write(store, [MetricPoint(T0 + 60 * i, "qps_1m", "fleet", float(i)) for i in range(60)])
    write(store, [MetricPoint(T0 + 3 * HOUR + 60 * i, "qps_1m", "fleet", 1.0)
                  for i in range(61)])
    retention = SqlRetentionStore(store.factory)
    tiers = (300, 3600)
    assert retention.rolled_until(resolution_s=3600) is None
    # Hour 0 alone holds more than max_rows samples: one bucket in this transaction.
    first = retention.roll_up_next(before_ts=T0 + 5 * HOUR, resolutions=tiers, max_rows=50)
    assert first is not None and (first.start, first.end, first.buckets) == \
        (T0, T0 + HOUR, 12 + 1)
    assert retention.rolled_until(resolution_s=3600) == T0 + HOUR
    # The gap costs nothing: the next transaction starts at hour 3, and takes every
    # bucket that has ended (hour 4, in progress, stays raw).
    second = retention.roll_up_next(before_ts=T0 + 4.5 * HOUR, resolutions=tiers,
                                    max_rows=5000)
    assert second is not None and (second.start, second.end, second.buckets) == \
        (T0 + 3 * HOUR, T0 + 4 * HOUR, 12 + 1)
    assert retention.roll_up_next(before_ts=T0 + 5 * HOUR - 1, resolutions=tiers,
                                  max_rows=5000) is None
    with store.factory() as s:
        rows = {(int(r), float(b) - T0): (n, t, lo, hi) for r, b, n, t, lo, hi in s.execute(
            select(MetricRollupRow.resolution_s, MetricRollupRow.bucket_ts,
                   MetricRollupRow.count, MetricRollupRow.total, MetricRollupRow.minimum,
                   MetricRollupRow.maximum))}
    assert rows[(3600, 0.0)] == (60, float(sum(range(60))), 0.0, 59.0)
    assert rows[(300, 0.0)] == (5, 10.0, 0.0, 4.0)
    assert rows[(300, 3300.0)] == (5, float(sum(range(55, 60))), 55.0, 59.0)
    # The fine buckets of an hour add up to its coarse bucket, exactly.
    assert sum(v[0] for (r, b), v in rows.items() if r == 300 and b < HOUR) == 60
    assert len([k for k in rows if k[0] == 300]) == 24 and (3600, 4 * HOUR) not in rows


def test_prune_batches_delete_the_oldest_first_and_at_most_the_limit(store: Store) -> None:
    write(store, samples(start=T0, end=T0 + HOUR, step=60, series=3))
    retention = SqlRetentionStore(store.factory)
    assert [retention.prune_samples(before_ts=T0 + 30 * 60, limit=40)
            for _ in range(4)] == [40, 40, 10, 0]
    with store.factory() as s:
        assert s.scalar(select(func.min(MetricSampleRow.ts))) == T0 + 30 * 60
    assert counts(store)[0] == 90
    assert retention.roll_up_next(before_ts=T0 + 2 * HOUR, resolutions=(300, 3600),
                                  max_rows=1000)
    assert retention.prune_rollups(resolution_s=300, before_ts=T0 + HOUR, limit=4) == 4
    assert retention.prune_rollups(resolution_s=3600, before_ts=T0, limit=4) == 0
    assert counts(store)[1] == {300: 18 - 4, 3600: 3}


def test_a_pass_cut_short_prunes_no_raw_sample_that_is_not_rolled_up(store: Store) -> None:
    cfg = RetentionSettings(raw_hours=2, fine_days=1, coarse_days=1, pass_budget_s=3.5,
                            batch_rows=100)
    write(store, samples(start=T0, end=T0 + 10 * HOUR, step=60))
    now = T0 + 10 * HOUR
    step = RetentionStep(Retention(store=SqlRetentionStore(store.factory), settings=cfg,
                                   timer=Ticks()))
    assert step.due(now)
    step.run(now=now, leading=True)
    first = step.last_pass
    # The fake timer: four transactions fit in the budget, all of them roll-ups.
    assert first is not None and not first.done and first.rolled == 4
    assert first.pruned_raw == 0 and counts(store)[0] == 600  # nothing rolled is lost
    assert step.due(now)  # the backlog goes on at the next iteration
    passes = 1
    while step.due(now):
        step.run(now=now, leading=True)
        passes += 1
        assert passes < 20
    # Nine hours rolled up (hour 9 ended at ``now``, less than rollup_delay_s ago), raw
    # samples older than two hours gone, and the step waits an interval now.
    raw, tiers = counts(store)
    assert tiers == {300: 9 * 12, 3600: 9} and raw == 120
    assert not step.due(now + cfg.interval_s - 1) and step.due(now + cfg.interval_s)


def test_each_tier_is_pruned_at_its_own_horizon(store: Store) -> None:
    cfg = RetentionSettings(raw_hours=2, fine_days=1, coarse_days=1, rollup_delay_s=0)
    write(store, samples(start=T0, end=T0 + 4 * HOUR, step=60))
    retention = Retention(store=SqlRetentionStore(store.factory), settings=cfg)
    done = retention.run_pass(now=T0 + 4 * HOUR)
    # Four hours of 60 samples fit one transaction (batch_rows 5000): 4 × (12 + 1) buckets.
    assert (done.done, done.rolled, done.buckets) == (True, 1, 52)
    assert done.pruned_raw == 120  # hours 0 and 1
    # Rolled buckets stay until their tier's horizon; then they go too.
    later = retention.run_pass(now=T0 + DAY + 2 * HOUR)
    assert later.pruned_raw == 120 and dict(later.pruned_rollups) == {300: 24, 3600: 2}


# --------------------------------------------------------------------------- charts


def brute_means(points: list[MetricPoint], *, since: float, until: float,
                width: float) -> list[tuple[float, float]]:
    buckets: dict[float, list[float]] = {}
    for p in points:
        if since <= p.ts <= until:
            buckets.setdefault(math.floor(p.ts / width) * width, []).append(p.value)
    return [(max(b, since), sum(v) / len(v)) for b, v in sorted(buckets.items())]


def test_chart_reads_the_tier_that_fits_and_means_match_the_raw_samples(store: Store) -> None:
    """Ten days at 60 s; after roll-up and pruning each range reads one tier (plus the raw
    tail not rolled up yet), and every point is the mean of the raw samples it spans, up to
    the newest one."""
    cfg = RetentionSettings(raw_hours=30, fine_days=3, coarse_days=10)
    now = T0 + 10 * DAY + 1234.0
    raw = samples(start=T0, end=now, step=60, seed=7)
    write(store, raw)
    retention = Retention(store=SqlRetentionStore(store.factory), settings=cfg)
    assert retention.run_pass(now=now).done
    with store.factory() as s:
        assert s.scalar(select(func.min(MetricSampleRow.ts))) >= now - cfg.raw_keep_s
        for hours, tier in ((1, 0), (6, 0), (24, 300), (60, 300), (228, 3600)):
            chosen, width = metrics.chart_width(since=now - hours * HOUR, until=now,
                                                max_points=200, retention=cfg)
            assert chosen == tier, hours
            since = math.floor((now - hours * HOUR) / width) * width  # bucket-aligned
            got = metrics.series(s, metric="qps_1m", key="model=m0", since=since, until=now,
                                 max_points=200, retention=cfg)
            want = brute_means(raw, since=since, until=now, width=width)
            assert 0 < len(got) <= 200, hours
            assert [t for t, _ in got] == [t for t, _ in want], hours
            assert all(math.isclose(a, b, rel_tol=1e-9) for (_, a), (_, b) in
                       zip(got, want, strict=True)), hours


def test_without_a_cap_a_series_is_raw_where_kept_and_rolled_up_before(store: Store) -> None:
    cfg = RetentionSettings(raw_hours=6, fine_days=1, coarse_days=2, rollup_delay_s=0)
    write(store, samples(start=T0, end=T0 + 2 * DAY, step=60, value=5.0))
    Retention(store=SqlRetentionStore(store.factory), settings=cfg).run_pass(now=T0 + 2 * DAY)
    with store.factory() as s:
        points = metrics.series(s, metric="qps_1m", key="model=m0", since=T0,
                                until=T0 + 2 * DAY, retention=cfg)
    times = [t for t, _ in points]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(v == 5.0 for _, v in points)
    steps = {round(b - a) for a, b in itertools.pairwise(times)}
    assert steps == {3600, 300, 60}  # hourly, then 5-minute buckets, then raw samples
    assert times[0] == T0 and times[-1] == T0 + 2 * DAY - 60


# --------------------------------------------------------------------------- 30 days


class SampleWriter:
    """A monitor stand-in: one point per series every ``interval_s`` up to ``now``."""

    name = "writer"
    leader_only = True

    def __init__(self, *, series: int, interval_s: float, start: float) -> None:
        self.series = series
        self.interval_s = interval_s
        self.next_ts = start
        self.written = 0
        self.sink: Store | None = None

    def due(self, now: float) -> bool:
        return now >= self.next_ts

    def run(self, *, now: float, leading: bool) -> None:
        points = []
        while self.next_ts <= now:
            t = self.next_ts
            points += [MetricPoint(t, "qps_1m", f"model=m{i}", 50 + 40 * math.sin(t / 7200 + i))
                       for i in range(self.series)]
            self.next_ts += self.interval_s
        assert self.sink is not None
        write(self.sink, points)
        self.written += len(points)


def vacuumed_size(store: Store, directory: Path) -> int:
    with store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    path = directory / "vacuumed.db"
    path.unlink(missing_ok=True)
    with store.engine.connect() as conn:
        conn.exec_driver_sql(f"VACUUM INTO '{path}'")
    return path.stat().st_size


# SQLite only: the file size is SQLite's, and the roll-ups and pruning this drives are
# tested on both backends above (a month of iterations costs ~20 s on PostgreSQL).
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_thirty_days_of_samples_stay_under_the_bound(store: Store, tmp_path: Path) -> None:
    """The controller loop runs a sample writer (3 series, a point every 2 min) and the
    retention step on its cadence (every 12 h) over 30 simulated days, 6 h per iteration;
    the retention horizons are scaled down (6 h raw, 1 d of 5 min, 5 d of 1 h) so the
    store reaches its steady state within the month. Rows stay under the bound the settings
    give, and the SQLite file (after VACUUM) stops growing once every tier is full.
    ``bench/retention_size.py`` measures the default fleet at the default horizons."""
    cfg = RetentionSettings(interval_s=12 * HOUR, raw_hours=6, fine_days=1, coarse_days=5,
                            batch_rows=2000)
    series, every = 3, 120.0
    clock = ManualClock(T0)
    writer = SampleWriter(series=series, interval_s=every, start=T0)
    writer.sink = store
    step = retention_step(store=SqlRetentionStore(store.factory), settings=cfg)
    loop = ControllerLoop(leases=SqlLeaseStore(store.factory),
                          queue=SqlPlacementStore(store.factory), clock=clock,
                          identity="ctrl", steps=[writer, step], lease_ttl_s=8 * HOUR,
                          interval_s=1.0)
    raw_bound = series * ((cfg.raw_keep_s + cfg.interval_s) / every + 1)
    fine_bound = series * ((cfg.fine_days * DAY + cfg.interval_s) / 300 + 1)
    coarse_bound = series * ((cfg.coarse_days * DAY + cfg.interval_s) / 3600 + 1)
    sizes: dict[int, int] = {}
    passes = 0
    for hour in range(6, 30 * 24 + 1, 6):
        clock.advance(6 * HOUR)
        loop.step()
        assert loop.leading
        passes += step.last_pass is not None and step.last_pass.at == clock.now()
        raw, tiers = counts(store)
        assert raw <= raw_bound, hour
        assert tiers.get(300, 0) <= fine_bound and tiers.get(3600, 0) <= coarse_bound, hour
        if store.backend == "sqlite" and hour in (10 * 24, 20 * 24, 30 * 24):
            sizes[hour // 24] = vacuumed_size(store, tmp_path)
    assert passes == 30 * 2  # on its cadence, not at every iteration
    assert writer.written == (30 * DAY // every + 1) * series
    raw, tiers = counts(store)
    assert raw + sum(tiers.values()) < writer.written / 20  # a month wrote > 20 × the bound
    # Every tier is full (the coarse one covers its five days).
    assert tiers[3600] >= series * (cfg.coarse_days * 24 - 2)
    if store.backend == "sqlite":
        assert sizes[30] <= sizes[10] * 1.02 + 8192 and sizes[20] <= sizes[10] * 1.02 + 8192
    # The Overview's ranges read a bounded number of points, with the newest hour in.
    with store.factory() as s:
        for hours in OVERVIEW_RANGES_H:
            points = metrics.series(s, metric="qps_1m", key="model=m1",
                                    since=clock.now() - hours * HOUR, until=clock.now(),
                                    max_points=cfg.chart_max_points, retention=cfg)
            assert 0 < len(points) <= cfg.chart_max_points
            assert points[-1][0] >= clock.now() - HOUR

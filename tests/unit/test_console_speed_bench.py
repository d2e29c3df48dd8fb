"""The console speed bench's history: the tiers retention would leave, read back by the
store's chart reads (small sizes; the benchmark itself is not run here)."""

from __future__ import annotations

import random
from pathlib import Path

from sqlalchemy import func, select

from bench.console_speed import DAY, HOUR, plans, rollup_rows, sample_rows, write_history
from core.retention_settings import RetentionSettings
from db import metrics
from db.engine import make_engine, session_factory, upgrade
from db.models import MetricRollupRow, MetricSampleRow

NOW = 1_800_000_000.0


def test_plans_follow_retention_and_keep_gpu_series_coarse() -> None:
    main, gpu = plans(RetentionSettings(), 30)
    assert (main.raw_s, main.fine_s, main.coarse_s) == (48 * HOUR, 8 * DAY, 30 * DAY)
    assert (gpu.raw_s, gpu.fine_s, gpu.coarse_s) == (HOUR, 0.0, 30 * DAY)
    short, _ = plans(RetentionSettings(), 1)
    assert short.raw_s == short.fine_s == short.coarse_s == DAY


def test_rows_are_aligned_and_counted_like_the_roll_up() -> None:
    series = [("qps_1m", "fleet", 100.0)]
    rows = list(rollup_rows(series, start=NOW - 7200 + 10, end=NOW, resolution=300,
                            rng=random.Random(0)))
    assert all(r[0] % 300 == 0 and r[4] == 10 for r in rows)
    assert all(r[6] <= r[5] / r[4] <= r[7] for r in rows)
    raw = list(sample_rows(series, start=NOW - 300, end=NOW, step=30, rng=random.Random(0)))
    assert len(raw) == 10 and all(80 < r[3] < 120 for r in raw)


def test_written_history_is_read_by_the_charts(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    retention = RetentionSettings(raw_hours=2, fine_days=0.5, coarse_days=3)
    counts = write_history(db, [("qps_1m", "fleet", 50.0)], [("utilization", "gpu=n/0", 0.5)],
                           now=NOW, retention=retention, days=3)
    factory = session_factory(engine)
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(MetricSampleRow)) == \
            counts["metric_samples"] == 240 + 120
        tiers = dict(s.execute(select(MetricRollupRow.resolution_s, func.count())
                               .group_by(MetricRollupRow.resolution_s)).all())
        # fleet: 5-min buckets for 12 h and hourly for 3 days, both up to the last whole
        # hour (over the raw samples' 2 h too, as the monitor rolls each hour up when it
        # ends); the GPU: hourly buckets up to its last hour of raw samples.
        assert tiers[300] == 144
        assert tiers[3600] == 72 + 71
        for span in (HOUR, 3 * DAY):
            points = metrics.series(s, metric="qps_1m", key="fleet", since=NOW - span,
                                    until=NOW, retention=retention, max_points=200)
            assert points and all(30 < v < 70 for _, v in points)
        gpu = metrics.series(s, metric="utilization", key="gpu=n/0", since=NOW - 3 * DAY,
                             until=NOW, retention=retention, max_points=200)
        assert gpu and min(t for t, _ in gpu) < NOW - 2 * DAY
    engine.dispose()

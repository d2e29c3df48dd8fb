"""Metric history (raw samples, roll-ups in two tiers, retention) and alert events.

Raw samples are rolled up one coarse bucket at a time (``roll_up_next``: one
short transaction, idempotent) into each resolution of ``[retention]``, and
each tier is pruned by age in batches of bounded size (``prune_samples``,
``prune_rollups``); ``core.controller.retention`` drives them on the leader.
A writer that knows a span is complete (the twin's history backfill,
``app.history``) rolls it up and drops its old raw samples itself
(``roll_up_span``, ``delete_samples_between``), so the store never holds a month
of raw samples.
``series`` reads the tier that fits a chart's range and averages it into at
most ``max_points`` buckets, so a 30-day chart reads hourly buckets, not raw
samples. Every read and delete here runs on an index (migration 0005).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, literal, select, tuple_
from sqlalchemy.orm import Session

from core.ports import MetricPoint, RollupBatch
from core.retention_settings import RetentionSettings
from db.base import upsert_insert
from db.models import (
    AlertEventRow,
    MetricRollupRow,
    MetricSampleRow,
)

# The store's sample is the port's point: the monitor's points are stored as they are.
Sample = MetricPoint
DEFAULT_RETENTION = RetentionSettings()
SAMPLES = MetricSampleRow.__table__
ROLLUPS = MetricRollupRow.__table__


_SAMPLE_COLUMNS = ("ts", "metric", "key", "value")
_sample_row = attrgetter(*_SAMPLE_COLUMNS)  # a point as its row's values, in C


def add_samples(s: Session, samples: Iterable[MetricPoint]) -> int:
    """Store ``samples`` as they are (one row each, in order); returns the rows written.

    A sample at 5,000 GPUs is ~15,000 rows: they go to the driver as plain tuples in one
    ``executemany`` (SQLite) or one ``COPY`` (PostgreSQL), with none of SQLAlchemy's
    per-row parameter work, which was most of a sample's write."""
    rows = list(map(_sample_row, samples))
    if not rows:
        return 0
    if s.get_bind().dialect.name == "postgresql":
        copy_rows(s, SAMPLES.name, _SAMPLE_COLUMNS, rows)
    else:
        execute_rows(s, insert(SAMPLES), _SAMPLE_COLUMNS, rows)
    return len(rows)


def execute_rows(s: Session, stmt: Any, columns: Sequence[str],
                 rows: Sequence[tuple[Any, ...]]) -> None:
    """Run the insert ``stmt`` once per row of ``rows`` (values in ``columns`` order) in
    one driver ``executemany`` on the session's connection (its transaction).

    The values go to the driver as they are: no bind processor runs, so each must already
    be what the driver takes for its column (plain str, int, float; a datetime as its
    type's ``bind_processor`` makes it)."""
    conn = s.connection()
    compiled = stmt.compile(dialect=conn.dialect, column_keys=list(columns))
    params: Sequence[Any]
    if conn.dialect.positional:
        order = [columns.index(name) for name in compiled.positiontup]
        params = rows if order == list(range(len(columns))) else [
            tuple(row[i] for i in order) for row in rows]
    else:
        params = [dict(zip(columns, row, strict=True)) for row in rows]
    conn.exec_driver_sql(str(compiled), params)


def copy_rows(s: Session, table: str, columns: Sequence[str],
              rows: Iterable[Sequence[Any]]) -> None:
    """PostgreSQL: stream ``rows`` into ``table`` with ``COPY … FROM STDIN`` on the
    session's own connection (its transaction), as ``db.decisions`` does."""
    raw = s.connection().connection.driver_connection
    assert raw is not None
    names = ", ".join(f'"{c}"' for c in columns)
    with raw.cursor() as cur, cur.copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row(row)


def rollup(s: Session, *, before_ts: float, resolution_s: int = 3600,
           since_ts: float | None = None) -> int:
    """Aggregate raw samples of whole buckets ending before ``before_ts`` (and starting at
    or after ``since_ts``, aligned down to a bucket, when given); idempotent: buckets
    already rolled up are left as they are. Returns the number of buckets added."""
    M, U = MetricSampleRow, MetricRollupRow
    bucket = (func.floor(M.ts / resolution_s) * resolution_s).label("bucket")
    limit = (before_ts // resolution_s) * resolution_s
    where = [M.ts < limit]
    done = [U.resolution_s == resolution_s, U.bucket_ts < limit]
    if since_ts is not None:
        first = (since_ts // resolution_s) * resolution_s
        where.append(M.ts >= first)
        done.append(U.bucket_ts >= first)
    groups = s.execute(
        select(M.metric, M.key, bucket, func.count(), func.sum(M.value), func.min(M.value),
               func.max(M.value))
        .where(*where).group_by(M.metric, M.key, bucket)).all()
    if not groups:
        return 0
    existing = {(m, k, float(b)) for m, k, b in s.execute(
        select(U.metric, U.key, U.bucket_ts).where(*done)).all()}
    new = [{"metric": m, "key": k, "bucket_ts": float(b), "resolution_s": resolution_s,
            "count": int(n), "total": float(t), "minimum": float(lo), "maximum": float(hi)}
           for m, k, b, n, t, lo, hi in groups if (m, k, float(b)) not in existing]
    if new:
        s.execute(insert(ROLLUPS), new)
    return len(new)


def rolled_until(s: Session, *, resolution_s: int) -> float | None:
    """The end of the newest bucket of ``resolution_s`` (an index seek); None before any."""
    newest = s.scalar(select(func.max(MetricRollupRow.bucket_ts))
                      .where(MetricRollupRow.resolution_s == resolution_s))
    return None if newest is None else float(newest) + resolution_s


def roll_up_next(s: Session, *, before_ts: float, resolutions: Sequence[int],
                 max_rows: int = 5000) -> RollupBatch | None:
    """Roll up the next coarse buckets after the newest rolled one, into every resolution:
    from the first that holds raw samples, one bucket, or more while together they hold
    at most about ``max_rows`` samples (a long gap costs nothing), all ended by
    ``before_ts``. None when no such bucket has ended yet.

    A bucket is rolled whole, once: raw samples written later for a bucket already
    rolled up are not added to it (the monitor writes samples as they are taken;
    ``rollup_delay_s`` leaves time for the last ones)."""
    coarse = max(resolutions)
    after = rolled_until(s, resolution_s=coarse)
    M = MetricSampleRow
    query = select(func.min(M.ts))
    if after is not None:
        query = query.where(M.ts >= after)
    first = s.scalar(query)
    if first is None:
        return None
    start = (float(first) // coarse) * coarse
    complete = (before_ts // coarse) * coarse  # the end of the last bucket that has ended
    if start + coarse > complete:
        return None
    # The sample ``max_rows`` on from the start (on the ts index): the span ends at its
    # bucket, one bucket at least.
    nth = s.scalar(select(M.ts).where(M.ts >= start).order_by(M.ts).offset(max_rows)
                   .limit(1))
    end = complete if nth is None else max(start + coarse, (float(nth) // coarse) * coarse)
    end = min(end, complete)
    return RollupBatch(start=start, end=end, buckets=_roll_span(s, start=start, end=end,
                                                                resolutions=resolutions))


def _roll_span(s: Session, *, start: float, end: float, resolutions: Sequence[int]) -> int:
    """Roll ``[start, end)`` up into every resolution, in the database: one
    ``INSERT … SELECT … GROUP BY`` per resolution over the span's raw samples (on the ts
    index), so nothing of the span passes through Python (an hour of 5,000 GPUs is ~180k
    groups: held here as rows, dicts and keys it peaked at ~200 MB). Buckets already there
    are left alone (``ON CONFLICT DO NOTHING`` on the roll-up key); returns those written."""
    if any(r <= 0 for r in resolutions):
        raise ValueError("every resolution must be positive")
    M, U = MetricSampleRow, MetricRollupRow
    insert_into = upsert_insert(s)
    written = 0
    for r in sorted(set(resolutions)):
        bucket = (func.floor(M.ts / r) * r).label("bucket")
        grouped = (select(M.metric, M.key, literal(int(r)).label("resolution_s"), bucket,
                          func.count(), func.sum(M.value), func.min(M.value),
                          func.max(M.value))
                   .where(M.ts >= start, M.ts < end).group_by(M.metric, M.key, bucket))
        stmt = insert_into(ROLLUPS).from_select(
            [U.metric, U.key, U.resolution_s, U.bucket_ts, U.count, U.total, U.minimum,
             U.maximum], grouped).on_conflict_do_nothing()
        if s.get_bind().dialect.name == "postgresql":  # its rowcount for this is -1
            ins = stmt.returning(literal(1)).cte("ins")
            written += int(s.scalar(select(func.count()).select_from(ins)) or 0)
        else:
            written += int(s.execute(stmt).rowcount or 0)
    return written


def roll_up_span(s: Session, *, start: float, end: float, resolutions: Sequence[int]) -> int:
    """Roll the raw samples of ``[start, end)`` up into each of ``resolutions`` (in SQL;
    buckets already there are left alone). For a writer that knows its span is
    complete, such as the twin's history backfill; returns the buckets written."""
    return _roll_span(s, start=start, end=end, resolutions=resolutions)


def delete_samples_between(s: Session, *, start: float, end: float) -> int:
    """Delete the raw samples of ``[start, end)`` (on the ``ts`` index): a span already
    rolled up whose raw samples retention would prune anyway."""
    M = MetricSampleRow
    return int(s.execute(delete(SAMPLES).where(M.ts >= start, M.ts < end)).rowcount or 0)


def resume_at(s: Session, *, key: str, before: float, interval_s: float) -> float | None:
    """Where history of ``key`` written before ``before`` carries on: one ``interval_s``
    after its newest raw sample, or the end of its newest roll-up bucket when that is
    later (its raw samples pruned); None when there is none."""
    M, U = MetricSampleRow, MetricRollupRow
    raw = s.scalar(select(func.max(M.ts)).where(M.key == key, M.ts < before))
    up = s.scalar(select(func.max(U.bucket_ts + U.resolution_s))
                  .where(U.key == key, U.bucket_ts < before))
    ends = [float(raw) + interval_s] if raw is not None else []
    ends += [float(up)] if up is not None else []
    return max(ends) if ends else None


def prune_samples(s: Session, *, before_ts: float, limit: int) -> int:
    """Delete at most ``limit`` raw samples older than ``before_ts`` (on the ``ts`` index)."""
    M = MetricSampleRow
    ids = select(M.id).where(M.ts < before_ts).order_by(M.ts).limit(limit).scalar_subquery()
    return int(s.execute(delete(SAMPLES).where(SAMPLES.c.id.in_(ids))).rowcount or 0)


def prune_rollups(s: Session, *, resolution_s: int, before_ts: float, limit: int) -> int:
    """Delete at most ``limit`` buckets of ``resolution_s`` starting before ``before_ts``."""
    U = MetricRollupRow
    # The oldest ``limit`` buckets by their key (the table's primary key, migration 0010).
    keys = (select(U.metric, U.key, U.resolution_s, U.bucket_ts)
            .where(U.resolution_s == resolution_s, U.bucket_ts < before_ts)
            .order_by(U.bucket_ts).limit(limit))
    key = tuple_(ROLLUPS.c.metric, ROLLUPS.c.key, ROLLUPS.c.resolution_s, ROLLUPS.c.bucket_ts)
    return int(s.execute(delete(ROLLUPS).where(key.in_(keys))).rowcount or 0)


def prune(s: Session, *, raw_before_ts: float, rollup_before_ts: float) -> tuple[int, int]:
    """Retention in one statement per table (small stores, tests); the controller uses
    the batched ``prune_samples`` and ``prune_rollups``."""
    raw = s.execute(delete(MetricSampleRow).where(MetricSampleRow.ts < raw_before_ts)).rowcount
    ups = s.execute(delete(MetricRollupRow)
                    .where(MetricRollupRow.bucket_ts < rollup_before_ts)).rowcount
    return int(raw or 0), int(ups or 0)


# ---- reading a series


@dataclass(frozen=True, slots=True)
class _Segment:
    """Part of a series read from one tier: (bucket or ts, count, total) rows, and the
    span its data covers (``end``: the last sample, or the last bucket's end)."""

    rows: list[tuple[float, int, float]]
    first: float
    end: float


def _read(s: Session, *, resolution: int, metric: str, key: str, lo: float, hi: float,
          width: float | None, ends_by: float | None = None) -> _Segment | None:
    """Tier ``resolution`` (0: raw samples) over ``[lo, hi]``, as they are or averaged
    into buckets of ``width`` seconds (in the database: at most a few hundred rows)."""
    ts: Any
    count: ColumnElement[Any]
    total: ColumnElement[Any]
    one: ColumnElement[Any]
    if resolution == 0:
        M = MetricSampleRow
        ts = M.ts
        where = [M.metric == metric, M.key == key, M.ts >= lo, M.ts <= hi]
        count, total, value, one = func.count(), func.sum(M.value), M.value, literal(1)
    else:
        U = MetricRollupRow
        ts = U.bucket_ts
        where = [U.metric == metric, U.key == key, U.resolution_s == resolution,
                 U.bucket_ts >= lo, U.bucket_ts <= hi]
        if ends_by is not None:
            where.append(U.bucket_ts + resolution <= ends_by)
        count, total, value, one = func.sum(U.count), func.sum(U.total), U.total, U.count
    if width is None:
        found = s.execute(select(ts, one, value).where(*where).order_by(ts)).all()
        if not found:
            return None
        rows = [(float(t), int(n), float(v)) for t, n, v in found]
        return _Segment(rows=rows, first=rows[0][0], end=rows[-1][0] + resolution)
    bucket = func.floor(ts / width)
    grouped = s.execute(select(bucket, count, total, func.min(ts), func.max(ts))
                        .where(*where).group_by(bucket)).all()
    if not grouped:
        return None
    return _Segment(rows=[(float(b) * width, int(n), float(t)) for b, n, t, _, _ in grouped],
                    first=float(min(g[3] for g in grouped)),
                    end=float(max(g[4] for g in grouped)) + resolution)


def chart_width(*, since: float, until: float, max_points: int,
                retention: RetentionSettings = DEFAULT_RETENTION) -> tuple[int, float]:
    """The tier a chart of ``[since, until]`` reads (0: raw samples) and the width of the
    buckets it is averaged into: the coarsest tier no wider than the span divided by
    ``max_points - 1``, with a width that is a whole multiple of that tier's resolution.
    Aligned buckets of that width meet the range at most ``max_points`` times."""
    if max_points < 2:
        raise ValueError("max_points must be ≥ 2")
    wanted = max(until - since, 0.0) / (max_points - 1)
    tier = max((r for r in retention.resolutions if r <= wanted), default=0)
    if tier == 0:
        return 0, float(max(1, math.ceil(wanted)))
    return tier, float(math.ceil(wanted / tier) * tier)


def series(s: Session, *, metric: str, key: str, since: float, until: float,
           max_points: int | None = None,
           retention: RetentionSettings = DEFAULT_RETENTION) -> list[tuple[float, float]]:
    """(ts, value) points of one series over ``[since, until]``, oldest first.

    Without ``max_points``: raw samples where they are kept, and before the first of
    them the finest roll-up that covers the time (bucket means at the bucket's start),
    never counting a bucket twice. With ``max_points``: the tier ``chart_width`` picks,
    with the coarser tiers before its first bucket and the finer ones after its last
    (the hour not rolled up yet), averaged (weighted by samples) into at most
    ``max_points`` aligned buckets; a bucket's point is at its start (or ``since``).
    """
    if until < since:
        return []
    tiers = (0, *retention.resolutions)
    if max_points is None:
        chosen, width = 0, None
    else:
        chosen, width = chart_width(since=since, until=until, max_points=max_points,
                                    retention=retention)
    index = tiers.index(chosen)
    segments: list[_Segment] = []
    main = _read(s, resolution=chosen, metric=metric, key=key, lo=since, hi=until,
                 width=width)
    cursor = since
    if main is not None:
        segments.append(main)
        cursor = main.end
    # After the chosen tier's last bucket: the finer tiers, newest data last.
    for finer in reversed(tiers[:index]):
        tail = _read(s, resolution=finer, metric=metric, key=key, lo=cursor, hi=until,
                     width=width)
        if tail is not None:
            segments.append(tail)
            cursor = tail.end
    # Before the first data found: the coarser tiers, each ending where the next begins.
    boundary = min((seg.first for seg in segments), default=math.inf)
    for coarser in tiers[index + 1:]:
        head = _read(s, resolution=coarser, metric=metric, key=key, lo=since, hi=until,
                     width=width, ends_by=None if math.isinf(boundary) else boundary)
        if head is not None:
            segments.append(head)
            boundary = head.first
    merged: dict[float, tuple[int, float]] = {}
    for seg in segments:
        for at, n, total in seg.rows:
            was = merged.get(at, (0, 0.0))
            merged[at] = (was[0] + n, was[1] + total)
    if width is None:
        return [(at, total / n) for at, (n, total) in sorted(merged.items()) if n]
    return [(max(at, since), total / n) for at, (n, total) in sorted(merged.items()) if n]


def record_alert(s: Session, *, name: str, severity: str, state: str,
                 labels: Mapping[str, Any], summary: str, now: datetime) -> int:
    """Open an alert event, or close the open one of the same name and labels."""
    A = AlertEventRow
    if state == "resolved":
        wanted = dict(labels)
        open_row = next((r for r in s.scalars(
            select(A).where(A.name == name, A.state != "resolved").order_by(A.id.desc()))
            if r.labels == wanted), None)
        if open_row is None:
            return 0
        open_row.state, open_row.ended_at = "resolved", now
        s.flush()
        return open_row.id
    row = AlertEventRow(name=name, severity=severity, state=state, labels=dict(labels),
                        summary=summary, started_at=now)
    s.add(row)
    s.flush()
    return row.id

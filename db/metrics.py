"""Metric history (raw samples, hourly roll-ups, retention) and alert events."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from db.models import (
    AlertEventRow,
    MetricRollupRow,
    MetricSampleRow,
)


@dataclass(frozen=True, slots=True)
class Sample:
    ts: float
    metric: str
    key: str
    value: float


def add_samples(s: Session, samples: Iterable[Sample]) -> int:
    rows = [{"ts": x.ts, "metric": x.metric, "key": x.key, "value": x.value} for x in samples]
    if rows:
        s.execute(insert(MetricSampleRow), rows)
    return len(rows)


def rollup(s: Session, *, before_ts: float, resolution_s: int = 3600) -> int:
    """Aggregate raw samples of whole buckets ending before ``before_ts``; idempotent."""
    M, U = MetricSampleRow, MetricRollupRow
    bucket = (func.floor(M.ts / resolution_s) * resolution_s).label("bucket")
    limit = (before_ts // resolution_s) * resolution_s
    groups = s.execute(
        select(M.metric, M.key, bucket, func.count(), func.sum(M.value), func.min(M.value),
               func.max(M.value))
        .where(M.ts < limit).group_by(M.metric, M.key, bucket)).all()
    existing = {(m, k, float(b)) for m, k, b in s.execute(
        select(U.metric, U.key, U.bucket_ts).where(U.resolution_s == resolution_s,
                                                   U.bucket_ts < limit)).all()}
    new = [{"metric": m, "key": k, "bucket_ts": float(b), "resolution_s": resolution_s,
            "count": int(n), "total": float(t), "minimum": float(lo), "maximum": float(hi)}
           for m, k, b, n, t, lo, hi in groups if (m, k, float(b)) not in existing]
    if new:
        s.execute(insert(U), new)
    return len(new)


def prune(s: Session, *, raw_before_ts: float, rollup_before_ts: float) -> tuple[int, int]:
    """Retention: drop raw samples and roll-ups older than their horizons."""
    raw = s.execute(delete(MetricSampleRow).where(MetricSampleRow.ts < raw_before_ts)).rowcount
    ups = s.execute(delete(MetricRollupRow)
                    .where(MetricRollupRow.bucket_ts < rollup_before_ts)).rowcount
    return int(raw or 0), int(ups or 0)


def series(s: Session, *, metric: str, key: str, since: float,
           until: float) -> list[tuple[float, float]]:
    """(ts, value) points: hourly means where raw samples were pruned, raw samples after."""
    M, U = MetricSampleRow, MetricRollupRow
    raw = s.execute(select(M.ts, M.value).where(M.metric == metric, M.key == key,
                                                M.ts >= since, M.ts <= until)
                    .order_by(M.ts)).all()
    first_raw = raw[0][0] if raw else until + 1
    # Only buckets that end before the first raw sample: an hour is never counted twice.
    ups = s.execute(select(U.bucket_ts, U.total / U.count).where(
        U.metric == metric, U.key == key, U.bucket_ts >= since,
        U.bucket_ts + U.resolution_s <= first_raw)
        .order_by(U.bucket_ts)).all()
    return [(float(t), float(v)) for t, v in (*ups, *raw)]


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

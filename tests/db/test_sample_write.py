"""A monitor sample's write (issue 15): the rows go to the driver as plain tuples
(SQLite ``executemany``, PostgreSQL ``COPY``); what is stored is exactly what the
monitor's points and cost lines say, and reads through SQLAlchemy find it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select

from core.clock import ManualClock
from core.cost import CostAccountant, CostLine, accumulate
from core.monitor import metric_points
from core.settings import Settings
from core.sim.twin import Twin, TwinConfig
from db.costs import add_cost_lines
from db.metrics import series
from db.models import CostLedgerRow, MetricSampleRow
from db.stores import SqlMetricSink
from tests.db.conftest import Store

START = datetime(2024, 5, 1, 0, 50, tzinfo=UTC).timestamp()


def _sample(settings: Settings) -> tuple[list, list[CostLine]]:
    clock = ManualClock(START)
    twin = Twin(settings, clock=clock, config=TwinConfig(warmup_s=300, seed=0))
    accountant = CostAccountant(settings.catalog, max_interval_s=3600.0)
    prev, layout = twin.telemetry(), tuple(twin.nodes())
    clock.advance(30)
    cur = twin.telemetry()
    ledger: dict = {}
    accumulate(ledger, accountant.interval(prev=prev, cur=cur, layout=layout))
    return metric_points(cur, layout=tuple(twin.nodes()), catalog=settings.catalog), list(
        ledger.values())


def _ledger(store: Store) -> dict[tuple, tuple]:
    T = CostLedgerRow
    with store.factory() as s:
        return {(r.bucket_start, r.model, r.namespace, r.node, r.gpu_index):
                (r.gpu_type, r.share_seconds, r.energy_kwh, r.gpu_cost_nusd, r.energy_cost_nusd,
                 r.idle_cost_nusd, r.inferences) for r in s.scalars(select(T))}


def _expected(lines: list[CostLine], times: int = 1) -> dict[tuple, tuple]:
    return {(datetime.fromtimestamp(x.bucket_start, UTC), x.model, x.namespace, x.node,
             x.gpu_index):
            (x.gpu_type, times * (x.amounts.share_seconds + x.amounts.idle_share_seconds),
             times * x.amounts.energy_kwh, times * x.amounts.gpu_cost_nusd,
             times * x.amounts.energy_cost_nusd, times * x.amounts.idle_cost_nusd,
             times * x.amounts.inferences) for x in lines}


def test_a_fleet_sample_is_stored_as_its_points_and_cost_lines(
        store: Store, settings: Settings) -> None:
    points, lines = _sample(settings)
    assert len(points) > 20 and len(lines) > 5
    SqlMetricSink(store.factory, notify_alerts=False).record_sample(
        points=points, alerts=(), cost_lines=lines)
    M = MetricSampleRow
    with store.factory() as s:
        stored = s.execute(select(M.ts, M.metric, M.key, M.value).order_by(M.id)).all()
        # A read through SQLAlchemy's own binding finds the rows (the stored form matches).
        hour = datetime.fromtimestamp(lines[0].bucket_start, UTC)
        in_hour = s.scalar(select(func.count()).select_from(CostLedgerRow)
                           .where(CostLedgerRow.bucket_start == hour))
        first = points[0]
        read = series(s, metric=first.metric, key=first.key, since=first.ts, until=first.ts)
    assert [tuple(r) for r in stored] == [(p.ts, p.metric, p.key, p.value) for p in points]
    assert read == [(first.ts, first.value)]
    assert _ledger(store) == _expected(lines)
    assert in_hour == sum(1 for x in lines if x.bucket_start == lines[0].bucket_start)


def test_cost_lines_written_twice_in_one_transaction_add_up(
        store: Store, settings: Settings) -> None:
    _, lines = _sample(settings)
    with store.factory.begin() as s:
        assert add_cost_lines(s, lines) == len(lines)
        assert add_cost_lines(s, lines) == len(lines)
    doubled = _ledger(store)
    expected = _expected(lines, times=2)
    assert doubled.keys() == expected.keys()
    for key, row in expected.items():  # floats summed in the database: equal to rounding
        got = doubled[key]
        assert got[0] == row[0] and got[3:] == row[3:]
        assert abs(got[1] - row[1]) <= 1e-9 * max(1.0, row[1])
        assert abs(got[2] - row[2]) <= 1e-9 * max(1.0, row[2])

"""The cost ledger on SQLite and PostgreSQL: upserts accumulate, reports group and split idle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from app.bootstrap import build_monitor
from core.clock import ManualClock
from core.cost import NANO, UNALLOCATED, CostAmounts, CostLine
from core.errors import TransientError, ValidationError
from core.model import Node
from core.settings import Settings
from core.sim.twin import Twin, TwinConfig
from db.costs import add_cost_lines, cost_report
from db.models import CostLedgerRow
from tests.db.conftest import Store

DAY = datetime(2024, 5, 1, tzinfo=UTC)


def line(model: str, *, hour: int = 0, node: str = "h100-0", gpu_type: str = "H100",
         namespace: str | None = None, **amounts: float) -> CostLine:
    return CostLine(bucket_start=int((DAY + timedelta(hours=hour)).timestamp()), model=model,
                    namespace=("ns" if model else "") if namespace is None else namespace,
                    node=node, gpu_index=0, gpu_type=gpu_type,
                    amounts=CostAmounts(**amounts))  # type: ignore[arg-type]


def test_lines_accumulate_into_their_hour_bucket_across_batches(store: Store) -> None:
    with store.factory.begin() as s:
        # The same key twice in one batch, then again in a later transaction.
        add_cost_lines(s, [line("m", gpu_cost_nusd=10, inferences=1, share_seconds=15.0),
                           line("m", gpu_cost_nusd=5, inferences=2, share_seconds=15.0)])
    with store.factory.begin() as s:
        written = add_cost_lines(s, [line("m", gpu_cost_nusd=7, energy_kwh=0.5,
                                          energy_cost_nusd=3, inferences=4),
                                     line("", idle_cost_nusd=9, idle_share_seconds=30.0)])
        assert written == 2
        assert add_cost_lines(s, []) == 0
    with store.factory() as s:
        rows = {r.model: r for r in s.scalars(select(CostLedgerRow))}
        assert s.scalar(select(func.count()).select_from(CostLedgerRow)) == 2
    m = rows["m"]
    assert (m.gpu_cost_nusd, m.energy_cost_nusd, m.inferences) == (22, 3, 7)
    assert m.share_seconds == pytest.approx(30.0) and m.energy_kwh == pytest.approx(0.5)
    assert rows[""].idle_cost_nusd == 9 and rows[""].share_seconds == pytest.approx(30.0)
    assert m.bucket_start == DAY


def test_nano_dollars_beyond_32_bits_stay_exact(store: Store) -> None:
    big = 123_456_789_012_345  # $123,456.79
    with store.factory.begin() as s:
        add_cost_lines(s, [line("m", gpu_cost_nusd=big, inferences=1)])
        add_cost_lines(s, [line("m", gpu_cost_nusd=big, inferences=1)])
    with store.factory() as s:
        report = cost_report(s, since=DAY, until=DAY + timedelta(days=1), group_by=["model"])
    assert report.total.gpu_cost_nusd == 2 * big


def _seed(store: Store) -> None:
    with store.factory.begin() as s:
        add_cost_lines(s, [
            line("a", hour=1, gpu_cost_nusd=2 * NANO, energy_cost_nusd=NANO // 10,
                 energy_kwh=1.0, inferences=1000, share_seconds=1800.0),
            line("", hour=1, idle_cost_nusd=2 * NANO, idle_share_seconds=1800.0),
            line("b", hour=2, node="a100-0", gpu_type="A100", namespace="team-b",
                 gpu_cost_nusd=NANO, inferences=500, share_seconds=3600.0),
            line("a", hour=25, gpu_cost_nusd=NANO, inferences=100, share_seconds=900.0),
            line("a", hour=-1, gpu_cost_nusd=99 * NANO, inferences=1),  # the day before
        ])


def test_report_groups_by_model_with_idle_cost_in_its_own_row(store: Store) -> None:
    _seed(store)
    with store.factory() as s:
        report = cost_report(s, since=DAY, until=DAY + timedelta(days=2), group_by=["model"])
    groups = {g.key: g.amounts for g in report.groups}
    assert set(groups) == {("a",), ("b",), (UNALLOCATED,)}
    a = groups[("a",)]
    assert (a.gpu_cost_nusd, a.inferences) == (3 * NANO, 1100)
    assert a.cost_per_1k == (Decimal("3.1") / 1100 * 1000).quantize(Decimal("1e-9"))
    assert groups[(UNALLOCATED,)].idle_cost_nusd == 2 * NANO
    assert groups[(UNALLOCATED,)].share_seconds == 0
    assert groups[(UNALLOCATED,)].idle_share_seconds == pytest.approx(1800.0)
    assert report.total.held_cost_nusd == 4 * NANO + NANO // 10
    assert report.total.idle_cost_nusd == 2 * NANO and report.hours == 3


def test_report_by_gpu_type_and_day_keeps_idle_cost_and_held_hours_apart(store: Store) -> None:
    _seed(store)
    with store.factory() as s:
        report = cost_report(s, since=DAY, until=DAY + timedelta(days=2),
                             group_by=["gpu_type", "day"])
        one_day = cost_report(s, since=DAY, until=DAY + timedelta(days=1), group_by=["node"])
    groups = {g.key: g.amounts for g in report.groups}
    assert set(groups) == {("A100", "2024-05-01"), ("H100", "2024-05-01"),
                           ("H100", "2024-05-02")}
    h100 = groups[("H100", "2024-05-01")]
    assert h100.idle_cost_nusd == 2 * NANO and h100.gpu_cost_nusd == 2 * NANO
    assert h100.gpu_hours == pytest.approx(0.5) and h100.idle_gpu_hours == pytest.approx(0.5)
    assert h100.energy_kwh == pytest.approx(1.0)
    assert {g.key for g in one_day.groups} == {("h100-0",), ("a100-0",)}
    assert one_day.total.inferences == 1500


def test_report_by_namespace_and_an_empty_range(store: Store) -> None:
    _seed(store)
    with store.factory() as s:
        by_ns = cost_report(s, since=DAY, until=DAY + timedelta(days=2), group_by=["namespace"])
        nothing = cost_report(s, since=DAY + timedelta(days=9), until=DAY + timedelta(days=10),
                              group_by=["model"])
        with pytest.raises(ValidationError, match="group_by"):
            cost_report(s, since=DAY, until=DAY, group_by=["colour"])
    assert {g.key for g in by_ns.groups} == {("ns",), ("team-b",), (UNALLOCATED,)}
    assert nothing.empty and nothing.total == CostAmounts() and nothing.hours == 0


class _FlakyCluster:
    """The twin as a cluster whose layout read fails on demand."""

    def __init__(self, twin: Twin) -> None:
        self.twin, self.down = twin, False

    def nodes(self) -> tuple[Node, ...]:
        if self.down:
            raise TransientError("API server unreachable")
        return self.twin.nodes()


def test_the_monitor_books_cost_with_its_samples_only_when_it_sees_the_layout(
        store: Store, settings: Settings) -> None:
    clock = ManualClock(DAY.timestamp() + 600)
    twin = Twin(settings, clock=clock, config=TwinConfig(warmup_s=300))
    cluster = _FlakyCluster(twin)
    monitor = build_monitor(metrics=twin, factory=store.factory, interval_s=30,
                      cluster=cluster, catalog=settings.catalog)  # type: ignore[arg-type]
    blind = build_monitor(metrics=twin, factory=store.factory, interval_s=30)

    def ledger() -> CostAmounts:
        with store.factory() as s:
            return cost_report(s, since=DAY, until=DAY + timedelta(days=1),
                               group_by=["node"]).total

    monitor.sample_once()  # opens the first interval: nothing to book yet
    blind.sample_once()
    assert ledger() == CostAmounts()
    for _ in range(3):
        clock.advance(30)
        monitor.sample_once()
        blind.sample_once()
    booked = ledger()
    assert booked.inferences > 0 and booked.idle_cost_nusd > 0
    assert booked.share_seconds + booked.idle_share_seconds == pytest.approx(
        90 * sum(1 for n in twin.nodes() for g in n.gpus if g.slices))

    cluster.down = True  # the interval after a failed read uses the next layout
    clock.advance(30)
    monitor.sample_once()
    assert monitor.state.error is None and ledger() != booked
    clock.advance(30)
    cluster.down = False
    monitor.sample_once()
    assert ledger().share_seconds > booked.share_seconds
    with pytest.raises(ValueError, match="catalog"):
        build_monitor(metrics=twin, factory=store.factory, interval_s=30, cluster=twin)

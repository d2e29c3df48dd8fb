"""Cost accounting (SPEC §3.8): attribution rules, exact money, grouping and safe CSV."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.catalog import Catalog
from core.clock import ManualClock
from core.cost import (
    IDLE_MODEL,
    NANO,
    UNALLOCATED,
    CostAccountant,
    CostAmounts,
    CostGroup,
    CostLine,
    group_lines,
    merge_lines,
    neutralize,
    report_columns,
    report_rows,
    split_exact,
    to_csv,
    total,
)
from core.errors import ValidationError
from core.model import Gpu, GpuType, MpsSlice, Node
from core.settings import Settings
from core.sim.twin import Twin, TwinConfig
from core.telemetry import (
    DeploymentCounters,
    DeploymentTelemetry,
    FleetTelemetry,
    FleetTotals,
    GpuTelemetry,
    Histogram,
)

T0 = 1_700_000_000.0 - 1_700_000_000.0 % 3600  # a whole UTC hour
CATALOG = Catalog.of(
    [GpuType(name="H100", memory_mib=81920, tdp_w=700, tops=1000, idle_w=140,
             price_per_gpu_hour=Decimal("4.00"), dense_int8_tops=1979,
             sparse_int8_tops=3958, dense_bf16_tflops=989),
     GpuType(name="A100", memory_mib=40960, tdp_w=400, tops=624, idle_w=50,
             price_per_gpu_hour=Decimal("2.00"), dense_int8_tops=624,
             sparse_int8_tops=1248, dense_bf16_tflops=312)],
    electricity_per_kwh=Decimal("0.10"))
EMPTY = Histogram(bounds=(1.0,), counts=(0, 0), sum=0.0)
TOTALS = FleetTotals(qps=0, power_w=0, cost_per_hour=Decimal(0), idle_cost_per_hour=Decimal(0),
                     cost_per_inference=None, tops_per_w=0)


def gpu_reading(node: str, *, energy_j: float, power_w: float = 400.0, qps: float = 0.0,
                gpu_type: str = "H100", index: int = 0) -> GpuTelemetry:
    return GpuTelemetry(node=node, gpu_index=index, gpu_type=gpu_type, uuid=f"GPU-{node}",
                        utilization=0.5, power_w=power_w, memory_used_mib=1000,
                        memory_total_mib=81920, energy_j=energy_j, qps_1m=qps)


def deployment(model: str, success: int | None, *, namespace: str = "default",
               qps: float = 0.0, nodes: tuple[str, ...] = ()) -> DeploymentTelemetry:
    counters = None if success is None else DeploymentCounters(
        requests_total=success, success_total=success, failure_total=0, prompt_tokens_total=0,
        generation_tokens_total=0, e2e_latency=EMPTY, ttft=EMPTY)
    return DeploymentTelemetry(
        model=model, namespace=namespace, replicas=1, qps_1m=qps, qps_5m=qps, qps_15m=qps,
        qps_1h=qps, success_rate=None, p99_latency_ms=None, mean_latency_ms=None,
        ttft_p50_ms=None, queue_waiting=0, running=0, tokens_per_s=0.0, nodes=nodes,
        counters=counters)


def reading(ts: float, gpus: list[GpuTelemetry], deps: list[DeploymentTelemetry]
            ) -> FleetTelemetry:
    return FleetTelemetry(timestamp=ts, gpus=tuple(gpus), deployments=tuple(deps),
                          totals=TOTALS)


def node(name: str, *shares: tuple[str, int], gpu_type: str = "H100") -> Node:
    slices = tuple(MpsSlice(owner=f"{model}-{i}", thread_pct=pct, memory_mib=1024, model=model)
                   for i, (model, pct) in enumerate(shares))
    return Node(name=name, gpus=(Gpu(index=0, gpu_type=gpu_type, memory_total_mib=81920,
                                     slices=slices),))


def model_group(model: str, **amounts: int) -> CostGroup:
    return CostGroup(key=(model,), amounts=CostAmounts(**amounts))


def by_model(lines: list[CostLine]) -> dict[str, CostAmounts]:
    return {g.key[0]: g.amounts for g in group_lines(lines, by=["model"])}


ACCOUNTANT = CostAccountant(CATALOG)


def test_a_gpu_hosting_no_model_server_costs_nothing_not_even_its_power() -> None:
    prev = reading(T0, [gpu_reading("h100-0", energy_j=1e6, power_w=140)], [])
    cur = reading(T0 + 600, [gpu_reading("h100-0", energy_j=1e6 + 84_000, power_w=140)], [])
    assert ACCOUNTANT.interval(prev=prev, cur=cur, layout=[node("h100-0")]) == []


def test_a_half_held_gpu_has_equal_held_and_idle_gpu_cost() -> None:
    prev = reading(T0, [gpu_reading("h100-0", energy_j=1e6)], [deployment("m", 0)])
    cur = reading(T0 + 1800, [gpu_reading("h100-0", energy_j=1e6 + 720_000)],
                  [deployment("m", 100)])
    lines = ACCOUNTANT.interval(prev=prev, cur=cur, layout=[node("h100-0", ("m", 50))])
    amounts = by_model(lines)
    # $4/h for half an hour = $2: $1 held, $1 idle.
    assert amounts["m"].gpu_cost_nusd == amounts[UNALLOCATED].idle_cost_nusd == 1 * NANO
    # All the energy goes to the holder (0.2 kWh × $0.10); the idle share carries none.
    assert amounts["m"].energy_cost_nusd == 20_000_000
    assert amounts[UNALLOCATED].energy_kwh == 0 and amounts[UNALLOCATED].energy_cost_nusd == 0
    assert amounts["m"].share_seconds == 900 and amounts[UNALLOCATED].idle_share_seconds == 900
    idle = next(line for line in lines if line.is_idle)
    assert idle.model == idle.namespace == IDLE_MODEL


def test_cost_per_inference_matches_a_hand_computation() -> None:
    # One H100 ($4/h) shared 60/40 for one hour; 1 kWh at $0.10; 1,000 and 500 inferences.
    prev = reading(T0, [gpu_reading("h100-0", energy_j=5e6)],
                   [deployment("a", 10_000), deployment("b", 20_000)])
    cur = reading(T0 + 3600, [gpu_reading("h100-0", energy_j=5e6 + 3.6e6)],
                  [deployment("a", 11_000), deployment("b", 20_500)])
    amounts = by_model(ACCOUNTANT.interval(prev=prev, cur=cur,
                                           layout=[node("h100-0", ("a", 60), ("b", 40))]))
    a, b = amounts["a"], amounts["b"]
    assert (a.gpu_cost_nusd, a.energy_cost_nusd, a.inferences) == (2_400_000_000, 60_000_000,
                                                                    1000)
    assert a.cost_per_inference == Decimal("0.00246")  # ($2.40 + $0.06) / 1000
    assert a.cost_per_1k == Decimal("2.46")
    assert b.cost_per_inference == Decimal("0.00328")  # ($1.60 + $0.04) / 500
    assert UNALLOCATED not in amounts  # fully allocated: no idle line
    assert a.energy_kwh == pytest.approx(0.6) and b.energy_kwh == pytest.approx(0.4)


def test_energy_falls_back_to_power_when_the_counter_resets_or_is_missing() -> None:
    prev = reading(T0, [gpu_reading("h100-0", energy_j=9e6, power_w=300),
                        gpu_reading("a100-0", energy_j=0.0, power_w=100, gpu_type="A100")], [])
    cur = reading(T0 + 3600, [gpu_reading("h100-0", energy_j=10.0, power_w=500),
                              gpu_reading("a100-0", energy_j=0.0, power_w=100,
                                          gpu_type="A100")], [])
    layout = [node("h100-0", ("m", 100)), node("a100-0", ("n", 100), gpu_type="A100")]
    amounts = by_model(ACCOUNTANT.interval(prev=prev, cur=cur, layout=layout))
    assert amounts["m"].energy_kwh == pytest.approx(0.4)  # mean of 300 W and 500 W, 1 h
    assert amounts["n"].energy_kwh == pytest.approx(0.1)
    assert amounts["n"].gpu_cost_nusd == 2 * NANO


def test_inferences_split_over_replicas_by_the_traffic_their_gpus_serve() -> None:
    gpus = [gpu_reading("h100-0", energy_j=1e6, qps=30.0), gpu_reading("h100-1", energy_j=1e6,
                                                                       qps=10.0)]
    prev = reading(T0, gpus, [deployment("m", 0)])
    cur = reading(T0 + 30, gpus, [deployment("m", 1001)])
    lines = ACCOUNTANT.interval(prev=prev, cur=cur,
                                layout=[node("h100-0", ("m", 50)), node("h100-1", ("m", 50))])
    per_node = {g.key: g.amounts.inferences for g in group_lines(lines, by=["node"])}
    assert per_node == {("h100-0",): 751, ("h100-1",): 250}  # 3:1, summing to 1001 exactly


def test_without_per_gpu_traffic_inferences_split_by_thread_share() -> None:
    gpus = [gpu_reading("h100-0", energy_j=1e6), gpu_reading("h100-1", energy_j=1e6)]
    lines = ACCOUNTANT.interval(
        prev=reading(T0, gpus, [deployment("m", 0)]),
        cur=reading(T0 + 30, gpus, [deployment("m", 100)]),
        layout=[node("h100-0", ("m", 60)), node("h100-1", ("m", 40))])
    per_node = {g.key: g.amounts.inferences for g in group_lines(lines, by=["node"])}
    assert per_node == {("h100-0",): 60, ("h100-1",): 40}


def test_a_success_counter_reset_counts_the_new_value_and_no_counters_use_qps() -> None:
    gpus = [gpu_reading("h100-0", energy_j=1e6)]
    prev = reading(T0, gpus, [deployment("a", 5000), deployment("b", None)])
    cur = reading(T0 + 60, gpus, [deployment("a", 40), deployment("b", None, qps=2.5)])
    amounts = by_model(ACCOUNTANT.interval(prev=prev, cur=cur,
                                           layout=[node("h100-0", ("a", 50), ("b", 50))]))
    assert amounts["a"].inferences == 40
    assert amounts["b"].inferences == 150


def test_a_slice_takes_the_namespace_of_the_deployment_running_on_its_node() -> None:
    gpus = [gpu_reading("h100-0", energy_j=1e6), gpu_reading("h100-1", energy_j=1e6)]
    deps = [deployment("m", 0, namespace="team-a", nodes=("h100-0",)),
            deployment("m", 0, namespace="team-b", nodes=("h100-1",))]
    later = [deployment("m", 10, namespace="team-a", nodes=("h100-0",)),
             deployment("m", 30, namespace="team-b", nodes=("h100-1",))]
    lines = ACCOUNTANT.interval(
        prev=reading(T0, gpus, deps), cur=reading(T0 + 30, gpus, later),
        layout=[node("h100-0", ("m", 100)), node("h100-1", ("m", 100)),
                node("h100-2", ("orphan", 100))])
    groups = {g.key: g.amounts.inferences for g in group_lines(lines, by=["namespace", "node"])}
    assert groups == {("team-a", "h100-0"): 10, ("team-b", "h100-1"): 30,
                      ("default", "h100-2"): 0}


def test_intervals_are_booked_into_the_hour_of_their_midpoint_and_gaps_are_skipped() -> None:
    gpus = [gpu_reading("h100-0", energy_j=1e6)]
    layout = [node("h100-0", ("m", 100))]
    early = ACCOUNTANT.interval(prev=reading(T0 + 3590, gpus, []),
                                cur=reading(T0 + 3605, gpus, []), layout=layout)
    late = ACCOUNTANT.interval(prev=reading(T0 + 3595, gpus, []),
                               cur=reading(T0 + 3610, gpus, []), layout=layout)
    assert [line.bucket_start for line in early] == [int(T0)]
    assert [line.bucket_start for line in late] == [int(T0) + 3600]
    assert ACCOUNTANT.interval(prev=reading(T0, gpus, []), cur=reading(T0, gpus, []),
                               layout=layout) == []
    assert ACCOUNTANT.interval(prev=reading(T0, gpus, []), cur=reading(T0 + 7200, gpus, []),
                               layout=layout) == []


@settings(max_examples=150, deadline=None)
@given(shares=st.lists(st.integers(1, 60), min_size=1, max_size=4),
       dt=st.floats(0.5, 3600.0, allow_nan=False), price=st.decimals("0.01", "99.99", places=2))
def test_held_plus_idle_gpu_cost_is_exactly_the_price_of_the_gpu(
        shares: list[int], dt: float, price: Decimal) -> None:
    catalog = Catalog.of([GpuType(name="X", memory_mib=1024, tdp_w=100, tops=1, idle_w=1,
                                  price_per_gpu_hour=price, dense_int8_tops=1,
                                  sparse_int8_tops=1, dense_bf16_tflops=1)])
    gpus = [gpu_reading("x-0", energy_j=1e6, gpu_type="X")]
    lines = CostAccountant(catalog).interval(
        prev=reading(T0, gpus, []), cur=reading(T0 + dt, gpus, []),
        layout=[node("x-0", *((f"m{i}", s) for i, s in enumerate(shares)), gpu_type="X")])
    whole = total(group_lines(lines, by=["node"]))
    dt = (T0 + dt) - T0  # the interval as the readings' timestamps give it
    dt_us = round(dt * 1_000_000)
    expected = int((price * NANO * dt_us / (3600 * 1_000_000)).quantize(Decimal(1)))
    assert whole.gpu_cost_nusd + whole.idle_cost_nusd == expected
    assert whole.share_seconds + whole.idle_share_seconds == pytest.approx(dt)
    assert (whole.idle_cost_nusd == 0) == (sum(shares) >= 100)


@given(total_=st.integers(0, 10**12), weights=st.lists(st.integers(0, 10**6), min_size=1,
                                                       max_size=8))
def test_split_exact_conserves_the_total_and_is_proportional(total_: int,
                                                             weights: list[int]) -> None:
    parts = split_exact(total_, weights)
    if sum(weights) == 0:
        assert parts == [0] * len(weights)
        return
    assert sum(parts) == total_
    for part, w in zip(parts, weights, strict=True):
        assert abs(part - total_ * w / sum(weights)) < 1 + 1e-6 * total_


def test_lines_agree_with_the_fleet_totals_instantaneous_cost(settings: Settings) -> None:
    clock = ManualClock(T0)
    twin = Twin(settings, clock=clock, config=TwinConfig(warmup_s=300, seed=3))
    first, layout = twin.telemetry(), twin.nodes()
    clock.advance(30)
    second = twin.telemetry()
    whole = total(group_lines(CostAccountant(settings.catalog).interval(
        prev=first, cur=second, layout=layout), by=[]))
    per_hour = Decimal(3600) / 30 / NANO
    assert whole.idle_cost_nusd * per_hour == pytest.approx(
        second.totals.idle_cost_per_hour, abs=Decimal("0.01"))
    assert whole.held_cost_nusd * per_hour == pytest.approx(second.totals.cost_per_hour,
                                                            rel=Decimal("0.02"))
    served = sum(d.counters.success_total for d in second.deployments if d.counters) \
        - sum(d.counters.success_total for d in first.deployments if d.counters)
    assert whole.inferences == served > 0


def test_merge_lines_sums_amounts_per_key() -> None:
    line = CostLine(bucket_start=int(T0), model="m", namespace="ns", node="n", gpu_index=0,
                    gpu_type="H100", amounts=CostAmounts(gpu_cost_nusd=5, inferences=2))
    other = CostLine(bucket_start=int(T0), model="m", namespace="ns", node="o", gpu_index=0,
                     gpu_type="H100", amounts=CostAmounts(gpu_cost_nusd=1))
    merged = {m.node: m.amounts for m in merge_lines([line, other, line, line])}
    assert merged == {"n": CostAmounts(gpu_cost_nusd=15, inferences=6),
                      "o": CostAmounts(gpu_cost_nusd=1)}


def test_grouping_by_model_keeps_idle_cost_in_its_own_row_and_by_day_in_each_day() -> None:
    def line(model: str, *, hour: int, **amounts: int) -> CostLine:
        return CostLine(bucket_start=int(T0) + hour * 3600, model=model,
                        namespace="ns" if model else "", node="h100-0", gpu_index=0,
                        gpu_type="H100", amounts=CostAmounts(**amounts))

    lines = [line("m", hour=0, gpu_cost_nusd=2 * NANO, inferences=1000),
             line("", hour=0, idle_cost_nusd=NANO),
             line("m", hour=30, gpu_cost_nusd=NANO, inferences=0)]
    models = {g.key: g.amounts for g in group_lines(lines, by=["model"])}
    assert models[(UNALLOCATED,)].idle_cost_nusd == NANO
    assert models[("m",)].cost_per_1k == Decimal("3")
    days = group_lines(lines, by=["day"])
    assert len(days) == 2 and days[0].amounts.idle_cost_nusd == NANO
    assert days[1].amounts.cost_per_inference is None
    rows = report_rows(days, by=["day"])
    assert rows[1]["cost per inference ($)"] is None
    assert rows[0]["idle cost ($)"] == Decimal("1") and rows[0]["held cost ($)"] == Decimal("2")
    with pytest.raises(ValidationError, match="group_by"):
        group_lines(lines, by=["colour"])


@pytest.mark.parametrize("first", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_neutralizes_text_cells_that_a_spreadsheet_would_run(first: str) -> None:
    evil = f"{first}HYPERLINK(\"http://x\")"
    assert neutralize(evil) == "'" + evil
    assert neutralize("-1") == "'-1"  # as text, even a number-looking cell is quoted
    groups = [model_group(evil, inferences=7, gpu_cost_nusd=1234)]
    text = to_csv(report_rows(groups, by=["model"]), columns=report_columns(["model"]))
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0][0] == "model"
    assert parsed[1][0] == "'" + evil
    # Numbers stay numbers (no quote), with money exact to the nano-dollar.
    row = dict(zip(parsed[0], parsed[1], strict=True))
    assert row["inferences"] == "7" and row["GPU cost ($)"] == "0.000001234"


def test_csv_leaves_ordinary_text_alone_and_writes_empty_for_no_figure() -> None:
    text = to_csv(report_rows([model_group("llama-2-7b")], by=["model"]),
                  columns=report_columns(["model"]))
    row = list(csv.reader(io.StringIO(text)))[1]
    assert row[0] == "llama-2-7b" and row[2] == ""  # no inferences: no cost per 1k

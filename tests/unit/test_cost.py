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
    FleetCost,
    fleet_cost,
    group_lines,
    merge_lines,
    neutralize,
    report_columns,
    report_rows,
    slice_costs,
    split_exact,
    to_csv,
    total,
)
from core.errors import ValidationError
from core.model import Gpu, GpuType, MpsSlice, Node, WorkloadClass
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
TOTALS = FleetTotals(qps=0, power_w=0, tops_per_w=0)


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


def reading(ts: float, gpus: list[GpuTelemetry], deps: list[DeploymentTelemetry], *,
            source: str = "twin") -> FleetTelemetry:
    qps = sum(d.qps_1m for d in deps)
    return FleetTelemetry(timestamp=ts, gpus=tuple(gpus), deployments=tuple(deps),
                          totals=FleetTotals(qps=qps, power_w=0, tops_per_w=0), source=source)


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


def test_a_half_held_gpu_splits_price_and_energy_evenly_into_held_and_idle() -> None:
    prev = reading(T0, [gpu_reading("h100-0", energy_j=1e6)], [deployment("m", 0)])
    cur = reading(T0 + 1800, [gpu_reading("h100-0", energy_j=1e6 + 720_000)],
                  [deployment("m", 100)])
    lines = ACCOUNTANT.interval(prev=prev, cur=cur, layout=[node("h100-0", ("m", 50))])
    amounts = by_model(lines)
    # $4/h for half an hour = $2: $1 held, $1 idle. 0.2 kWh × $0.10 = $0.02: SPEC §3.8
    # (corrected) splits the GPU's whole cost by share, so half the energy ($0.01) is the
    # idle line's too (it used to go all to the holder).
    assert amounts["m"].gpu_cost_nusd == 1 * NANO
    assert amounts["m"].energy_cost_nusd == 10_000_000
    assert amounts[UNALLOCATED].idle_cost_nusd == 1 * NANO + 10_000_000
    assert amounts[UNALLOCATED].energy_kwh == pytest.approx(0.1)
    assert amounts[UNALLOCATED].gpu_cost_nusd == amounts[UNALLOCATED].energy_cost_nusd == 0
    assert amounts["m"].share_seconds == 900 and amounts[UNALLOCATED].idle_share_seconds == 900
    # The fleet pays the whole GPU: per inference, idle included ($2.02 / 100).
    fleet = total(group_lines(lines, by=[]))
    assert fleet.total_cost_nusd == 2 * NANO + 20_000_000
    assert fleet.cost_per_inference == Decimal("0.0202")
    assert amounts["m"].cost_per_inference == Decimal("0.0101")  # its own share only
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
def test_held_plus_idle_cost_is_exactly_the_price_of_the_whole_gpu_plus_its_energy(
        shares: list[int], dt: float, price: Decimal) -> None:
    catalog = Catalog.of([GpuType(name="X", memory_mib=1024, tdp_w=100, tops=1, idle_w=1,
                                  price_per_gpu_hour=price, dense_int8_tops=1,
                                  sparse_int8_tops=1, dense_bf16_tflops=1)],
                         electricity_per_kwh=Decimal("0.13"))
    lines = CostAccountant(catalog).interval(
        prev=reading(T0, [gpu_reading("x-0", energy_j=1e6, gpu_type="X")], []),
        cur=reading(T0 + dt, [gpu_reading("x-0", energy_j=1e6 + 250 * dt, gpu_type="X")], []),
        layout=[node("x-0", *((f"m{i}", s) for i, s in enumerate(shares)), gpu_type="X")])
    whole = total(group_lines(lines, by=["node"]))
    joules = (1e6 + 250 * dt) - 1e6  # as the readings give it
    dt = (T0 + dt) - T0  # the interval as the readings' timestamps give it
    dt_us = round(dt * 1_000_000)
    expected = int((price * NANO * dt_us / (3600 * 1_000_000)).quantize(Decimal(1)))
    energy = int((Decimal(f"{joules:.3f}") / 3_600_000 * Decimal("0.13") * NANO).quantize(
        Decimal(1)))
    assert whole.total_cost_nusd == expected + energy
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


def test_lines_agree_with_the_fleets_instantaneous_cost(settings: Settings) -> None:
    clock = ManualClock(T0)
    twin = Twin(settings, clock=clock, config=TwinConfig(warmup_s=300, seed=3))
    first, layout = twin.telemetry(), twin.nodes()
    clock.advance(30)
    second = twin.telemetry()
    whole = total(group_lines(CostAccountant(settings.catalog).interval(
        prev=first, cur=second, layout=layout), by=[]))
    rate = fleet_cost(second, layout, settings.catalog)
    per_hour = Decimal(3600) / 30 / NANO
    # Energy over the interval (counters) against power at its end: within 2 %.
    assert whole.idle_cost_nusd * per_hour == pytest.approx(rate.idle_cost_per_hour,
                                                            rel=Decimal("0.02"))
    assert whole.total_cost_nusd * per_hour == pytest.approx(rate.total_per_hour,
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
    # A day's total counts its idle line: ($2 held + $1 idle) / 1000 (SPEC §3.8).
    assert days[0].amounts.cost_per_1k == Decimal("3")
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


# --------------------------------------------------------------------------- the one formula
# SPEC §3.8 (corrected): every GPU hosting a model server is paid whole, plus energy; the
# unallocated share of a GPU in use is its own idle part, inside the fleet's totals.


def test_a_half_allocated_gpus_idle_half_is_in_the_fleet_total_and_per_inference() -> None:
    t = reading(T0, [gpu_reading("h100-0", energy_j=0, power_w=500)],
                [deployment("m", None, qps=10.0)])
    cost = fleet_cost(t, [node("h100-0", ("m", 50))], CATALOG)
    # $4/h for the GPU, whole, and 0.5 kWh/h × $0.10 = $0.05/h of energy.
    assert cost.gpu_cost_per_hour == Decimal("4") and cost.energy_cost_per_hour == Decimal(
        "0.05")
    assert cost.total_per_hour == Decimal("4.05") and cost.gpus_in_use == 1
    assert cost.idle_cost_per_hour == Decimal("2.025")  # half of both: part of the total
    assert cost.held_cost_per_hour == Decimal("2.025")
    # $4.05 over 36,000 inferences an hour, idle included.
    assert cost.cost_per_inference == Decimal("0.0001125")
    assert cost.cost_per_1k == Decimal("0.1125")
    parts = slice_costs(t, [node("h100-0", ("m", 50))], CATALOG)
    assert [(p.model, p.share_pct, p.is_idle) for p in parts] == [("m", 50, False),
                                                                  (IDLE_MODEL, 50, True)]
    assert sum(p.nusd_per_h for p in parts) == cost.total_nusd_per_h


def test_a_gpu_hosting_nothing_costs_nothing_in_the_fleet_cost() -> None:
    t = reading(T0, [gpu_reading("h100-0", energy_j=0, power_w=140),
                     gpu_reading("h100-1", energy_j=0, power_w=300)],
                [deployment("m", None, qps=1.0)])
    layout = [node("h100-0"), node("h100-1", ("m", 100))]
    cost = fleet_cost(t, layout, CATALOG)
    assert cost.gpus_in_use == 1
    assert cost.total_per_hour == Decimal("4") + Decimal("0.03")  # h100-1 only
    assert cost.idle_cost_per_hour == 0
    nothing = fleet_cost(t, [node("h100-0"), node("h100-1")], CATALOG)
    assert nothing == FleetCost(gpus_in_use=0, gpu_nusd_per_h=0, energy_nusd_per_h=0,
                                idle_nusd_per_h=0, inferences_per_s=1.0)
    assert nothing.cost_per_inference == 0  # nothing is paid: free, and known to be


def test_without_traffic_cost_per_inference_is_unknown_not_zero() -> None:
    t = reading(T0, [gpu_reading("h100-0", energy_j=0, power_w=140)],
                [deployment("m", None, qps=0.0)])
    cost = fleet_cost(t, [node("h100-0", ("m", 100))], CATALOG)
    assert cost.total_per_hour > 0
    assert cost.cost_per_inference is None and cost.cost_per_1k is None
    assert CostAmounts(gpu_cost_nusd=5).cost_per_inference is None


def test_the_same_measurements_and_layout_cost_the_same_from_any_source() -> None:
    gpus = [gpu_reading("h100-0", energy_j=5e6, power_w=410.5, qps=7.0),
            gpu_reading("a100-0", energy_j=2e6, power_w=61.5, gpu_type="A100")]
    deps = [deployment("a", 1000, qps=7.0), deployment("b", 10, qps=0.5)]
    layout = [node("h100-0", ("a", 60), ("b", 15)), node("a100-0", ("b", 25), gpu_type="A100")]
    twin = fleet_cost(reading(T0, gpus, deps, source="twin"), layout, CATALOG)
    prometheus = fleet_cost(reading(T0, gpus, deps, source="prometheus"), layout, CATALOG)
    assert twin == prometheus
    # Both A100 and H100 are paid whole: $6/h, plus 472 W of energy.
    assert twin.gpu_cost_per_hour == 6 and twin.energy_cost_per_hour == Decimal("0.0472")


def test_the_ledger_over_an_hour_equals_the_rate_at_a_steady_power() -> None:
    layout = [node("h100-0", ("a", 60), ("b", 15))]
    prev = reading(T0, [gpu_reading("h100-0", energy_j=1e6, power_w=400)],
                   [deployment("a", 0), deployment("b", 0)])
    cur = reading(T0 + 3600, [gpu_reading("h100-0", energy_j=1e6 + 400 * 3600, power_w=400)],
                  [deployment("a", 3600), deployment("b", 0)])
    hour = total(group_lines(ACCOUNTANT.interval(prev=prev, cur=cur, layout=layout), by=[]))
    rate = fleet_cost(cur, layout, CATALOG)
    assert hour.total_cost_nusd == rate.total_nusd_per_h
    assert hour.idle_cost_nusd == rate.idle_nusd_per_h


def test_the_autoscaler_and_feedback_price_a_replica_with_the_slice_attribution(
        settings: Settings) -> None:
    from core.autoscale import fleet_views
    from core.feedback import observe
    from core.ports import ReplicaPod
    from core.sim.perf_model import PerfModel

    slices = tuple(MpsSlice(owner=f"req-{i}", thread_pct=25, memory_mib=1024, model="m",
                            workload_class=WorkloadClass.TINY) for i in (1, 2))
    layout = [Node(name="a100-0", gpus=(Gpu(index=0, gpu_type="A100", memory_total_mib=40960,
                                            slices=slices),))]
    t = reading(T0, [gpu_reading("a100-0", energy_j=0, power_w=200, qps=8.0,
                                 gpu_type="A100")], [deployment("m", None, qps=8.0)])
    parts = slice_costs(t, layout, settings.catalog)
    pods = [ReplicaPod(namespace="default", name=f"m-{i}", node="a100-0", gpu_index=0,
                       model="m", owner=f"req-{i}", thread_pct=25, memory_mib=1024,
                       phase="Running") for i in (1, 2)]
    (view,) = fleet_views(t, pods, settings.catalog)
    assert [r.cost_per_hour for r in view.replicas] == [float(p.cost_per_hour)
                                                        for p in parts[:2]]
    observations = observe(replicas=[], nodes=layout, telemetry=t,
                           perf=PerfModel.for_catalog(settings.catalog),
                           catalog=settings.catalog)
    assert [o.cost_per_hour for o in observations] == [p.cost_per_hour for p in parts[:2]]
    # Each holds a quarter of the price and of the power; the idle half is its own part.
    a100 = settings.catalog["A100"].price_per_gpu_hour
    kwh = settings.catalog.electricity_per_kwh
    assert parts[0].cost_per_hour == a100 / 4 + Decimal("0.05") * kwh
    assert parts[2].is_idle and parts[2].cost_per_hour == a100 / 2 + Decimal("0.1") * kwh


def test_monitor_stores_cost_points_only_with_a_layout() -> None:
    from core.monitor import metric_points

    t = reading(T0, [gpu_reading("h100-0", energy_j=0, power_w=500)],
                [deployment("m", None, qps=10.0)])
    layout = [node("h100-0", ("m", 50))]
    blind = {p.metric for p in metric_points(t) if p.key == "fleet"}
    assert not blind & {"cost_per_1k", "cost_per_hour", "idle_cost_per_hour"}
    points = {p.metric: p.value for p in metric_points(t, layout=layout, catalog=CATALOG)
              if p.key == "fleet"}
    assert points["cost_per_hour"] == pytest.approx(4.05)
    assert points["idle_cost_per_hour"] == pytest.approx(2.025)
    assert points["cost_per_1k"] == pytest.approx(0.1125)
    quiet = reading(T0, list(t.gpus), [deployment("m", None, qps=0.0)])
    idle_points = {p.metric for p in metric_points(quiet, layout=layout, catalog=CATALOG)}
    assert "cost_per_hour" in idle_points and "cost_per_1k" not in idle_points


def test_each_reading_is_priced_with_its_own_gpus_when_readings_alternate() -> None:
    # The GPUs of the last reading priced are indexed once (a 5,000-GPU sample priced
    # node by node); a different reading, even one at the same instant, gets its own.
    layout = [node("h100-0", ("m", 50))]
    low = reading(T0, [gpu_reading("h100-0", energy_j=0, power_w=200)], [])
    high = reading(T0, [gpu_reading("h100-0", energy_j=0, power_w=1000)], [])
    bare = reading(T0, [], [])
    for t, kw in ((low, 0.2), (high, 1.0), (low, 0.2), (bare, None), (high, 1.0)):
        energy = fleet_cost(t, layout, CATALOG).energy_cost_per_hour
        # The GPU's power × $0.10/kWh; no reading of the GPU: no energy known (0 booked).
        assert energy == (Decimal("0") if kw is None else Decimal(str(kw)) * Decimal("0.10"))

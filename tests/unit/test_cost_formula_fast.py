"""The fast cost paths give the money of the straightforward Decimal formula, bit for bit.

``core.cost`` prices a 5,000-GPU sample twice (the ledger's interval, the fleet's hourly
rate) with integer arithmetic, caches and no per-part objects where it can prove the
result equal. Each test here keeps the straightforward formula as a reference (Decimal
arithmetic, the uncached largest-remainder split, the ledger built line object by line
object and merged) and compares over many random inputs, edge cases included: 0 W,
no reading, a reading without power, shares over 100, GPU types missing from the
catalog, exact ties of the rounding, counters that reset, a model twice on one GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.catalog import Catalog
from core.cost import (
    HOUR_S,
    IDLE_MODEL,
    NANO,
    CostAccountant,
    CostAmounts,
    CostLine,
    FleetCost,
    GpuCost,
    Prices,
    fleet_cost,
    gpu_cost,
    merge_lines,
    split_exact,
)
from core.model import Gpu, GpuType, MpsSlice, Node
from core.telemetry import (
    DeploymentCounters,
    DeploymentTelemetry,
    FleetTelemetry,
    FleetTotals,
    GpuTelemetry,
    Histogram,
)

# ---- the reference: the formula as it was written before the fast paths


def ref_round(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def ref_gpu_nusd(prices: Prices, gpu_type: str, seconds: float) -> int:
    price = prices.gpu_hour_nusd.get(gpu_type, Decimal(0))
    return ref_round(price * round(seconds * 1_000_000) / (HOUR_S * 1_000_000))


def ref_kwh(joules: float) -> Decimal:
    return Decimal(f"{max(joules, 0.0):.3f}") / Decimal(3_600_000)


def ref_energy_nusd(prices: Prices, joules: float) -> int:
    return ref_round(ref_kwh(joules) * prices.kwh_nusd)


def ref_split(total: int, weights: Sequence[int]) -> list[int]:
    denominator = sum(weights)
    if denominator <= 0 or total == 0:
        return [0] * len(weights)
    parts = [total * w // denominator for w in weights]
    short = total - sum(parts)
    remainders = [total * w % denominator for w in weights]
    for i in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:short]:
        parts[i] += 1
    return parts


def ref_gpu_cost(shares: Sequence[int], price_nusd: int, energy_nusd: int) -> GpuCost:
    held = tuple(int(s) for s in shares)
    if not held:
        return GpuCost(shares=(), whole_pct=100, held_gpu_nusd=(), held_energy_nusd=())
    whole = max(100, sum(held))
    weights = [*held, whole - sum(held)]
    gpu_parts, energy_parts = ref_split(price_nusd, weights), ref_split(energy_nusd, weights)
    return GpuCost(shares=held, whole_pct=whole, held_gpu_nusd=tuple(gpu_parts[:-1]),
                   held_energy_nusd=tuple(energy_parts[:-1]), idle_gpu_nusd=gpu_parts[-1],
                   idle_energy_nusd=energy_parts[-1])


def ref_fleet_cost(t: FleetTelemetry, layout: Sequence[Node], prices: Prices) -> FleetCost:
    """Every slice's and idle share's part of its GPU for one hour, then summed."""
    readings = {(g.node, g.gpu_index): g for g in t.gpus}
    parts: list[tuple[tuple[str, int], int, int, bool]] = []  # (gpu, price, energy, idle)
    for node in layout:
        for gpu in node.gpus:
            if not gpu.slices:
                continue
            reading = readings.get((node.name, gpu.index))
            power = None if reading is None else reading.power_w
            split = ref_gpu_cost(
                [sl.thread_pct for sl in gpu.slices], ref_gpu_nusd(prices, gpu.gpu_type, HOUR_S),
                0 if power is None else ref_energy_nusd(prices, power * HOUR_S))
            key = (node.name, gpu.index)
            parts += [(key, g, e, False)
                      for g, e in zip(split.held_gpu_nusd, split.held_energy_nusd, strict=True)]
            if split.idle_pct:
                parts.append((key, split.idle_gpu_nusd, split.idle_energy_nusd, True))
    return FleetCost(gpus_in_use=len({p[0] for p in parts}),
                     gpu_nusd_per_h=sum(p[1] for p in parts),
                     energy_nusd_per_h=sum(p[2] for p in parts),
                     idle_nusd_per_h=sum(p[1] + p[2] for p in parts if p[3]),
                     inferences_per_s=t.totals.qps)


def ref_interval(acc: CostAccountant, prev: FleetTelemetry, cur: FleetTelemetry,
                 layout: Sequence[Node]) -> list[CostLine]:
    """The ledger's interval as it was: a line object per slice and idle share, amounts
    added per inference share, merged per key at the end."""
    prices = acc.prices
    dt = cur.timestamp - prev.timestamp
    if not dt > 0 or dt > acc.max_interval_s:
        return []
    bucket = int((prev.timestamp + dt / 2) // 3600) * 3600
    prev_gpus = {(g.node, g.gpu_index): g for g in prev.gpus}
    cur_gpus = {(g.node, g.gpu_index): g for g in cur.gpus}
    namespace_of = acc._namespaces(cur, prev)
    lines: list[CostLine] = []
    replicas: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for node in layout:
        for gpu in node.gpus:
            if not gpu.slices:
                continue
            key = (node.name, gpu.index)
            before, after = prev_gpus.get(key), cur_gpus.get(key)
            if before is not None and after is not None and \
                    0 < before.energy_j <= after.energy_j:
                joules = after.energy_j - before.energy_j
            else:
                watts = [g.power_w for g in (before, after) if g is not None]
                joules = sum(watts) / len(watts) * dt if watts else 0.0
            kwh = float(ref_kwh(joules))
            split = ref_gpu_cost([sl.thread_pct for sl in gpu.slices],
                                 ref_gpu_nusd(prices, gpu.gpu_type, dt),
                                 ref_energy_nusd(prices, joules))
            held, whole = sum(split.shares), split.whole_pct
            g_qps = after.qps_1m if after is not None else 0.0
            for i, sl in enumerate(gpu.slices):
                model = sl.model or sl.owner
                namespace = namespace_of(model, node.name)
                replicas.setdefault((namespace, model), []).append(
                    (len(lines), g_qps * sl.thread_pct / held))
                lines.append(CostLine(
                    bucket_start=bucket, model=model, namespace=namespace, node=node.name,
                    gpu_index=gpu.index, gpu_type=gpu.gpu_type, amounts=CostAmounts(
                        share_seconds=dt * sl.thread_pct / whole,
                        energy_kwh=kwh * sl.thread_pct / whole,
                        gpu_cost_nusd=split.held_gpu_nusd[i],
                        energy_cost_nusd=split.held_energy_nusd[i])))
            if split.idle_pct:
                lines.append(CostLine(
                    bucket_start=bucket, model=IDLE_MODEL, namespace=IDLE_MODEL,
                    node=node.name, gpu_index=gpu.index, gpu_type=gpu.gpu_type,
                    amounts=CostAmounts(idle_share_seconds=dt * split.idle_pct / whole,
                                        energy_kwh=kwh * split.idle_pct / whole,
                                        idle_cost_nusd=split.idle_nusd)))
    prev_deps = {(d.namespace, d.model): d for d in prev.deployments}
    for d in cur.deployments:
        targets = replicas.get((d.namespace, d.model))
        p = prev_deps.get((d.namespace, d.model))
        if p is not None and p.counters is not None and d.counters is not None:
            a, b = p.counters.success_total, d.counters.success_total
            served = b - a if b >= a else b
        else:
            served = round(d.qps_1m * dt)
        if not targets or served <= 0:
            continue
        weights = [round(w * 1_000_000) for _, w in targets]
        if sum(weights) <= 0:
            weights = [round(lines[i].amounts.share_seconds * 1_000_000) or 1
                       for i, _ in targets]
        for (i, _), n in zip(targets, ref_split(served, weights), strict=True):
            if n:
                line = lines[i]
                lines[i] = CostLine(
                    bucket_start=line.bucket_start, model=line.model,
                    namespace=line.namespace, node=line.node, gpu_index=line.gpu_index,
                    gpu_type=line.gpu_type, amounts=line.amounts + CostAmounts(inferences=n))
    return merge_lines(lines)


def outcome(compute: Callable[[], object]) -> str | type[BaseException]:
    """What ``compute`` returns, as its repr (the same floats to the last bit, -0.0 apart
    from 0.0), or the type of what it raises."""
    try:
        return repr(compute())
    except Exception as exc:
        return type(exc)


# ---- inputs

TYPES = ("H100", "A100", "B200")  # B200 is missing from the catalogs below


def catalog(h100: Decimal, a100: Decimal, kwh: Decimal) -> Catalog:
    return Catalog.of(
        [GpuType(name="H100", memory_mib=81920, tdp_w=700, tops=1000, idle_w=140,
                 price_per_gpu_hour=h100, dense_int8_tops=1979, sparse_int8_tops=3958,
                 dense_bf16_tflops=989),
         GpuType(name="A100", memory_mib=40960, tdp_w=400, tops=624, idle_w=50,
                 price_per_gpu_hour=a100, dense_int8_tops=624, sparse_int8_tops=1248,
                 dense_bf16_tflops=312)],
        electricity_per_kwh=kwh)


money = st.one_of(
    st.decimals(min_value=0, max_value=100, places=2),
    st.decimals(min_value=0, max_value=100, places=9),
    st.decimals(min_value=0, max_value=10**6, places=4),
    st.sampled_from([Decimal(0), Decimal("0.12"), Decimal("1"), Decimal("0.125"),
                     Decimal("4.92"), Decimal("1e-9"), Decimal("3.6"), Decimal("7.2")]))
prices_st = st.builds(lambda h, a, k: Prices.of(catalog(h, a, k)), money, money, money)
joules_st = st.one_of(
    st.floats(min_value=-1e6, max_value=1e13, allow_nan=False),
    st.floats(min_value=0, max_value=1e30, allow_nan=False),
    st.integers(min_value=0, max_value=10**15).map(lambda mj: mj / 1000),
    st.sampled_from([0.0, -0.0, 0.0005, 0.0015, 1800.0, 900.0, 450.0, 1e-9, 2.5e-4]))
shares_st = st.lists(st.integers(min_value=1, max_value=100), max_size=5)


@settings(max_examples=1500, deadline=None)
@given(prices=prices_st, joules=joules_st)
# Exact ties (7.5 and 1.5 nano-dollars, the last with a kWh Decimal rounds to 28 digits):
# half to even, as Decimal rounds them.
@example(prices=Prices.of(catalog(Decimal(1), Decimal(1), Decimal(1))), joules=0.027)
@example(prices=Prices.of(catalog(Decimal(1), Decimal(1), Decimal("0.5"))), joules=0.054)
@example(prices=Prices.of(catalog(Decimal(1), Decimal(1), Decimal("0.09"))), joules=0.06)
def test_energy_in_integers_is_the_decimal_formula_bit_for_bit(prices: Prices,
                                                               joules: float) -> None:
    # Beyond 28 digits the formula fails (Decimal's quantize): the fast path as well.
    assert outcome(lambda: prices.energy_nusd(joules)) == \
        outcome(lambda: ref_energy_nusd(prices, joules))
    assert outcome(lambda: prices.energy(joules)) == \
        outcome(lambda: (float(ref_kwh(joules)), ref_energy_nusd(prices, joules)))


@pytest.mark.parametrize("joules", [float("nan"), float("inf")])
def test_energy_that_is_not_a_number_fails_as_the_decimal_formula_does(joules: float) -> None:
    prices = Prices.of(catalog(Decimal(4), Decimal(2), Decimal("0.12")))
    with pytest.raises(ArithmeticError if joules > 0 else ValueError) as reference:
        ref_energy_nusd(prices, joules)
    with pytest.raises(reference.type):
        prices.energy_nusd(joules)


@settings(max_examples=800, deadline=None)
@given(prices=prices_st, gpu_type=st.sampled_from(TYPES),
       seconds=st.one_of(st.floats(min_value=0, max_value=7200, allow_nan=False),
                         st.sampled_from([0.0, 30.0, 3600.0, 1e-6, 29.9999995])))
def test_a_gpus_price_for_a_period_is_the_decimal_formula(prices: Prices, gpu_type: str,
                                                         seconds: float) -> None:
    for _ in range(2):  # computed, then from the cache
        assert prices.gpu_nusd(gpu_type, seconds) == ref_gpu_nusd(prices, gpu_type, seconds)


@settings(max_examples=800, deadline=None)
@given(shares=shares_st, price=st.integers(min_value=0, max_value=10**12),
       energy=st.integers(min_value=0, max_value=10**12))
def test_gpu_cost_splits_as_the_uncached_largest_remainder(shares: list[int], price: int,
                                                          energy: int) -> None:
    for _ in range(2):
        assert gpu_cost(shares=shares, price_nusd=price, energy_nusd=energy) == \
            ref_gpu_cost(shares, price, energy)
    assert split_exact(price, [*shares, 7]) == ref_split(price, [*shares, 7])


# A GPU: (type, slices as (model, share), reading: None | power in W (None: no power)).
gpu_st = st.tuples(st.sampled_from(TYPES),
                   st.lists(st.tuples(st.sampled_from(["m1", "m2", ""]),
                                      st.integers(min_value=1, max_value=100)), max_size=4),
                   st.one_of(st.none(), st.just(0.0), st.floats(min_value=0, max_value=1500),
                             st.just("no power")))
layout_st = st.lists(st.lists(gpu_st, min_size=1, max_size=3), min_size=1, max_size=4)


def build(spec: list[list[tuple[str, list[tuple[str, int]], object]]], *, ts: float = 0.0,
          energy_j: float = 0.0) -> tuple[list[Node], FleetTelemetry]:
    nodes, readings = [], []
    for n, gpus in enumerate(spec):
        name = f"node-{n}"
        layout_gpus = []
        for i, (gpu_type, slices, power) in enumerate(gpus):
            layout_gpus.append(Gpu(index=i, gpu_type=gpu_type, memory_total_mib=81920,
                                   slices=tuple(MpsSlice(owner=f"o{k}", thread_pct=pct,
                                                         memory_mib=0, model=model)
                                                for k, (model, pct) in enumerate(slices))))
            if power is not None:
                readings.append(GpuTelemetry(
                    node=name, gpu_index=i, gpu_type=gpu_type, uuid=f"GPU-{name}-{i}",
                    utilization=0.5, power_w=None if power == "no power" else power,  # type: ignore[arg-type]
                    memory_used_mib=0, memory_total_mib=81920, energy_j=energy_j,
                    qps_1m=float(i)))
        nodes.append(Node(name=name, gpus=tuple(layout_gpus)))
    return nodes, FleetTelemetry(timestamp=ts, gpus=tuple(readings), deployments=(),
                                 totals=FleetTotals(qps=3.5, power_w=0, tops_per_w=0))


@settings(max_examples=500, deadline=None)
@given(prices=prices_st, spec=layout_st)
def test_the_fleets_hourly_cost_is_the_sum_of_its_slice_costs(
        prices: Prices, spec: list[list[tuple[str, list[tuple[str, int]], object]]]) -> None:
    layout, telemetry = build(spec)
    assert fleet_cost(telemetry, layout, prices) == ref_fleet_cost(telemetry, layout, prices)


EMPTY = Histogram(bounds=(1.0,), counts=(0, 0), sum=0.0)


def deployment(model: str, namespace: str, success: int | None, qps: float,
               nodes: tuple[str, ...]) -> DeploymentTelemetry:
    counters = None if success is None else DeploymentCounters(
        requests_total=success, success_total=success, failure_total=0, prompt_tokens_total=0,
        generation_tokens_total=0, e2e_latency=EMPTY, ttft=EMPTY)
    return DeploymentTelemetry(
        model=model, namespace=namespace, replicas=1, qps_1m=qps, qps_5m=qps, qps_15m=qps,
        qps_1h=qps, success_rate=None, p99_latency_ms=None, mean_latency_ms=None,
        ttft_p50_ms=None, queue_waiting=0, running=0, tokens_per_s=0.0, nodes=nodes,
        counters=counters)


deps_st = st.lists(st.tuples(st.sampled_from(["m1", "m2", "o0", "o1"]),
                             st.sampled_from(["default", "team-a"]),
                             st.one_of(st.none(), st.integers(min_value=0, max_value=10**6)),
                             st.floats(min_value=0, max_value=500),
                             st.sampled_from([(), ("node-0",), ("node-1", "node-2")])),
                   max_size=5)


@settings(max_examples=400, deadline=None)
@given(prices=prices_st, spec=layout_st, deps_before=deps_st, deps_after=deps_st,
       energy=st.tuples(st.floats(min_value=0, max_value=1e9),
                        st.floats(min_value=0, max_value=1e9)),
       start=st.floats(min_value=0, max_value=7200), dt=st.sampled_from([30.0, 0.0, 17.3,
                                                                        3600.0, 5000.0]),
       twice=st.booleans())
def test_the_ledgers_interval_books_the_lines_of_the_formula(
        prices: Prices, spec: list[list[tuple[str, list[tuple[str, int]], object]]],
        deps_before: list[tuple[str, str, int | None, float, tuple[str, ...]]],
        deps_after: list[tuple[str, str, int | None, float, tuple[str, ...]]],
        energy: tuple[float, float], start: float, dt: float, twice: bool) -> None:
    layout, prev = build(spec, ts=start, energy_j=energy[0])
    if twice:  # a layout that lists a GPU twice: its lines of one key merge across GPUs
        layout[0] = Node(name=layout[0].name, gpus=(*layout[0].gpus, layout[0].gpus[0]))
    _, cur = build(spec, ts=start + dt, energy_j=energy[1])
    prev = FleetTelemetry(timestamp=prev.timestamp, gpus=prev.gpus, totals=prev.totals,
                          deployments=tuple(deployment(*d) for d in deps_before))
    cur = FleetTelemetry(timestamp=cur.timestamp, gpus=cur.gpus, totals=cur.totals,
                         deployments=tuple(deployment(*d) for d in deps_after))
    acc = CostAccountant(catalog(Decimal(4), Decimal(2), Decimal("0.12")))
    acc.prices = prices  # the drawn prices

    # A reading without power fails both the same way.
    assert outcome(lambda: acc.interval(prev=prev, cur=cur, layout=layout)) == \
        outcome(lambda: ref_interval(acc, prev, cur, layout))


def test_the_reference_and_the_ledger_agree_on_a_hand_computed_gpu() -> None:
    """One GPU half held for an hour at 1 kW: 4 $ of price, 0.12 $ of energy, split 50/50
    (the reference is checked too, so the comparisons above compare against the rule)."""
    prices = Prices.of(catalog(Decimal(4), Decimal(2), Decimal("0.12")))
    layout, prev = build([[("H100", [("m1", 50)], 1000.0)]], ts=0.0, energy_j=1.0)
    _, cur = build([[("H100", [("m1", 50)], 1000.0)]], ts=3600.0, energy_j=1.0 + 3.6e6)
    acc = CostAccountant(catalog(Decimal(4), Decimal(2), Decimal("0.12")))
    for lines in (acc.interval(prev=prev, cur=cur, layout=layout),
                  ref_interval(acc, prev, cur, layout)):
        held, idle = lines
        assert (held.amounts.gpu_cost_nusd, held.amounts.energy_cost_nusd) == \
            (2 * NANO, NANO * 6 // 100)
        assert idle.amounts.idle_cost_nusd == 2 * NANO + NANO * 6 // 100
    assert fleet_cost(cur, layout, prices) == ref_fleet_cost(cur, layout, prices) == FleetCost(
        gpus_in_use=1, gpu_nusd_per_h=4 * NANO, energy_nusd_per_h=NANO * 12 // 100,
        idle_nusd_per_h=2 * NANO + NANO * 6 // 100, inferences_per_s=3.5)


def test_splitting_inferences_leaves_the_price_split_cache_alone() -> None:
    from core.cost import formula

    before = formula._split.cache_info().currsize
    for total in range(1, 200):  # totals and weights that never repeat, as inferences
        parts = formula.split_exact(total * 7919, [total, 3 * total + 1, 5])
        assert sum(parts) == total * 7919
    assert formula._split.cache_info().currsize == before

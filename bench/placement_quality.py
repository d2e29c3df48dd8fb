"""Placement quality on a replayed trace: what the shipped autoscaler and placement cost
at their latency objectives, against an offline and an online-feasible bound.

Run: ``python -m bench.placement_quality [--trace PATH] [--seed N] [--quick]``.

The trace (any CSV with ``TIMESTAMP, ContextTokens, GeneratedTokens``) is
replayed on the digital twin, split across three deployments of different
sizes (``core.sim.evaluate.STANDARD_MODELS``: tiny, medium and large
workload classes, 60/30/10 % of the requests). Each deployment's latency
objectives are TTFT and TPOT at p99 (``latency_objectives``): ``--slo-multiplier``
× the unloaded figure on the slowest GPU type able to hold it, rounded up to
a bound of vLLM's histogram; a request meets its SLO when it meets both. The
scale factor is chosen from the trace alone: the default fleet's load in the
busiest ``--peak-window`` seconds (the fraction of its capacity that window's
work needs, packed as well as possible; see ``bench.quality_bound``) is
``--peak-load``.

Runs (one replay each, the same seed): the ``slo`` autoscaler (the default the
controller ships, ``core.autoscale_policy``) and ``seed`` (SPEC §3.6's queue
rule), each with least-outstanding-work routing (the default) and uniform
routing, both with the scheduler's weights; first-fit, bin-pack, spread and
random placement under ``slo`` and least-work routing; and ``slo`` on an
all-A100 and an all-H100 fleet, each just large enough to carry the same peak.
Then the same on a decode-heavy variant of the trace (GeneratedTokens ×
``--decode-factor``), where the GPU types' decode/prefill price-performance
differ the most.

Cost is the fleet total (SPEC §3.8: every GPU in use, whole, plus energy),
reported as GPU-hours and energy, and the idle part of both (the unallocated
shares of GPUs in use), which the total includes. Bounds
(``bench.quality_bound``): the per-minute ILP (no SLO headroom, no start-up,
whole GPUs) over the least work any default-fleet run got done; the online-
feasible bound (per ``--online-window`` s, capacity within the SLO, co-runner
slowdown, every replica held for its start-up before it serves); the same
without start-up; and the placement-only bound (the cheapest way to hold, per
minute, the capacity the ``slo`` run held). The gap to the online bound splits
into capacity (held beyond need: placement-only ÷ online) and placement
(policy ÷ placement-only); start-up is online ÷ online-without-start-up.
"Beats" a baseline means a lower fleet $/1k **and** an SLO attainment at least
as high, both at once. The figures and per-minute GPUs held vs demand go to
``bench/results/placement_quality.json`` (the console's Evaluation page charts
it). The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.quality_bound import (
    BoundResult,
    fleet_model,
    lower_bound,
    online_bound,
    window_load,
)
from core.adapters.settings_source import load_settings
from core.autoscale_slo import RequestShape, replica_capacity
from core.errors import ValidationError
from core.model import Node
from core.placement.baselines import BASELINES
from core.scheduling import build_policy, build_scheduler
from core.settings import Settings
from core.sim import PerfModel, Trace, read_trace
from core.sim.config import TwinConfig
from core.sim.evaluate import Deployment, PolicyResult, ScalingRule, evaluate_policy
from core.sim.evaluate.deployments import standard_deployments
from core.sim.twin import fleet_from_settings, generate_fleet

TRACE = Path(__file__).resolve().parent.parent / "tests" / "data" / \
    "azure_llm_inference_2023_code.csv"
RESULTS = Path(__file__).resolve().parent / "results" / "placement_quality.json"
SLO_TARGET = 0.99
SHIPPED = "slo, least-work routing"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Setup:
    settings: Settings
    trace: Trace
    perf: PerfModel
    deployments: tuple[Deployment, ...]
    scale: float
    duration_s: float
    fleet: dict[str, int]
    args: argparse.Namespace


def window_work(trace: Trace, *, window_s: float, duration_s: float,
                weights: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output tokens per window × deployment (expected split), × ``scale``."""
    n = math.ceil(duration_s / window_s - 1e-9)
    keep = trace.offsets_s < n * window_s
    w = (trace.offsets_s[keep] // window_s).astype(np.int64)
    prompt = np.bincount(w, weights=trace.prefill_tokens[keep], minlength=n)[:n] * scale
    output = np.bincount(w, weights=trace.decode_tokens[keep], minlength=n)[:n] * scale
    share = weights / weights.sum()
    return prompt[:, None] * share[None, :], output[:, None] * share[None, :]


def peak_load(settings: Settings, trace: Trace, *, deployments: Sequence[Deployment],
              fleet: dict[str, int], perf: PerfModel, window_s: float, duration_s: float
              ) -> float:
    """The fleet's load in its busiest window at scale 1."""
    model = fleet_model(settings, deployments=deployments, fleet=fleet, perf=perf,
                        slowdown=perf.co_runner_slowdown)
    weights = np.array([d.traffic_weight for d in deployments])
    prompt, output = window_work(trace, window_s=window_s, duration_s=duration_s,
                                 weights=weights)
    totals = prompt.sum(axis=1) + output.sum(axis=1)
    # The busiest few windows by tokens are enough to find the busiest by load.
    top = np.argsort(totals)[-8:]
    return max(window_load(model, prompt_tokens=prompt[w], output_tokens=output[w],
                           window_s=window_s) for w in top)


def prepare(args: argparse.Namespace, *, decode_factor: float = 1.0) -> Setup:
    settings = load_settings()
    trace = read_trace(args.trace)
    if decode_factor != 1.0:
        trace = replace(trace, decode_tokens=np.maximum(
            1, np.round(trace.decode_tokens * decode_factor)).astype(np.int64),
            source=f"{trace.source} (GeneratedTokens ×{decode_factor:g})")
    perf = PerfModel.for_catalog(settings.catalog)
    span = trace.duration_s + 1e-6
    if args.quick:
        span = min(span, 900.0)
    duration = max(2.0, math.ceil(span / 60.0)) * 60.0
    deployments = standard_deployments(settings, prompt_tokens=trace.prefill_tokens,
                                       output_tokens=trace.decode_tokens, perf=perf,
                                       sla_multiplier=args.slo_multiplier,
                                       token_objectives=True)
    fleet = {t: n * settings.fleet.gpus_per_node
             for t, n in settings.fleet.nodes_per_type.items()}
    load_1 = peak_load(settings, trace, deployments=deployments, fleet=fleet, perf=perf,
                       window_s=args.peak_window, duration_s=duration)
    if not math.isfinite(load_1) or load_1 <= 0:
        raise ValidationError("trace", "has no work the fleet can serve")
    return Setup(settings=settings, trace=trace, perf=perf, deployments=deployments,
                 scale=args.peak_load / load_1, duration_s=duration, fleet=fleet, args=args)


def single_type_fleet(setup: Setup, gpu_type: str) -> tuple[tuple[Node, ...], int]:
    """The smallest fleet of one GPU type that carries the same peak load."""
    s = setup.settings
    load_one = peak_load(s, setup.trace, deployments=setup.deployments, fleet={gpu_type: 1},
                         perf=setup.perf, window_s=setup.args.peak_window,
                         duration_s=setup.duration_s)
    count = max(1, math.ceil(load_one * setup.scale / setup.args.peak_load - 1e-9))
    return generate_fleet(s.catalog, s.classes, nodes_per_type={gpu_type: count},
                          gpus_per_node=1, occupancy=0.0), count


# ======================================================================================
@dataclass(frozen=True)
class Row:
    label: str
    result: PolicyResult
    fleet: str = "default"


def run(setup: Setup, *, label: str, policy_name: str = "scheduler", autoscaler: str = "slo",
        routing: str = "least_work", nodes: Sequence[Node] | None = None, seed: int,
        fleet: str = "default") -> Row:
    s = setup.settings
    policy = build_scheduler(s) if policy_name == "scheduler" else \
        build_policy(policy_name, s, seed=seed)
    started = time.perf_counter()
    result = evaluate_policy(
        s, policy=policy, traffic=setup.trace, deployments=setup.deployments,
        duration_s=setup.duration_s, window_s=60.0, seed=seed, trace_scale=setup.scale,
        rule=ScalingRule(), perf=setup.perf, timer=time.perf_counter, name=label,
        nodes=nodes if nodes is not None else fleet_from_settings(s), autoscaler=autoscaler,
        twin_config=TwinConfig(routing=routing))
    log(f"  {label}: {time.perf_counter() - started:.1f} s")
    return Row(label, result, fleet)


def run_all(setup: Setup, *, seed: int, full: bool) -> list[Row]:
    rows = [run(setup, label=SHIPPED, seed=seed)]
    if full:
        rows.append(run(setup, label="slo, uniform routing", routing="uniform", seed=seed))
        rows.append(run(setup, label="seed, least-work routing", autoscaler="seed", seed=seed))
        rows.append(run(setup, label="seed, uniform routing", autoscaler="seed",
                        routing="uniform", seed=seed))
        for name in BASELINES:
            rows.append(run(setup, label=f"{name} (slo, least-work)", policy_name=name,
                            seed=seed))
    for gpu_type in setup.settings.catalog.names:
        nodes, count = single_type_fleet(setup, gpu_type)
        rows.append(run(setup, label=f"slo, all-{gpu_type} fleet ({count} GPUs)", nodes=nodes,
                        seed=seed, fleet=f"all-{gpu_type}"))
    return rows


def derate(setup: Setup) -> np.ndarray:
    """Per deployment × catalog type: the part of a slice's saturated throughput usable
    within the SLO (the ``slo`` policy's own capacity model, no co-runners)."""
    s, perf = setup.settings, setup.perf
    trace = setup.trace
    out = np.ones((len(setup.deployments), len(s.catalog.names)))
    for d, dep in enumerate(setup.deployments):
        c = s.classes.classify(dep.memory_gb)
        shape = RequestShape(float(trace.prefill_tokens.mean()), float(trace.decode_tokens.mean()),
                             dep.tail_prompt_tokens or 1.0, dep.tail_output_tokens or 1.0)
        for t, gpu_type in enumerate(s.catalog.names):
            cap = replica_capacity(perf, workload_class=c.workload_class, gpu_type=gpu_type,
                                   share=c.share_pct / 100.0, shape=shape, objectives=dep.slo,
                                   co_runners=0, max_utilization=s.slo.max_utilization)
            out[d, t] = cap.rps / cap.saturated_rps if cap.saturated_rps > 0 else 0.0
    return np.maximum(out, 1e-6)


@dataclass(frozen=True)
class Bounds:
    ilp: BoundResult
    online: BoundResult
    online_no_startup: BoundResult
    placement_only: BoundResult


def bounds(setup: Setup, rows: Sequence[Row], shipped: PolicyResult) -> Bounds:
    s, args = setup.settings, setup.args
    rule = ScalingRule()
    default = [r.result for r in rows if r.fleet == "default"]
    model = fleet_model(s, deployments=setup.deployments, fleet=setup.fleet, perf=setup.perf)
    started = time.perf_counter()
    ilp = lower_bound(model, prompt_tokens=np.min([r.window_prompt_tokens for r in default],
                                                  axis=0),
                      output_tokens=np.min([r.window_output_tokens for r in default], axis=0),
                      window_s=60.0, min_replicas=rule.min_replicas)
    log(f"  ILP bound: {time.perf_counter() - started:.1f} s")
    weights = np.array([d.traffic_weight for d in setup.deployments])
    prompt, output = window_work(setup.trace, window_s=args.online_window,
                                 duration_s=setup.duration_s, weights=weights, scale=setup.scale)
    slo_model = fleet_model(s, deployments=setup.deployments, fleet=setup.fleet,
                            perf=setup.perf, slowdown=setup.perf.co_runner_slowdown,
                            derate=derate(setup))
    started = time.perf_counter()
    online = online_bound(slo_model, prompt_tokens=prompt, output_tokens=output,
                          window_s=args.online_window, startup_s=TwinConfig().startup_delay_s,
                          min_replicas=rule.min_replicas)
    no_start = online_bound(slo_model, prompt_tokens=prompt, output_tokens=output,
                            window_s=args.online_window, startup_s=0.0,
                            min_replicas=rule.min_replicas)
    log(f"  online bounds: {time.perf_counter() - started:.1f} s")
    held_model = fleet_model(s, deployments=setup.deployments, fleet=setup.fleet,
                             perf=setup.perf, slowdown=setup.perf.co_runner_slowdown)
    columns = [s.catalog.names.index(t) for t in held_model.types]
    same = lower_bound(held_model, prompt_tokens=shipped.window_prompt_tokens,
                       output_tokens=shipped.window_output_tokens, window_s=60.0,
                       min_replicas=rule.min_replicas,
                       held=shipped.window_capacity[:, :, columns])
    return Bounds(ilp, online, no_start, same)


def fleet_bounds(setup: Setup, *, served: int) -> float:
    """The online-feasible bound on the default (mixed) fleet and on each single-type
    fleet (as large as the single-type run's), printed per 1k requests served; returns
    the mixed fleet's bound over the cheapest single-type bound: the lowest
    ``cost_ratio_vs_single_type`` two equally efficient policies could show (a ratio
    under it needs a policy that is nearer its bound on the mixed fleet than on the
    single-type one)."""
    s, args = setup.settings, setup.args
    weights = np.array([d.traffic_weight for d in setup.deployments])
    prompt, output = window_work(setup.trace, window_s=args.online_window,
                                 duration_s=setup.duration_s, weights=weights, scale=setup.scale)
    rated = derate(setup)
    fleets = [("default", dict(setup.fleet))]
    for gpu_type in s.catalog.names:
        fleets.append((f"all-{gpu_type}", {gpu_type: single_type_fleet(setup, gpu_type)[1]}))
    totals: dict[str, float] = {}
    per_1k = 1000 / max(1, served)
    for name, fleet in fleets:
        model = fleet_model(s, deployments=setup.deployments, fleet=fleet, perf=setup.perf,
                            slowdown=setup.perf.co_runner_slowdown, derate=rated)
        b = online_bound(model, prompt_tokens=prompt, output_tokens=output,
                         window_s=args.online_window, startup_s=TwinConfig().startup_delay_s,
                         min_replicas=ScalingRule().min_replicas)
        totals[name] = b.total
        gpus = ", ".join(f"{n} {t}" for t, n in fleet.items())
        print(f"  online-feasible bound, {name} fleet ({gpus}): "
              f"${b.total * per_1k:.4f}/1k, {b.mean_gpus:.2f} GPUs")
    single = min(v for k, v in totals.items() if k != "default")
    ratio = totals["default"] / single if single > 0 else math.inf
    print(f"  the mixed fleet's bound is ×{ratio:.4f} the cheapest single-type fleet's: "
          "the ratio to single-type that policies equally near their bounds would show")
    return ratio


def cost_1k(r: PolicyResult) -> float:
    return math.inf if r.cost_per_1k is None else float(r.cost_per_1k)


def slo_cost_1k(r: PolicyResult) -> float:
    return math.inf if r.cost_per_1k_within_sla is None else float(r.cost_per_1k_within_sla)


def beats(a: PolicyResult, b: PolicyResult) -> bool:
    """Lower fleet $/1k and SLO attainment at least as high, both at once."""
    return cost_1k(a) < cost_1k(b) and a.sla_attainment >= b.sla_attainment


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def print_table(rows: Sequence[Row], b: Bounds) -> None:
    print(f"{'run':<34} {'$/1k':>7} {'$/1k SLO':>8} {'SLO %':>6} {'GPUs':>5} {'peak':>4} "
          f"{'idle %':>6} {'GPU-h $':>7} {'energy $':>8} {'idle $':>7} {'×ILP':>6} "
          f"{'×online':>7}")
    for row in rows:
        r = row.result
        default = row.fleet == "default"
        ilp = float(r.cost) / b.ilp.total if default and b.ilp.total > 0 else None
        online = float(r.cost) / b.online.total if default and b.online.total > 0 else None
        print(f"{row.label:<34} {fmt(cost_1k(r), '.4f'):>7} {fmt(slo_cost_1k(r), '.4f'):>8} "
              f"{r.sla_attainment * 100:>6.2f} {r.mean_gpus:>5.2f} {r.peak_gpus:>4d} "
              f"{r.idle_share * 100:>6.1f} {float(r.gpu_cost):>7.2f} "
              f"{float(r.energy_cost):>8.2f} {float(r.idle_cost):>7.2f} {fmt(ilp, '.3f'):>6} "
              f"{fmt(online, '.3f'):>7}")


def describe(setup: Setup) -> None:
    t = setup.trace
    print(f"trace: {t.source}, {t.size} requests over {t.duration_s / 60:.1f} min; replayed "
          f"{setup.duration_s / 60:.0f} min at ×{setup.scale:.2f} so the default fleet "
          f"({', '.join(f'{n} {k}' for k, n in setup.fleet.items())}) is "
          f"{setup.args.peak_load:.0%} loaded in the busiest {setup.args.peak_window:g} s")
    for d in setup.deployments:
        policy = setup.settings.classes.classify(d.memory_gb)
        print(f"deployment {d.name}: {d.memory_gb:g} GB ({policy.workload_class.value}, "
              f"{policy.share_pct} % MPS share), {d.traffic_weight:.0%} of requests, "
              f"SLO {d.slo.describe()}")


def gap_lines(shipped: PolicyResult, b: Bounds) -> None:
    cost = float(shipped.cost)
    served = shipped.succeeded or 1
    per_1k = 1000 / served
    print(f"{'offline bound (ILP, per minute)':<34} {b.ilp.total * per_1k:>7.4f}  "
          f"{b.ilp.mean_gpus:.2f} GPUs; LP relaxation ${b.ilp.lp_total * per_1k:.4f}/1k; "
          f"windows over the fleet: {b.ilp.dropped_windows}")
    print(f"{'online-feasible bound':<34} {b.online.total * per_1k:>7.4f}  "
          f"{b.online.mean_gpus:.2f} GPUs; windows over the fleet: {b.online.dropped_windows}")
    print(f"{'  … without start-up':<34} {b.online_no_startup.total * per_1k:>7.4f}  "
          f"{b.online_no_startup.mean_gpus:.2f} GPUs")
    print(f"{'placement-only bound':<34} {b.placement_only.total * per_1k:>7.4f}  "
          f"{b.placement_only.mean_gpus:.2f} GPUs (the capacity {SHIPPED} held, packed best)")
    print(f"gap of {SHIPPED} to the online bound: ×{cost / b.online.total:.3f} = capacity "
          f"×{b.placement_only.total / b.online.total:.3f} (held beyond the SLO's need) "
          f"· placement ×{cost / b.placement_only.total:.3f}; start-up inside the bound "
          f"×{b.online.total / b.online_no_startup.total:.3f}; the bound's SLO headroom and "
          f"10-s windows over the ILP ×{b.online_no_startup.total / b.ilp.total:.3f}")
    frag = fragmentation(shipped)
    print(f"  placement ×{cost / b.placement_only.total:.3f} = fragmentation ×{frag:.3f} "
          f"({shipped.mean_gpus:.2f} GPUs held; the same replicas on the same GPU types, "
          f"repacked every interval: {shipped.repacked_mean_gpus:.2f}) · replica mix "
          f"×{cost / b.placement_only.total / frag:.3f} (the types and co-runners the held "
          "capacity sits on, chosen by the autoscaler's plan, and the bound's per-minute "
          "re-choice of them)")


def fragmentation(r: PolicyResult) -> float:
    """GPU-hour cost held over that of the same replicas repacked every interval."""
    return float(r.gpu_cost) / float(r.repacked_gpu_cost) if r.repacked_gpu_cost > 0 else 1.0


def variant(args: argparse.Namespace, *, seed: int) -> tuple[float, list[Row]]:
    """The decode-heavy variant: slo on the default fleet vs both single-type fleets."""
    setup = prepare(args, decode_factor=args.decode_factor)
    print(f"--- decode-heavy variant (GeneratedTokens ×{args.decode_factor:g}) ---")
    describe(setup)
    rows = run_all(setup, seed=seed, full=False)
    singles = [r.result for r in rows if r.fleet != "default"]
    ratio = cost_1k(rows[0].result) / min(cost_1k(r) for r in singles)
    for row in rows:
        r = row.result
        print(f"{row.label:<34} ${fmt(cost_1k(r), '.4f')}/1k  SLO {r.sla_attainment:.4f}  "
              f"GPUs {r.mean_gpus:.2f} (peak {r.peak_gpus})  idle {r.idle_share:.1%}")
    bound_ratio = fleet_bounds(setup, served=rows[0].result.succeeded)
    print(f"decode-heavy: cost_ratio_vs_single_type={ratio:.4f} (goal ≤ 0.85; "
          f"between the bounds ×{bound_ratio:.4f})")
    return ratio, rows


def per_minute(values: Sequence[float], *, window_s: float, minutes: int) -> list[float]:
    """Window values averaged into minutes (windows that divide a minute)."""
    per = max(1, round(60.0 / window_s))
    out = [float(np.mean(values[m * per:(m + 1) * per])) if values[m * per:(m + 1) * per]
           else 0.0 for m in range(minutes)]
    return [round(v, 3) for v in out]


def write_results(path: Path, *, setup: Setup, rows: Sequence[Row], b: Bounds,
                  summary: dict[str, object]) -> None:
    demand = [float(x) for x in rows[0].result.window_requests.sum(axis=1) / 60.0]
    payload = {
        "trace": setup.trace.source, "scale": setup.scale, "window_s": 60.0,
        "minutes": list(range(len(demand))), "demand_rps": demand,
        "gpus_held": {row.label: [round(float(g), 3) for g in row.result.window_gpus]
                      for row in rows if row.fleet == "default"},
        "bound_gpus_mean": {"ilp": b.ilp.mean_gpus, "online": b.online.mean_gpus},
        # Per minute: what the bounds' optima hold (the online one averaged over its windows).
        "bound_gpus": {"ILP bound (per minute)": [round(g, 3) for g in b.ilp.window_gpus],
                       "online-feasible bound": per_minute(b.online.window_gpus,
                                                           window_s=setup.args.online_window,
                                                           minutes=len(demand))},
        "rows": [{"label": row.label, "fleet": row.fleet,
                  "cost_per_1k": cost_1k(row.result), "slo_cost_per_1k": slo_cost_1k(row.result),
                  "slo_attainment": row.result.sla_attainment, "mean_gpus": row.result.mean_gpus,
                  "peak_gpus": row.result.peak_gpus, "idle_share": row.result.idle_share,
                  "gpu_usd": float(row.result.gpu_cost),
                  "energy_usd": float(row.result.energy_cost),
                  "idle_usd": float(row.result.idle_cost),
                  "repacked_mean_gpus": row.result.repacked_mean_gpus,
                  "fragmentation": fragmentation(row.result)} for row in rows],
        "summary": summary,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, allow_nan=False, default=str) + "\n",
                    encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="at most 15 minutes of the trace, no decode-heavy variant")
    parser.add_argument("--peak-load", type=float, default=0.75,
                        help="the default fleet's load in the busiest --peak-window")
    parser.add_argument("--peak-window", type=float, default=10.0,
                        help="seconds; 60 reproduces the earlier per-minute scaling")
    parser.add_argument("--slo-multiplier", type=float, default=4.0)
    parser.add_argument("--online-window", type=float, default=10.0,
                        help="the online-feasible bound's window (s)")
    parser.add_argument("--decode-factor", type=float, default=30.0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be ≥ 0")
    if not 0 < args.peak_load <= 1:
        parser.error("--peak-load must be within (0, 1]")
    started = time.perf_counter()
    try:
        setup = prepare(args)
    except ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    describe(setup)
    log(f"replaying (seed {args.seed}) ...")
    rows = run_all(setup, seed=args.seed, full=True)
    shipped = rows[0].result
    b = bounds(setup, rows, shipped)
    print_table(rows, b)
    print("fragmentation (GPU-h $ held ÷ the same replicas on the same types repacked every "
          "interval): " + ", ".join(f"{row.label.split(' (')[0]} ×{fragmentation(row.result):.3f}"
                                    for row in rows if row.fleet == "default"))
    for d in shipped.per_deployment:
        print(f"  {SHIPPED}, {d.name}: SLO {d.sla_attainment:.4f} ({d.requests - d.within_sla} "
              f"of {d.requests} missed), replicas mean {d.mean_replicas:.2f}, peak "
              f"{d.peak_replicas}")
    gap_lines(shipped, b)
    by = {row.label: row.result for row in rows}
    baselines = [by[f"{name} (slo, least-work)"] for name in BASELINES]
    all_beaten = all(beats(shipped, other) for other in baselines)
    singles = [row.result for row in rows if row.fleet != "default"]
    ratio_single = cost_1k(shipped) / min(cost_1k(r) for r in singles)
    fleet_bounds(setup, served=shipped.succeeded)
    ratio_bound = float(shipped.cost) / b.ilp.total if b.ilp.total > 0 else math.inf
    ratio_online = float(shipped.cost) / b.online.total if b.online.total > 0 else math.inf
    summary: dict[str, object] = {
        "cost_ratio_vs_bound": ratio_bound, "cost_ratio_vs_online_bound": ratio_online,
        "sla": shipped.sla_attainment, "cost_ratio_vs_single_type": ratio_single,
        "beats_all_baselines": all_beaten}
    if not args.quick:
        decode_ratio, _ = variant(args, seed=args.seed)
        summary["decode_heavy_cost_ratio_vs_single_type"] = decode_ratio
    write_results(args.results, setup=setup, rows=rows, b=b, summary=summary)
    print(f"wall time {time.perf_counter() - started:.1f} s; results in {args.results}")
    print(f"placement_quality policy=slo cost_ratio_vs_bound={ratio_bound:.4f} "
          f"cost_ratio_vs_online_bound={ratio_online:.4f} sla={shipped.sla_attainment:.4f} "
          f"cost_ratio_vs_single_type={ratio_single:.4f} "
          f"beats_all_baselines={'yes' if all_beaten else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Placement quality on a replayed trace: cost, energy and SLA of each policy against a bound.

Run: ``python -m bench.placement_quality [--trace PATH] [--seed N] [--quick]``.

The trace (any CSV with ``TIMESTAMP, ContextTokens, GeneratedTokens``) is
replayed on the digital twin, split across three deployments of different
sizes (``core.sim.evaluate.STANDARD_MODELS``: tiny, medium and large
workload classes, 60/30/10 % of the requests). Each deployment's latency SLA
is ``--sla-multiplier`` × the 99th-percentile unloaded latency of the trace's
requests on the slowest GPU type able to hold it, rounded up to a bucket
bound of vLLM's latency histogram. The scale factor is chosen from the trace
alone: the default fleet's load in the busiest minute (the fraction of its
capacity that minute's work needs, packed as well as possible; see
``bench.quality_bound``) is ``--peak-load``.

Policies, all with the same capacity-target autoscaler
(``core.sim.evaluate``): the scheduler with the seed's static weights; with
feedback-tuned weights; first-fit, bin-pack, spread and random; and the
tuned scheduler on an all-A100 and on an all-H100 fleet, each just large
enough to carry the same peak load. Tuning never sees the evaluation run: on
the first half of the trace with another seed, the autoscaler's utilization
target is set (the highest that meets the 99 % SLA there, else the one with
the lowest cost per 1,000 inferences that met their SLA), then a hill-climb
over the weight simplex around the seed weights (steps of 0.2, 0.1, then 0.05
between pairs of components) keeps the candidate with the lowest cost per
1,000 in-SLA inferences whose SLA attainment is no lower than the seed
weights' (0.1 point tolerance); it is adopted only if it saves at least 1 %.
A held-out line compares the seed and tuned weights on the second half alone.

Bounds (``bench.quality_bound``): the integer program per minute over the
successful work of the runs on the default fleet (per window and deployment,
the least any of them got done, so one bound is below all of them), and its
LP relaxation; and a placement-only bound
(the cheapest way to hold, each minute, the capacity the tuned run held),
which splits the gap into what the autoscaler holds and what placement adds.
"Beats" a baseline means a lower cost per 1,000 inferences that met their
SLA (misses are paid for but not counted), with SLA attainment no lower than
the baseline's by more than 0.1 point (or at least 99 %). The last line is
machine-readable.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.quality_bound import BoundResult, fleet_model, lower_bound, window_load
from core.adapters.settings_source import load_settings
from core.errors import ValidationError
from core.model import COMPONENTS, Node, SchedulerWeights
from core.placement.baselines import BASELINES
from core.scheduling import build_policy, build_scheduler
from core.settings import Settings
from core.sim import PerfModel, Trace, read_trace
from core.sim.evaluate import (
    Deployment,
    PolicyResult,
    ScalingRule,
    evaluate_policy,
    evaluate_weights,
    standard_deployments,
)
from core.sim.twin import fleet_from_settings, generate_fleet

TRACE = Path(__file__).resolve().parent.parent / "tests" / "data" / \
    "azure_llm_inference_2023_code.csv"
SLA_TARGET = 0.99
SLA_TOLERANCE = 0.001
MIN_SAVING = 0.01


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Setup:
    settings: Settings
    trace: Trace
    perf: PerfModel
    deployments: tuple[Deployment, ...]
    scale: float
    peak_load: float
    duration_s: float
    window_s: float
    fleet: dict[str, int]


def window_work(trace: Trace, *, window_s: float, duration_s: float,
                weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output tokens per window × deployment at scale 1 (expected split)."""
    n = math.ceil(duration_s / window_s)
    keep = trace.offsets_s < n * window_s
    w = (trace.offsets_s[keep] // window_s).astype(np.int64)
    prompt = np.bincount(w, weights=trace.prefill_tokens[keep], minlength=n)
    output = np.bincount(w, weights=trace.decode_tokens[keep], minlength=n)
    share = weights / weights.sum()
    return prompt[:, None] * share[None, :], output[:, None] * share[None, :]


def peak_load(settings: Settings, setup_trace: Trace, *, deployments: Sequence[Deployment],
              fleet: dict[str, int], perf: PerfModel, window_s: float, duration_s: float
              ) -> float:
    """The fleet's load in its busiest window at scale 1."""
    model = fleet_model(settings, deployments=deployments, fleet=fleet, perf=perf,
                        slowdown=perf.co_runner_slowdown)
    weights = np.array([d.traffic_weight for d in deployments])
    prompt, output = window_work(setup_trace, window_s=window_s, duration_s=duration_s,
                                 weights=weights)
    return max(window_load(model, prompt_tokens=prompt[w], output_tokens=output[w],
                           window_s=window_s) for w in range(prompt.shape[0]))


def prepare(args: argparse.Namespace) -> Setup:
    settings = load_settings()
    trace = read_trace(args.trace)
    perf = PerfModel.for_catalog(settings.catalog)
    window = float(args.window)
    span = trace.duration_s + 1e-6
    if args.quick:
        span = min(span, 900.0)
    duration = max(2.0, math.ceil(span / window)) * window
    deployments = standard_deployments(settings, prompt_tokens=trace.prefill_tokens,
                                       output_tokens=trace.decode_tokens, perf=perf,
                                       sla_multiplier=args.sla_multiplier)
    fleet = dict(settings.fleet.nodes_per_type)
    fleet = {t: n * settings.fleet.gpus_per_node for t, n in fleet.items()}
    load_1 = peak_load(settings, trace, deployments=deployments, fleet=fleet, perf=perf,
                       window_s=window, duration_s=duration)
    if not math.isfinite(load_1) or load_1 <= 0:
        raise ValidationError("trace", "has no work the fleet can serve")
    scale = args.peak_load / load_1
    return Setup(settings=settings, trace=trace, perf=perf, deployments=deployments,
                 scale=scale, peak_load=args.peak_load, duration_s=duration, window_s=window,
                 fleet=fleet)


def single_type_fleet(setup: Setup, gpu_type: str) -> tuple[tuple[Node, ...], int]:
    """The smallest fleet of one GPU type that carries the same peak load."""
    s = setup.settings
    load_one = peak_load(s, setup.trace, deployments=setup.deployments, fleet={gpu_type: 1},
                         perf=setup.perf, window_s=setup.window_s, duration_s=setup.duration_s)
    count = max(1, math.ceil(load_one * setup.scale / setup.peak_load - 1e-9))
    nodes = generate_fleet(s.catalog, s.classes, nodes_per_type={gpu_type: count},
                           gpus_per_node=1, occupancy=0.0)
    return nodes, count


# ======================================================================================
# Tuning (first half, another seed)
# ======================================================================================
def neighbours(w: SchedulerWeights, step: float) -> list[SchedulerWeights]:
    """Weight vectors that move ``step`` from one component to another (on the simplex)."""
    base = w.as_dict()
    out = []
    for give in COMPONENTS:
        if base[give] < step - 1e-9:
            continue
        for take in COMPONENTS:
            if take == give:
                continue
            moved = dict(base)
            moved[give] -= step
            moved[take] += step
            out.append(SchedulerWeights.normalized({k: round(v, 6) for k, v in moved.items()}))
    return out


def acceptable(candidate: PolicyResult, reference: PolicyResult) -> bool:
    return candidate.sla_attainment >= reference.sla_attainment - SLA_TOLERANCE


def cost_1k(r: PolicyResult) -> float:
    value = r.cost_per_1k
    return math.inf if value is None else float(value)


def goodput_cost_1k(r: PolicyResult) -> float:
    value = r.cost_per_1k_within_sla
    return math.inf if value is None else float(value)


@dataclass(frozen=True)
class Tuning:
    rule: ScalingRule
    weights: SchedulerWeights
    seed_result: PolicyResult
    best_result: PolicyResult
    candidates: int
    adopted: bool


def tune(setup: Setup, *, seed: int, quick: bool) -> Tuning:
    s = setup.settings
    half = max(setup.window_s, math.floor(setup.duration_s / 2 / setup.window_s) * setup.window_s)

    def score(weights: SchedulerWeights, rule: ScalingRule) -> PolicyResult:
        return evaluate_weights(s, weights, traffic=setup.trace, duration_s=half, seed=seed,
                                trace_scale=setup.scale, deployments=setup.deployments,
                                window_s=setup.window_s, rule=rule, perf=setup.perf)

    seed_weights = s.placement.weights
    grid = (0.3, 0.6) if quick else (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    trials = {u: score(seed_weights, ScalingRule(target_utilization=u)) for u in grid}
    meeting = [u for u, r in trials.items() if r.sla_attainment >= SLA_TARGET]
    target = max(meeting) if meeting else min(trials, key=lambda u: (
        goodput_cost_1k(trials[u]), -u))
    for u, r in trials.items():
        log(f"  tuning: utilization target {u:.1f}: SLA {r.sla_attainment:.4f}, "
            f"${cost_1k(r):.4f}/1k, ${goodput_cost_1k(r):.4f}/1k in SLA")
    rule = ScalingRule(target_utilization=target)
    reference = trials[target]
    best_w, best = seed_weights, reference
    tried = {tuple(seed_weights.as_dict().values())}
    steps = (0.2,) if quick else (0.2, 0.1, 0.05)
    for step in steps:
        improved = True
        while improved:
            improved = False
            for cand in neighbours(best_w, step):
                key = tuple(round(v, 6) for v in cand.as_dict().values())
                if key in tried:
                    continue
                tried.add(key)
                r = score(cand, rule)
                if acceptable(r, reference) and goodput_cost_1k(r) < goodput_cost_1k(best) - 1e-12:
                    best_w, best, improved = cand, r, True
            if quick:
                break
        log(f"  tuning: step {step:.2f} done, {len(tried)} weight vectors tried, best "
            f"${goodput_cost_1k(best):.4f}/1k in SLA at SLA {best.sla_attainment:.4f}")
    adopted = goodput_cost_1k(best) <= goodput_cost_1k(reference) * (1 - MIN_SAVING)
    return Tuning(rule=rule, weights=best_w if adopted else seed_weights,
                  seed_result=reference, best_result=best, candidates=len(tried),
                  adopted=adopted)


# ======================================================================================
# Evaluation
# ======================================================================================
@dataclass(frozen=True)
class Row:
    label: str
    result: PolicyResult
    bound: BoundResult | None = None


def run_all(setup: Setup, tuning: Tuning, *, seed: int) -> list[Row]:
    s = setup.settings
    nodes = fleet_from_settings(s)
    common = {"traffic": setup.trace, "deployments": setup.deployments,
              "duration_s": setup.duration_s, "window_s": setup.window_s, "seed": seed,
              "trace_scale": setup.scale, "rule": tuning.rule, "perf": setup.perf,
              "timer": time.perf_counter}
    policies: list[tuple[str, Callable[[], PolicyResult]]] = [
        ("static (seed weights)", lambda: evaluate_policy(
            s, policy=build_scheduler(s), nodes=nodes, name="static", **common)),
        ("tuned", lambda: evaluate_policy(
            s, policy=build_scheduler(s, weights=tuning.weights), nodes=nodes,
            name="tuned", **common)),
    ]
    for name in BASELINES:
        policies.append((name, lambda name=name: evaluate_policy(
            s, policy=build_policy(name, s, seed=seed), nodes=nodes, name=name, **common)))
    rows = []
    for label, run in policies:
        started = time.perf_counter()
        result = run()
        log(f"  {label}: {time.perf_counter() - started:.1f} s")
        rows.append(Row(label, result))
    # One bound for all: each window's work is the least any policy got done (the bound
    # only grows with work, so it stays below what every policy pays).
    model = fleet_model(s, deployments=setup.deployments, fleet=setup.fleet, perf=setup.perf)
    started = time.perf_counter()
    bound = lower_bound(
        model, prompt_tokens=np.min([r.result.window_prompt_tokens for r in rows], axis=0),
        output_tokens=np.min([r.result.window_output_tokens for r in rows], axis=0),
        window_s=setup.window_s, min_replicas=tuning.rule.min_replicas)
    rows = [replace(row, bound=bound) for row in rows]
    log(f"  bound: {time.perf_counter() - started:.1f} s")
    for gpu_type in s.catalog.names:
        fleet_nodes, count = single_type_fleet(setup, gpu_type)
        started = time.perf_counter()
        result = evaluate_policy(s, policy=build_scheduler(s, weights=tuning.weights),
                                 nodes=fleet_nodes, name=f"all-{gpu_type}", **common)
        log(f"  all-{gpu_type} ({count} GPUs): {time.perf_counter() - started:.1f} s")
        rows.append(Row(f"tuned, all-{gpu_type} fleet ({count} GPUs)", result))
    return rows


def placement_only_bound(setup: Setup, result: PolicyResult, *, min_replicas: int
                         ) -> BoundResult:
    """The bound with a floor: offer at least the capacity ``result`` held in each window."""
    s = setup.settings
    model = fleet_model(s, deployments=setup.deployments, fleet=setup.fleet, perf=setup.perf,
                        slowdown=setup.perf.co_runner_slowdown)
    columns = [s.catalog.names.index(t) for t in model.types]
    return lower_bound(model, prompt_tokens=result.window_prompt_tokens,
                       output_tokens=result.window_output_tokens, window_s=setup.window_s,
                       min_replicas=min_replicas, held=result.window_capacity[:, :, columns])


def beats(a: PolicyResult, b: PolicyResult) -> bool:
    """Cheaper per 1,000 inferences that met their SLA, without a lower SLA attainment."""
    sla_ok = a.sla_attainment >= min(b.sla_attainment - SLA_TOLERANCE, SLA_TARGET)
    return goodput_cost_1k(a) < goodput_cost_1k(b) and sla_ok


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: Sequence[Row]) -> None:
    print(f"{'policy':<34} {'$/1k inf':>9} {'$/1k in SLA':>11} {'J/inf':>7} {'SLA %':>6} "
          f"{'GPUs mean':>9} {'peak':>4} {'decisions/s':>11} {'× bound':>7}")
    for row in rows:
        r = row.result
        ratio = None
        if row.bound is not None and row.bound.total > 0:
            ratio = float(r.cost) / row.bound.total
        print(f"{row.label:<34} {fmt(cost_1k(r), '.4f'):>9} {fmt(goodput_cost_1k(r), '.4f'):>11} "
              f"{fmt(r.energy_per_inference_j, '.1f'):>7} {r.sla_attainment * 100:>6.2f} "
              f"{r.mean_gpus:>9.2f} {r.peak_gpus:>4d} {fmt(r.decisions_per_s, ',.0f'):>11} "
              f"{fmt(ratio, '.3f'):>7}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="at most 15 minutes of the trace and a small search (for tests)")
    parser.add_argument("--peak-load", type=float, default=0.75,
                        help="the default fleet's load in the busiest minute (0.6–0.9)")
    parser.add_argument("--sla-multiplier", type=float, default=4.0)
    parser.add_argument("--window", type=float, default=60.0, help="bound window (s)")
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
    trace = setup.trace
    print(f"trace: {trace.source}, {trace.size} requests over {trace.duration_s / 60:.1f} min; "
          f"replayed {setup.duration_s / 60:.0f} min at ×{setup.scale:.2f} so the default "
          f"fleet ({', '.join(f'{n} {t}' for t, n in setup.fleet.items())}) is "
          f"{setup.peak_load:.0%} loaded in the busiest minute")
    for d in setup.deployments:
        policy = setup.settings.classes.classify(d.memory_gb)
        print(f"deployment {d.name}: {d.memory_gb:g} GB ({policy.workload_class.value}, "
              f"{policy.share_pct} % MPS share), {d.traffic_weight:.0%} of requests, "
              f"{d.priority.value}, SLA {d.sla_s:g} s")
    log(f"tuning on the first half (seed {args.seed + 1}) ...")
    tuning = tune(setup, seed=args.seed + 1, quick=args.quick)
    w = tuning.weights.as_dict()
    print(f"autoscaler: capacity target at {tuning.rule.target_utilization:.0%} utilization "
          f"(chosen on the tuning half), scale-down after {tuning.rule.down_window_s:.0f} s")
    print(f"tuned weights ({tuning.candidates} vectors tried on the first half, seed "
          f"{args.seed + 1}; {'adopted' if tuning.adopted else 'not adopted: < 1 % saving'}): "
          + " ".join(f"{k}={v:.2f}" for k, v in w.items())
          + f"  [tuning half: ${goodput_cost_1k(tuning.seed_result):.4f} → "
          f"${goodput_cost_1k(tuning.best_result):.4f}/1k in SLA, SLA "
          f"{tuning.seed_result.sla_attainment:.4f} → {tuning.best_result.sla_attainment:.4f}]")
    log(f"evaluating on the whole replay (seed {args.seed}) ...")
    rows = run_all(setup, tuning, seed=args.seed)
    print_table(rows)
    by = {row.result.policy: row for row in rows}
    tuned = by["tuned"]
    assert tuned.bound is not None
    b = tuned.bound
    served = tuned.result.succeeded
    per_1k = (lambda dollars: dollars / served * 1000) if served else (lambda _: math.nan)
    same = placement_only_bound(setup, tuned.result, min_replicas=tuning.rule.min_replicas)
    print(f"{'offline bound (ILP, per minute)':<34} {per_1k(b.total):>9.4f} {'':>11} {'':>7} "
          f"{'':>6} {b.mean_gpus:>9.2f}")
    print(f"  its LP relaxation: ${per_1k(b.lp_total):.4f}/1k; windows whose work exceeded "
          f"the fleet: {b.dropped_windows}")
    print(f"  placement-only bound (cheapest way to hold the capacity tuned held, co-runner "
          f"slowdown included): ${per_1k(same.total):.4f}/1k, {same.mean_gpus:.2f} GPUs; "
          f"tuned pays {float(tuned.result.cost) / same.total:.3f}× it, and it is "
          f"{same.total / b.total:.3f}× the bound")

    half = math.floor(setup.duration_s / 2 / setup.window_s) * setup.window_s
    if not tuning.adopted:
        print("held-out second half: not run (the tuned weights are the seed weights)")
    elif half >= setup.window_s and setup.duration_s - half >= setup.window_s:
        held = {}
        for label, weights in (("static", setup.settings.placement.weights),
                               ("tuned", tuning.weights)):
            held[label] = evaluate_weights(
                setup.settings, weights, traffic=setup.trace, trace_offset_s=half,
                duration_s=setup.duration_s - half, seed=args.seed, trace_scale=setup.scale,
                deployments=setup.deployments, window_s=setup.window_s, rule=tuning.rule,
                perf=setup.perf)
        print(f"held-out second half: static ${cost_1k(held['static']):.4f}/1k SLA "
              f"{held['static'].sla_attainment:.4f}; tuned ${cost_1k(held['tuned']):.4f}/1k "
              f"SLA {held['tuned'].sla_attainment:.4f}")

    singles = [row.result for row in rows if row.result.policy.startswith("all-")]
    cheapest_single = min(singles, key=cost_1k)
    baselines = [by[name].result for name in BASELINES]
    all_beaten = all(beats(tuned.result, other) for other in baselines)
    ratio_bound = float(tuned.result.cost) / b.total if b.total > 0 else math.inf
    ratio_single = cost_1k(tuned.result) / cost_1k(cheapest_single)
    print(f"cheaper single-type fleet: {cheapest_single.policy}; wall time "
          f"{time.perf_counter() - started:.1f} s")
    print(f"placement_quality policy=tuned cost_ratio_vs_bound={ratio_bound:.4f} "
          f"sla={tuned.result.sla_attainment:.4f} "
          f"cost_ratio_vs_single_type={ratio_single:.4f} "
          f"beats_all_baselines={'yes' if all_beaten else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Optimization feedback (SPEC §3.7): observed outcomes → calibrated model → weight proposal.

Why: the scheduler's weights and the simulator's performance model are both
guesses until the fleet has run. This module compares what each placement was
predicted to deliver with what it delivers, turns the differences into a
calibration of the performance model, and searches near the active weights for
a vector that the (calibrated) simulator says serves the same traffic more
cheaply without missing more SLAs. It is pure: telemetry, the fleet, the
evaluator and ``now`` come in as arguments; nothing is read or written here.

The steps, each a public function so the controller can log or reuse them:

1. ``observe`` — per placed replica: served QPS; predicted and actual
   throughput capacity (requests/s the slice can serve; the actual one is
   implied by the GPU's measured utilization against the utilization the
   model predicts for the served load); predicted and actual mean latency;
   $/inference, power cost and utilization efficiency.
2. ``calibrate`` — per (GPU type, workload class): the median of the
   actual/predicted ratios, each ratio clipped to a band first (robust to a
   stray reading), with its count; ``calibrated_perf_model`` applies it.
3. ``candidates`` — weight vectors near the active ones: one component gains
   what another loses, by ``max_step`` (and the fractions of it the policy
   names); a second round joins the best improving moves that touch disjoint
   components.
4. ``search`` / ``feedback_step`` — every candidate and the active weights go
   through the injected evaluator (a replay of recent traffic on the
   calibrated twin); the cheapest candidate is proposed only when it lowers
   the simulated cost per 1,000 inferences by ``min_improvement`` and its SLA
   attainment does not fall (by more than ``sla_tolerance``, default 0).
5. ``within_auto_apply_bounds`` — whether a proposal may take effect without
   an approver.

Invariants: every candidate and every proposal is a valid ``SchedulerWeights``
(each component in [0, 1], the sum 1 to within ``SUM_EPS``) and moves no
component by more than ``max_step`` (to within ``SUM_EPS``) from the active
weights; no proposal without the improvement margin or with lower SLA
attainment; equal inputs give equal outputs (deterministic order, no
randomness); the evidence is plain JSON (finite numbers, strings, lists,
dicts) so it can be stored as-is in the ``evidence`` column.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from core.catalog import Catalog
from core.errors import ValidationError
from core.model import COMPONENTS, Node, SchedulerWeights, WorkloadClass
from core.sim.perf_model import PerfModel
from core.telemetry import DeploymentTelemetry, FleetTelemetry
from core.validate import integer, number

EVIDENCE_SCHEMA = 1
# Float slack for the sum-to-1 and step bounds (SchedulerWeights itself allows 1e-6).
SUM_EPS = 1e-9
_MIN_MOVE = 1e-6  # a move smaller than this is no candidate
_THOUSAND = Decimal(1000)
_PICO = Decimal("1e-12")


# ======================================================================================
# Policy
# ======================================================================================
@dataclass(frozen=True)
class FeedbackPolicy:
    """Knobs of the feedback loop; defaults are SPEC §3.7's reference approach."""

    interval_s: float = 3600.0  # how often the controller runs a feedback step
    first_run_after_s: float = 300.0  # a new leader's first run: once it has telemetry
    replay_window_s: float = 86_400.0  # recent traffic replayed per candidate (24 h)
    max_step: float = 0.05  # largest change of any one component per proposal
    step_fractions: tuple[float, ...] = (1.0,)  # moves tried: these fractions of max_step
    combine_top: int = 2  # second round: joins of the best move with up to this many others
    min_improvement: float = 0.02  # relative drop of simulated cost per 1k needed (2 %)
    sla_tolerance: float = 0.0  # SLA attainment may fall by at most this (0: must not fall)
    min_observations: int = 3  # observations with a comparison needed before proposing
    min_key_observations: int = 2  # per (GPU type, class) before its ratio is used
    ratio_clip: tuple[float, float] = (0.25, 4.0)  # actual/predicted ratios clipped into this
    min_utilization: float = 0.02  # below it, utilization is noise: no throughput ratio
    reference_prompt_tokens: float = 176.0  # request size when telemetry has no counters
    reference_output_tokens: float = 15.0
    max_evidence_points: int = 200  # predicted-vs-actual points kept in the evidence
    auto_apply: bool = False
    auto_apply_max_step: float = 0.02  # auto-apply only moves this small …
    auto_apply_min_weight: float = 0.05  # … that leave every component at least this

    def __post_init__(self) -> None:
        _require("feedback.first_run_after_s", self.first_run_after_s, low=0.0)
        for name in ("interval_s", "replay_window_s", "reference_prompt_tokens",
                     "reference_output_tokens"):
            _require(f"feedback.{name}", getattr(self, name), low=0.0, low_open=True)
        for name in ("max_step", "auto_apply_max_step"):
            _require(f"feedback.{name}", getattr(self, name), low=0.0, low_open=True, high=0.5)
        for name in ("min_improvement", "sla_tolerance", "min_utilization",
                     "auto_apply_min_weight"):
            _require(f"feedback.{name}", getattr(self, name), low=0.0, high=1.0)
        if not self.step_fractions:
            raise ValidationError("feedback.step_fractions", "needs at least one fraction")
        for f in self.step_fractions:
            _require("feedback.step_fractions", f, low=0.0, low_open=True, high=1.0)
        for name in ("combine_top", "min_observations", "min_key_observations",
                     "max_evidence_points"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValidationError(f"feedback.{name}", "must be an integer ≥ 0")
        lo, hi = self.ratio_clip
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= 1 <= hi):
            raise ValidationError("feedback.ratio_clip",
                                  "must be (low, high) with 0 < low ≤ 1 ≤ high")
        if self.auto_apply_min_weight * len(COMPONENTS) > 1.0:
            raise ValidationError("feedback.auto_apply_min_weight",
                                  f"must be at most 1/{len(COMPONENTS)}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> FeedbackPolicy:
        """``[feedback]`` settings; unknown keys and bad values name the key."""
        fields = cls.__dataclass_fields__
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in fields:
                raise ValidationError(f"feedback.{key}", "is not a feedback setting")
            default = fields[key].default
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValidationError(f"feedback.{key}", "must be true or false")
                values[key] = value
            elif isinstance(default, tuple):
                if not isinstance(value, list | tuple) or not value:
                    raise ValidationError(f"feedback.{key}", "must be a list of numbers")
                values[key] = tuple(number(f"feedback.{key}", v) for v in value)
            elif isinstance(default, int):
                values[key] = integer(f"feedback.{key}", value)
            else:
                values[key] = number(f"feedback.{key}", value)
        return cls(**values)


def _require(name: str, value: float, *, low: float, low_open: bool = False,
             high: float | None = None) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if low_open else '≥'} {low:g}" + ("" if high is None else f" and ≤ {high:g}")
        raise ValidationError(name, f"must be a number {bound}")


def due(*, last_run_at: datetime | None, now: datetime, policy: FeedbackPolicy) -> bool:
    """Whether a feedback step is due (``interval_s`` after the last one)."""
    return last_run_at is None or now - last_run_at >= timedelta(seconds=policy.interval_s)


# ======================================================================================
# 1. Observations
# ======================================================================================
@dataclass(frozen=True, slots=True)
class PlacedReplica:
    """A placement decision whose replica still holds its slice (from the store)."""

    request_id: str
    model: str
    namespace: str
    node: str
    gpu_index: int
    workload_class: WorkloadClass
    share_pct: int
    weight_version: int | None = None
    decision_id: int | None = None
    latency_sla_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    """One replica: what the performance model predicted against what telemetry shows.

    Throughput is the slice's capacity in requests/s for the requests it serves;
    the actual capacity is implied by the GPU's measured utilization (``None``
    when utilization is too low to tell). Latency is the mean end-to-end
    latency of the deployment the replica serves (what vLLM's histogram
    measures), predicted at the served load; ``None`` when there is no traffic
    or the model predicts saturation.
    """

    owner: str  # the request id for a scheduler decision, else the MPS slice owner
    model: str
    node: str
    gpu_index: int
    gpu_type: str
    workload_class: WorkloadClass
    share_pct: int
    co_runners: int  # other active MPS clients on the GPU
    decision: bool  # placed by the scheduler (False: a replica that was already running)
    weight_version: int | None
    served_qps: float
    predicted_capacity_rps: float
    actual_capacity_rps: float | None
    predicted_latency_ms: float | None
    actual_latency_ms: float | None
    latency_pure: bool  # every replica of the deployment has this (GPU type, class)
    cost_per_hour: Decimal  # GPU-hour price × share + this slice's part of the power
    power_cost_per_hour: Decimal
    cost_per_inference: Decimal | None  # None without traffic
    utilization_efficiency: float  # served / capacity of the slice held (0..1)
    latency_sla_ms: float | None = None

    @property
    def throughput_ratio(self) -> float | None:
        if self.actual_capacity_rps is None or self.predicted_capacity_rps <= 0:
            return None
        return self.actual_capacity_rps / self.predicted_capacity_rps

    @property
    def latency_ratio(self) -> float | None:
        if self.actual_latency_ms is None or not self.predicted_latency_ms:
            return None
        return self.actual_latency_ms / self.predicted_latency_ms

    @property
    def comparable(self) -> bool:
        return self.throughput_ratio is not None or self.latency_ratio is not None


@dataclass(frozen=True, slots=True)
class _Slot:
    """One MPS client on a GPU, with what the model predicts for it."""

    owner: str
    model: str
    workload_class: WorkloadClass | None
    share_pct: int
    qps: float
    prompt: float
    output: float


def observe(*, replicas: Sequence[PlacedReplica], nodes: Sequence[Node],
            telemetry: FleetTelemetry, perf: PerfModel, catalog: Catalog,
            policy: FeedbackPolicy | None = None,
            include_unplaced: bool = True) -> list[Observation]:
    """Predicted against actual for every replica on the fleet.

    ``replicas`` are the scheduler's held placements; a slice on ``nodes``
    that matches none of them (a replica that ran before the scheduler did) is
    observed too when ``include_unplaced``, marked ``decision=False``: it
    calibrates the model as well as any other. A replica whose GPU is missing
    from ``telemetry`` (an unreachable node) is not observed.

    Per-replica served QPS is the deployment's QPS over 1 m divided by its
    running replicas (a Service spreads requests evenly). Request sizes come
    from the deployment's token counters, or the policy's reference request.
    """
    policy = policy or FeedbackPolicy()
    deps = _Deployments(telemetry.deployments, nodes=nodes, policy=policy)
    by_owner = {(r.node, r.gpu_index, r.request_id): r for r in replicas}
    by_model: dict[tuple[str, int, str], list[PlacedReplica]] = defaultdict(list)
    for r in replicas:
        by_model[(r.node, r.gpu_index, r.model)].append(r)
    gpus = {(g.node, g.gpu_index): g for g in telemetry.gpus}

    # Pass 1: every GPU's slots, and per model the predicted latency of each replica.
    plans: list[tuple[Any, str, list[_Slot], list[PlacedReplica | None]]] = []
    latency_by_model: dict[str, list[float | None]] = defaultdict(list)
    keys_by_model: dict[str, set[tuple[str, WorkloadClass | None]]] = defaultdict(set)
    for node in nodes:
        for gpu in node.gpus:
            tel = gpus.get((node.name, gpu.index))
            slots: list[_Slot] = []
            matched: list[PlacedReplica | None] = []
            for sl in gpu.slices:
                model = sl.model or sl.owner
                rep = by_owner.get((node.name, gpu.index, sl.owner))
                if rep is None:
                    pool = by_model.get((node.name, gpu.index, model), [])
                    rep = next((r for r in pool if r not in matched), None)
                wc = sl.workload_class or (rep.workload_class if rep else None)
                prompt, output = deps.request_size(model, rep.namespace if rep else None)
                slots.append(_Slot(sl.owner, model, wc, sl.thread_pct,
                                   deps.per_replica_qps(model, rep.namespace if rep else None),
                                   prompt, output))
                matched.append(rep)
            active = sum(1 for s in slots if s.qps > 0)
            for s in slots:
                keys_by_model[s.model].add((gpu.gpu_type, s.workload_class))
                latency_by_model[s.model].append(
                    _predicted_latency_ms(perf, s, gpu.gpu_type,
                                          co_runners=active - (1 if s.qps > 0 else 0)))
            if tel is not None and slots:
                plans.append((tel, gpu.gpu_type, slots, matched))

    out: list[Observation] = []
    for tel, gpu_type, slots, matched in plans:
        active = sum(1 for s in slots if s.qps > 0)
        rhos = [_predicted_rho(perf, s, gpu_type, active=active) for s in slots]
        predictable = all(r is not None for r in rhos)
        predicted_util = sum(s.share_pct / 100 * min(r or 0.0, 1.0)
                             for s, r in zip(slots, rhos, strict=True))
        ratio = None
        if (predictable and predicted_util >= policy.min_utilization
                and tel.utilization >= policy.min_utilization):
            ratio = predicted_util / tel.utilization
        held_pct = sum(s.share_pct for s in slots)
        price = catalog[gpu_type].price_per_gpu_hour if gpu_type in catalog.types else Decimal(0)
        for s, rep in zip(slots, matched, strict=True):
            if s.workload_class is None or (rep is None and not include_unplaced):
                continue
            co = active - (1 if s.qps > 0 else 0)
            capacity = perf.max_throughput_rps(
                s.workload_class, gpu_type, share=s.share_pct / 100, prompt_tokens=s.prompt,
                output_tokens=s.output, co_runners=co)
            actual_capacity = None if ratio is None else capacity * ratio
            predictions = latency_by_model[s.model]
            pred_latency = (None if not predictions or any(p is None for p in predictions)
                            else statistics.fmean(p for p in predictions if p is not None))
            power_cost = (_dec(tel.power_w * s.share_pct / max(held_pct, 1)) / _THOUSAND
                          * catalog.electricity_per_kwh)
            cost = price * Decimal(min(s.share_pct, 100)) / 100 + power_cost
            per_inference = ((cost / _dec(s.qps * 3600)).quantize(_PICO)
                             if s.qps > 0 else None)
            denominator = actual_capacity or capacity
            out.append(Observation(
                owner=rep.request_id if rep else s.owner, model=s.model, node=tel.node,
                gpu_index=tel.gpu_index, gpu_type=gpu_type, workload_class=s.workload_class,
                share_pct=s.share_pct, co_runners=co, decision=rep is not None,
                weight_version=rep.weight_version if rep else None, served_qps=s.qps,
                predicted_capacity_rps=capacity, actual_capacity_rps=actual_capacity,
                predicted_latency_ms=pred_latency if s.qps > 0 else None,
                actual_latency_ms=deps.mean_latency_ms(s.model, rep.namespace if rep else None)
                if s.qps > 0 else None,
                latency_pure=len(keys_by_model[s.model]) == 1, cost_per_hour=cost,
                power_cost_per_hour=power_cost, cost_per_inference=per_inference,
                utilization_efficiency=min(max(s.qps / denominator, 0.0), 1.0)
                if denominator > 0 else 0.0,
                latency_sla_ms=rep.latency_sla_ms if rep else None))
    return out


class _Deployments:
    """Deployment telemetry looked up by model (and namespace when known)."""

    def __init__(self, deployments: Iterable[DeploymentTelemetry], *, nodes: Sequence[Node],
                 policy: FeedbackPolicy) -> None:
        self.by_model: dict[str, list[DeploymentTelemetry]] = defaultdict(list)
        for d in deployments:
            self.by_model[d.model].append(d)
        self.slices: dict[str, int] = defaultdict(int)
        for n in nodes:
            for g in n.gpus:
                for sl in g.slices:
                    self.slices[sl.model or sl.owner] += 1
        self.policy = policy

    def _of(self, model: str, namespace: str | None) -> list[DeploymentTelemetry]:
        found = self.by_model.get(model, [])
        if namespace is not None:
            exact = [d for d in found if d.namespace == namespace]
            if exact:
                return exact
        return found

    def per_replica_qps(self, model: str, namespace: str | None) -> float:
        found = self._of(model, namespace)
        qps = sum(max(d.qps_1m, 0.0) for d in found)
        replicas = sum(d.replicas for d in found) or self.slices.get(model, 1) or 1
        return qps / replicas if math.isfinite(qps) else 0.0

    def mean_latency_ms(self, model: str, namespace: str | None) -> float | None:
        found = [d for d in self._of(model, namespace)
                 if d.mean_latency_ms is not None and d.qps_1m > 0]
        if not found:
            return None
        weight = sum(d.qps_1m for d in found)
        return sum(d.mean_latency_ms * d.qps_1m for d in found) / weight  # type: ignore[operator]

    def request_size(self, model: str, namespace: str | None) -> tuple[float, float]:
        requests = prompt = success = generated = 0
        for d in self._of(model, namespace):
            if d.counters is not None:
                requests += d.counters.requests_total
                prompt += d.counters.prompt_tokens_total
                success += d.counters.success_total
                generated += d.counters.generation_tokens_total
        p = prompt / requests if requests and prompt else self.policy.reference_prompt_tokens
        o = generated / success if success and generated else self.policy.reference_output_tokens
        return float(p), max(float(o), 1.0)


def _predicted_rho(perf: PerfModel, s: _Slot, gpu_type: str, *, active: int) -> float | None:
    """Fraction of the slice's peak the served load takes, as the model predicts it."""
    if s.workload_class is None or (s.workload_class, gpu_type) not in perf.params:
        return None
    if s.qps <= 0:
        return 0.0
    p = perf.params_for(s.workload_class, gpu_type)
    m = perf.slowdown(active - 1)
    return s.qps * m * p.work_s(s.prompt, s.output, s.share_pct / 100)


def _predicted_latency_ms(perf: PerfModel, s: _Slot, gpu_type: str, *,
                          co_runners: int) -> float | None:
    if s.workload_class is None or (s.workload_class, gpu_type) not in perf.params:
        return None
    point = perf.steady_state(s.workload_class, gpu_type, share=s.share_pct / 100,
                              prompt_tokens=s.prompt, output_tokens=s.output,
                              arrival_rps=s.qps, co_runners=co_runners)
    return point.latency_s * 1000 if math.isfinite(point.latency_s) else None


def outcome_summary(observations: Sequence[Observation]) -> dict[str, Any]:
    """Fleet-level outcomes of the observed replicas (JSON-ready): $/1k, power cost, efficiency."""
    qps = sum(o.served_qps for o in observations)
    cost = sum((o.cost_per_hour for o in observations), Decimal(0))
    power = sum((o.power_cost_per_hour for o in observations), Decimal(0))
    capacity = sum((o.actual_capacity_rps or o.predicted_capacity_rps) for o in observations)
    by_type: dict[str, list[Observation]] = defaultdict(list)
    for o in observations:
        by_type[o.gpu_type].append(o)

    def per_1k(c: Decimal, q: float) -> float | None:
        return None if q <= 0 else _num(c / _dec(q * 3.6))  # (c $/h) / (q × 3600 / 1000)

    return {
        "replicas": len(observations),
        "served_qps": _num(qps),
        "cost_per_hour": _num(cost),
        "power_cost_per_hour": _num(power),
        "cost_per_1k": per_1k(cost, qps),
        "utilization_efficiency": _num(qps / capacity) if capacity > 0 else None,
        "by_gpu_type": [
            {"gpu_type": t, "replicas": len(os_),
             "served_qps": _num(sum(o.served_qps for o in os_)),
             "cost_per_1k": per_1k(sum((o.cost_per_hour for o in os_), Decimal(0)),
                                   sum(o.served_qps for o in os_)),
             "power_cost_per_hour": _num(sum((o.power_cost_per_hour for o in os_), Decimal(0)))}
            for t, os_ in sorted(by_type.items())],
    }


# ======================================================================================
# 2. Calibration
# ======================================================================================
@dataclass(frozen=True, slots=True)
class CalibrationEntry:
    """Actual/predicted ratios for one (GPU type, workload class)."""

    gpu_type: str
    workload_class: WorkloadClass
    throughput_ratio: float | None  # median actual/predicted capacity (clipped)
    throughput_n: int
    latency_ratio: float | None  # median actual/predicted latency (clipped)
    latency_n: int


@dataclass(frozen=True, slots=True)
class Calibration:
    entries: tuple[CalibrationEntry, ...] = ()
    min_key_observations: int = 2

    def entry(self, gpu_type: str, workload_class: WorkloadClass) -> CalibrationEntry | None:
        return next((e for e in self.entries
                     if e.gpu_type == gpu_type and e.workload_class == workload_class), None)

    def time_scale(self, gpu_type: str, workload_class: WorkloadClass) -> float:
        """Multiplier on the model's service times for this key (1.0 when unknown).

        Capacity is what cost depends on, so its ratio wins (times scale by its
        inverse); the latency ratio stands in when utilization was too low to
        measure capacity.
        """
        e = self.entry(gpu_type, workload_class)
        if e is None:
            return 1.0
        if e.throughput_ratio is not None and e.throughput_n >= self.min_key_observations:
            return 1.0 / e.throughput_ratio
        if e.latency_ratio is not None and e.latency_n >= self.min_key_observations:
            return e.latency_ratio
        return 1.0

    def as_rows(self) -> list[dict[str, Any]]:
        return [{"gpu_type": e.gpu_type, "workload_class": e.workload_class.value,
                 "throughput_ratio": _num(e.throughput_ratio, 4), "throughput_n": e.throughput_n,
                 "latency_ratio": _num(e.latency_ratio, 4), "latency_n": e.latency_n,
                 "time_scale": _num(self.time_scale(e.gpu_type, e.workload_class), 4)}
                for e in self.entries]


def calibrate(observations: Iterable[Observation],
              policy: FeedbackPolicy | None = None) -> Calibration:
    """Median clipped actual/predicted ratios per (GPU type, workload class), with counts.

    Latency ratios count only where every replica of the deployment sits on
    the same (GPU type, class), so a mixed deployment does not smear one key
    into another.
    """
    policy = policy or FeedbackPolicy()
    lo, hi = policy.ratio_clip
    tput: dict[tuple[str, WorkloadClass], list[float]] = defaultdict(list)
    lat: dict[tuple[str, WorkloadClass], list[float]] = defaultdict(list)
    keys: set[tuple[str, WorkloadClass]] = set()
    for o in observations:
        key = (o.gpu_type, o.workload_class)
        keys.add(key)
        r = o.throughput_ratio
        if r is not None and math.isfinite(r) and r > 0:
            tput[key].append(min(max(r, lo), hi))
        r = o.latency_ratio
        if o.latency_pure and r is not None and math.isfinite(r) and r > 0:
            lat[key].append(min(max(r, lo), hi))
    order = {wc: i for i, wc in enumerate(WorkloadClass)}
    entries = tuple(
        CalibrationEntry(t, wc, statistics.median(tput[(t, wc)]) if tput[(t, wc)] else None,
                         len(tput[(t, wc)]),
                         statistics.median(lat[(t, wc)]) if lat[(t, wc)] else None,
                         len(lat[(t, wc)]))
        for t, wc in sorted(keys, key=lambda k: (k[0], order[k[1]])))
    return Calibration(entries, min_key_observations=policy.min_key_observations)


def calibrated_perf_model(perf: PerfModel, calibration: Calibration) -> PerfModel:
    """``perf`` with each (class, GPU type)'s times scaled by the calibration's ``time_scale``."""
    params = {}
    for (wc, gpu_type), p in perf.params.items():
        scale = calibration.time_scale(gpu_type, wc)
        params[(wc, gpu_type)] = p if scale == 1.0 else p.scaled(
            decode_speedup=1.0 / scale, prefill_speedup=1.0 / scale)
    return PerfModel(params=params, co_runner_slowdown=perf.co_runner_slowdown)


# ======================================================================================
# 3. Candidates
# ======================================================================================
@dataclass(frozen=True, slots=True)
class Candidate:
    """A weight vector near the active one, and the moves that made it."""

    weights: SchedulerWeights
    moves: tuple[tuple[str, float], ...]  # (component, change), components in COMPONENTS order

    @property
    def label(self) -> str:
        return ", ".join(f"{c} {d:+.3f}" for c, d in self.moves) or "active"

    @property
    def max_move(self) -> float:
        return max((abs(d) for _, d in self.moves), default=0.0)


def max_move(a: SchedulerWeights, b: SchedulerWeights) -> float:
    """The largest change of any one component between two weight vectors."""
    da, db = a.as_dict(), b.as_dict()
    return max(abs(da[c] - db[c]) for c in COMPONENTS)


def shifted(active: SchedulerWeights, moves: Mapping[str, float], *,
            max_step: float) -> Candidate | None:
    """``active`` with ``moves`` applied, or ``None`` when that leaves the bounds.

    Moves must net to zero. The float remainder of the sum is put on an
    unmoved component (the one with the most room), so the result sums to 1 to
    within ``SUM_EPS``, every component stays in [0, 1] and none moves by more
    than ``max_step``.
    """
    if any(c not in COMPONENTS for c in moves):
        raise ValidationError("weights", "unknown score component in a move")
    if abs(math.fsum(moves.values())) > SUM_EPS:
        return None  # the moves do not net to zero
    base = active.as_dict()
    values = {c: base[c] + moves.get(c, 0.0) for c in COMPONENTS}
    if any(v < -SUM_EPS or v > 1.0 + SUM_EPS for v in values.values()):
        return None
    values = {c: min(max(v, 0.0), 1.0) for c, v in values.items()}
    # The remainder (float rounding, plus whatever the active weights were off 1 by) goes
    # on an unmoved component when there is one, so moved ones stay within the step.
    untouched = [c for c in COMPONENTS if abs(moves.get(c, 0.0)) < _MIN_MOVE] or list(COMPONENTS)
    fix = max(untouched, key=lambda c: min(values[c], 1.0 - values[c]))
    values[fix] = min(max(values[fix] + 1.0 - math.fsum(values.values()), 0.0), 1.0)
    if abs(math.fsum(values.values()) - 1.0) > SUM_EPS:
        return None
    delta = {c: values[c] - base[c] for c in COMPONENTS}
    largest = max(abs(d) for d in delta.values())
    if largest > max_step + SUM_EPS or largest < _MIN_MOVE:
        return None
    weights = SchedulerWeights(**values)
    return Candidate(weights, tuple((c, round(delta[c], 12)) for c in COMPONENTS
                                    if abs(delta[c]) >= _MIN_MOVE))


def candidates(active: SchedulerWeights, policy: FeedbackPolicy | None = None
               ) -> list[Candidate]:
    """First-round candidates: move ``step`` from one component to another, every ordered pair.

    ``step`` is each of ``step_fractions × max_step``, shrunk where the donor
    has less than that or the receiver would pass 1. Deterministic order;
    duplicates dropped.
    """
    policy = policy or FeedbackPolicy()
    base = active.as_dict()
    seen: set[tuple[float, ...]] = set()
    out: list[Candidate] = []
    for fraction in policy.step_fractions:
        step = policy.max_step * fraction
        for gain in COMPONENTS:
            for give in COMPONENTS:
                if gain == give:
                    continue
                amount = min(step, base[give], 1.0 - base[gain])
                if amount < _MIN_MOVE:
                    continue
                cand = shifted(active, {gain: amount, give: -amount}, max_step=policy.max_step)
                if cand is None:
                    continue
                key = tuple(round(cand.weights.as_dict()[c], 9) for c in COMPONENTS)
                if key not in seen:
                    seen.add(key)
                    out.append(cand)
    return out


def combined(active: SchedulerWeights, moves: Sequence[Candidate], *,
             policy: FeedbackPolicy) -> list[Candidate]:
    """Second-round candidates: the first move joined with each later one on other components."""
    if not moves:
        return []
    first, out = moves[0], []
    used = {c for c, _ in first.moves}
    for other in moves[1:]:
        if len(out) >= policy.combine_top:
            break
        if used & {c for c, _ in other.moves}:
            continue
        joined = dict(first.moves) | dict(other.moves)
        cand = shifted(active, joined, max_step=policy.max_step)
        if cand is not None:
            out.append(cand)
    return out


# ======================================================================================
# 4. Search and proposal
# ======================================================================================
@dataclass(frozen=True, slots=True)
class CandidateScore:
    """What the evaluator (a replay on the calibrated twin) says of one weight vector."""

    cost_per_1k: Decimal  # US dollars per 1,000 inferences served
    sla_attainment: float  # fraction of requests within their SLA, 0..1
    energy_per_inference_j: float | None = None
    inferences: int | None = None

    def __post_init__(self) -> None:
        try:
            cost = self.cost_per_1k if isinstance(self.cost_per_1k, Decimal) else \
                Decimal(str(float(self.cost_per_1k)))
        except (InvalidOperation, TypeError, ValueError):
            raise ValidationError("cost_per_1k", "must be a number") from None
        if not cost.is_finite() or cost < 0:
            raise ValidationError("cost_per_1k", "must be a finite number ≥ 0")
        object.__setattr__(self, "cost_per_1k", cost)
        s = self.sla_attainment
        if not isinstance(s, int | float) or not math.isfinite(s) or not 0.0 <= s <= 1.0:
            raise ValidationError("sla_attainment", "must be within 0..1")


Evaluator = Callable[[SchedulerWeights], CandidateScore]


@dataclass(frozen=True, slots=True)
class Scored:
    candidate: Candidate
    score: CandidateScore
    improvement: float  # relative drop of cost per 1k against the active weights
    eligible: bool  # improvement ≥ margin and SLA attainment not lower
    round: int  # 1: single moves, 2: joined moves


@dataclass(frozen=True, slots=True)
class SearchResult:
    baseline: CandidateScore  # the active weights on the same replay
    scored: tuple[Scored, ...]
    chosen: Scored | None
    why_not: str = ""  # when nothing is chosen, the reason in one line


def search(active: SchedulerWeights, evaluate: Evaluator, *,
           policy: FeedbackPolicy | None = None) -> SearchResult:
    """Score the active weights and every candidate; pick the cheapest eligible one."""
    policy = policy or FeedbackPolicy()
    baseline = evaluate(active)
    scored = [_score(c, evaluate(c.weights), baseline=baseline, policy=policy, round_=1)
              for c in candidates(active, policy)]
    improving = sorted((s for s in scored if s.eligible), key=_rank)
    if policy.combine_top and improving:
        for c in combined(active, [s.candidate for s in improving], policy=policy):
            scored.append(_score(c, evaluate(c.weights), baseline=baseline, policy=policy,
                                 round_=2))
    eligible = sorted((s for s in scored if s.eligible), key=_rank)
    chosen = eligible[0] if eligible and baseline.cost_per_1k > 0 else None
    why = ""
    if chosen is None:
        if baseline.cost_per_1k <= 0:
            why = "the replay served no inferences at a cost, so there is nothing to lower"
        elif not scored:
            why = "no candidate weights within the step bound"
        else:
            best = max(scored, key=lambda s: s.improvement)
            why = (f"no candidate lowers the simulated cost per 1k inferences by "
                   f"{policy.min_improvement:.1%} without lowering SLA attainment "
                   f"(best: {best.improvement:+.2%}, {best.candidate.label})")
    return SearchResult(baseline, tuple(scored), chosen, why)


def _score(c: Candidate, score: CandidateScore, *, baseline: CandidateScore,
           policy: FeedbackPolicy, round_: int) -> Scored:
    base = baseline.cost_per_1k
    improvement = float((base - score.cost_per_1k) / base) if base > 0 else 0.0
    sla_ok = score.sla_attainment >= baseline.sla_attainment - policy.sla_tolerance
    eligible = base > 0 and sla_ok and improvement >= policy.min_improvement
    return Scored(c, score, improvement, eligible, round_)


def _rank(s: Scored) -> tuple[float, float, float, str]:
    return (-s.improvement, -s.score.sla_attainment, s.candidate.max_move, s.candidate.label)


@dataclass(frozen=True, slots=True)
class Proposal:
    """New weights with the reason and the evidence an approver reads."""

    weights: SchedulerWeights
    reason: str
    evidence: dict[str, Any] = field(repr=False)
    based_on: SchedulerWeights = field(repr=False)
    based_on_version: int | None
    improvement: float
    baseline: CandidateScore
    expected: CandidateScore


@dataclass(frozen=True, slots=True)
class FeedbackOutcome:
    """One feedback run: the proposal (or None) and, without one, why not."""

    proposal: Proposal | None
    why_not: str
    result: SearchResult | None = None


def run_feedback(*, active: SchedulerWeights, observations: Sequence[Observation],
                 evaluate: Evaluator, policy: FeedbackPolicy | None = None, now: datetime,
                 active_version: int | None = None,
                 calibration: Calibration | None = None) -> FeedbackOutcome:
    """One run of the loop: a proposal with its evidence, or the reason there is none.

    ``evaluate`` replays recent traffic under given weights (build it on
    ``calibrated_perf_model(perf, calibrate(observations, policy))`` and pass
    that ``calibration`` here so the evidence shows the one used). No proposal
    when fewer than ``min_observations`` observations compare prediction with
    outcome, or when no candidate clears the margin.
    """
    policy = policy or FeedbackPolicy()
    usable = [o for o in observations if o.comparable]
    if len(usable) < policy.min_observations:
        return FeedbackOutcome(None, f"{len(usable)} observations compare prediction with "
                                     f"outcome; {policy.min_observations} are needed")
    calibration = calibration or calibrate(observations, policy)
    result = search(active, evaluate, policy=policy)
    if result.chosen is None:
        return FeedbackOutcome(None, result.why_not, result)
    chosen = result.chosen
    evidence = build_evidence(active=active, active_version=active_version, result=result,
                              calibration=calibration, observations=observations,
                              policy=policy, now=now)
    base, new = result.baseline, chosen.score
    reason = (f"Simulated cost per 1k inferences {_money(base.cost_per_1k)} → "
              f"{_money(new.cost_per_1k)} ({-chosen.improvement:+.1%}), SLA attainment "
              f"{base.sla_attainment:.2%} → {new.sla_attainment:.2%}: "
              f"{chosen.candidate.label}. Calibrated on {len(usable)} observations.")
    proposal = Proposal(weights=chosen.candidate.weights, reason=reason, evidence=evidence,
                        based_on=active, based_on_version=active_version,
                        improvement=chosen.improvement, baseline=base, expected=new)
    return FeedbackOutcome(proposal, "", result)


def feedback_step(*, active: SchedulerWeights, observations: Sequence[Observation],
                  evaluate: Evaluator, policy: FeedbackPolicy | None = None, now: datetime,
                  active_version: int | None = None,
                  calibration: Calibration | None = None) -> Proposal | None:
    """``run_feedback``'s proposal alone."""
    return run_feedback(active=active, observations=observations, evaluate=evaluate,
                        policy=policy, now=now, active_version=active_version,
                        calibration=calibration).proposal


def build_evidence(*, active: SchedulerWeights, active_version: int | None,
                   result: SearchResult, calibration: Calibration,
                   observations: Sequence[Observation], policy: FeedbackPolicy,
                   now: datetime) -> dict[str, Any]:
    """The JSON stored with a proposal (version ``EVIDENCE_SCHEMA``); its shape:

    ``{"schema", "generated_at", "method", "based_on_version", "active", "proposed",
    "change", "policy", "summary", "calibration": [row…], "observations": {"count",
    "comparable", "shown", "points": [point…]}, "outcomes", "candidates": [row…]}``
    """
    chosen = result.chosen
    proposed = chosen.candidate.weights if chosen else active
    base = result.baseline
    points = sorted(observations, key=lambda o: (not o.decision, -o.served_qps, o.owner))
    shown = points[: policy.max_evidence_points]
    rows = [{"label": "active", "baseline": True, "chosen": False, "round": 0,
             "weights": _weights(active), "cost_per_1k": _num(base.cost_per_1k, 8),
             "sla_attainment": _num(base.sla_attainment, 6), "improvement": 0.0,
             "eligible": False,
             "energy_per_inference_j": _num(base.energy_per_inference_j, 4)}]
    rows += [{"label": s.candidate.label, "baseline": False, "chosen": s is chosen,
              "round": s.round, "weights": _weights(s.candidate.weights),
              "cost_per_1k": _num(s.score.cost_per_1k, 8),
              "sla_attainment": _num(s.score.sla_attainment, 6),
              "improvement": _num(s.improvement, 6), "eligible": s.eligible,
              "energy_per_inference_j": _num(s.score.energy_per_inference_j, 4)}
             for s in result.scored]
    return {
        "schema": EVIDENCE_SCHEMA,
        "generated_at": now.isoformat(),
        "method": ("actual/predicted ratios per (GPU type, workload class) calibrate the "
                   "performance model; recent traffic is replayed on the calibrated twin "
                   "under candidate weights near the active ones"),
        "based_on_version": active_version,
        "active": _weights(active),
        "proposed": _weights(proposed),
        "change": {c: _num(proposed.as_dict()[c] - active.as_dict()[c], 9) for c in COMPONENTS},
        "policy": {"max_step": policy.max_step, "min_improvement": policy.min_improvement,
                   "sla_tolerance": policy.sla_tolerance,
                   "replay_window_s": policy.replay_window_s},
        "summary": {
            "baseline_cost_per_1k": _num(base.cost_per_1k, 8),
            "proposed_cost_per_1k": _num(chosen.score.cost_per_1k, 8) if chosen else None,
            "improvement": _num(chosen.improvement, 6) if chosen else None,
            "baseline_sla_attainment": _num(base.sla_attainment, 6),
            "proposed_sla_attainment": _num(chosen.score.sla_attainment, 6) if chosen else None,
            "candidates": len(result.scored),
            "why_not": result.why_not,
        },
        "calibration": calibration.as_rows(),
        "observations": {
            "count": len(observations),
            "comparable": sum(1 for o in observations if o.comparable),
            "shown": len(shown),
            "points": [_point(o) for o in shown],
        },
        "outcomes": outcome_summary(observations),
        "candidates": rows,
    }


def _point(o: Observation) -> dict[str, Any]:
    return {
        "owner": o.owner, "model": o.model, "gpu": f"{o.node}/gpu{o.gpu_index}",
        "gpu_type": o.gpu_type, "workload_class": o.workload_class.value,
        "share_pct": o.share_pct, "decision": o.decision, "weight_version": o.weight_version,
        "served_qps": _num(o.served_qps, 4),
        "predicted_capacity_rps": _num(o.predicted_capacity_rps, 4),
        "actual_capacity_rps": _num(o.actual_capacity_rps, 4),
        "predicted_latency_ms": _num(o.predicted_latency_ms, 2),
        "actual_latency_ms": _num(o.actual_latency_ms, 2),
        "cost_per_1k": _num(o.cost_per_inference * _THOUSAND, 8)
        if o.cost_per_inference is not None else None,
        "power_cost_per_hour": _num(o.power_cost_per_hour, 6),
        "utilization_efficiency": _num(o.utilization_efficiency, 4),
    }


# ======================================================================================
# 5. Auto-apply
# ======================================================================================
def auto_apply_violations(active: SchedulerWeights, proposal: Proposal | SchedulerWeights, *,
                          policy: FeedbackPolicy) -> list[str]:
    """Why a proposal may not take effect without an approver (empty: it may)."""
    weights = proposal.weights if isinstance(proposal, Proposal) else proposal
    out = []
    if not policy.auto_apply:
        out.append("auto-apply is off")
    step = min(policy.auto_apply_max_step, policy.max_step)
    moved = max_move(active, weights)
    if moved > step + SUM_EPS:
        out.append(f"a component moves {moved:.3f} (auto-apply allows {step:.3f})")
    low = [c for c, v in weights.as_dict().items() if v < policy.auto_apply_min_weight - SUM_EPS]
    if low:
        out.append(f"{', '.join(low)} would fall below {policy.auto_apply_min_weight:.2f}")
    if isinstance(proposal, Proposal):
        if proposal.based_on != active:
            out.append("the active weights changed since the proposal was made")
        if proposal.expected.sla_attainment < proposal.baseline.sla_attainment:
            out.append("simulated SLA attainment would fall")
        if proposal.improvement < policy.min_improvement:
            out.append("the simulated improvement is below the margin")
    return out


def within_auto_apply_bounds(active: SchedulerWeights, proposal: Proposal | SchedulerWeights,
                             *, policy: FeedbackPolicy) -> bool:
    """Whether ``proposal`` may take effect without an approver (SPEC §3.7).

    ``active`` is the version active *now*: a proposal made against other
    weights is refused, and the step is measured from the current weights.
    """
    return not auto_apply_violations(active, proposal, policy=policy)


# ======================================================================================
# JSON helpers
# ======================================================================================
def _dec(x: float) -> Decimal:
    return Decimal(f"{x:.9f}") if math.isfinite(x) else Decimal(0)


def _num(x: float | Decimal | None, digits: int = 6) -> float | None:
    """A JSON-safe number: rounded, ``None`` for missing or non-finite values."""
    if x is None:
        return None
    v = float(x)
    return round(v, digits) if math.isfinite(v) else None


def _weights(w: SchedulerWeights) -> dict[str, float]:
    return {c: round(v, 9) for c, v in w.as_dict().items()}


def _money(x: Decimal) -> str:
    return f"${x:.4f}" if x >= Decimal("0.01") else f"${x:.6f}"

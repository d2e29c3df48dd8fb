"""Step 1 of the feedback loop: what each placed replica was predicted to deliver against
what telemetry shows it delivers.

Why: calibration and the weight search both start from these observations;
they are the only place where the performance model meets the fleet.

Invariants: pure (nodes, telemetry, the model and the catalog are arguments);
one ``Observation`` per MPS slice whose GPU has telemetry and whose workload
class is known, in node/GPU/slice order; a ratio is ``None`` rather than a
guess when the reading cannot support it (utilization below
``min_utilization``, no traffic, a predicted saturation); every cost is a
``Decimal``, a slice's part of its GPU under ``core.cost``'s one formula
(its thread share of the GPU-hour price and of the GPU's power).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from core.catalog import Catalog
from core.cost import slice_costs
from core.feedback.policy import FeedbackPolicy
from core.feedback.wire import dec
from core.model import Node, WorkloadClass
from core.sim.perf_model import PerfModel
from core.telemetry import DeploymentTelemetry, FleetTelemetry

_PICO = Decimal("1e-12")


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
    cost_per_hour: Decimal  # its part of its GPU (core.cost): share of price and power
    power_cost_per_hour: Decimal  # the power part of it
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

    parts = {(p.node, p.gpu_index, p.slice_index): p
             for p in slice_costs(telemetry, nodes, catalog) if not p.is_idle}
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
        for i, (s, rep) in enumerate(zip(slots, matched, strict=True)):
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
            part = parts[(tel.node, tel.gpu_index, i)]
            power_cost, cost = part.energy_cost_per_hour, part.cost_per_hour
            per_inference = ((cost / dec(s.qps * 3600)).quantize(_PICO)
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

"""What a placement-quality replay serves: model deployments, their SLAs, the scaling rule.

Why: the feedback loop and the placement-quality bench describe the workload
the same way (``Deployment``), size SLAs from unloaded latency on the slowest
GPU type able to hold a model, and scale replicas with one capacity-target
rule (``ScalingRule``: its bounds and control interval hold for every
autoscaler under evaluation), and state TTFT/TPOT objectives
(``latency_objectives``) the way LLM-serving users do.

Invariants: a deployment's traffic weight is ≥ 0 and its SLA > 0; an SLA
sized here is a bound of vLLM's latency histogram (so attainment reads
exactly from it); the scaling rule's windows and intervals are finite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from core.autoscale import AutoscalePolicy
from core.errors import ValidationError
from core.model import Node, PlacementRequest, Priority, WorkloadClass
from core.settings import Settings
from core.sim.perf_model import PerfModel
from core.slo_settings import LatencySlo
from core.telemetry import E2E_LATENCY_BUCKETS_S, ITL_BUCKETS_S, TTFT_BUCKETS_S


@dataclass(frozen=True, slots=True)
class Deployment:
    """A model deployment whose replicas the harness scales and the policy places."""

    name: str  # model name: a DNS label, unique among the deployments
    memory_gb: float
    traffic_weight: float  # relative share of the requests
    sla_s: float  # end-to-end latency SLA
    priority: Priority = Priority.MEDIUM
    namespace: str = "default"
    # Latency objectives (TTFT/TPOT at quantiles); None: the e2e SLA alone (``slo``).
    objectives: LatencySlo | None = None
    # Request sizes at the objectives' quantile (the traffic's own), for the autoscaler.
    tail_prompt_tokens: float | None = None
    tail_output_tokens: float | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def slo(self) -> LatencySlo:
        """What a request must meet: the objectives, or the e2e SLA at p99."""
        return self.objectives or LatencySlo(ttft_s=None, tpot_s=None, e2e_s=self.sla_s)

    def __post_init__(self) -> None:
        if not math.isfinite(self.traffic_weight) or self.traffic_weight < 0:
            raise ValidationError(f"deployments.{self.name}.traffic_weight", "must be ≥ 0")
        if not math.isfinite(self.sla_s) or self.sla_s <= 0:
            raise ValidationError(f"deployments.{self.name}.sla_s", "must be > 0")

    def request(self, request_id: str) -> PlacementRequest:
        return PlacementRequest(model_name=self.name, model_memory_gb=self.memory_gb,
                                priority=self.priority, latency_sla_ms=self.sla_s * 1000.0,
                                namespace=self.namespace, request_id=request_id)


@dataclass(frozen=True, slots=True)
class ScalingRule:
    """Replica bounds and the control interval of every evaluation, and the knobs of the
    capacity-target rule (``autoscaler="target"``; see ``core.sim.evaluate``)."""

    target_utilization: float = 0.6
    rate_window_s: float = 30.0
    drain_s: float = 60.0
    up_window_s: float = 0.0
    down_window_s: float = AutoscalePolicy().down_stabilization_s
    min_replicas: int = max(1, AutoscalePolicy().min_replicas)
    max_replicas: int = 64
    control_interval_s: float = 15.0

    def __post_init__(self) -> None:
        if not 0 < self.target_utilization <= 1:
            raise ValidationError("scaling.target_utilization", "must be within (0, 1]")
        for name in ("rate_window_s", "drain_s", "control_interval_s"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValidationError(f"scaling.{name}", "must be a number > 0")
        for name in ("up_window_s", "down_window_s"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValidationError(f"scaling.{name}", "must be a number ≥ 0")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValidationError("scaling.max_replicas", "must be ≥ min_replicas ≥ 1")


def unloaded_latency_s(perf: PerfModel, workload_class: WorkloadClass, gpu_type: str, *,
                       share: float, prompt_tokens: np.ndarray, output_tokens: np.ndarray
                       ) -> np.ndarray:
    """End-to-end latency of each request alone on an idle slice (no queue, batch 1)."""
    p = perf.params_for(workload_class, gpu_type)
    prompt = np.asarray(prompt_tokens, dtype=np.float64)
    output = np.asarray(output_tokens, dtype=np.float64)
    return prompt * p.kp / (share + p.k4) + np.maximum(output, 1.0) * p.iteration_s(1.0, share)


def latency_sla_s(settings: Settings, perf: PerfModel, *, memory_gb: float,
                  prompt_tokens: np.ndarray, output_tokens: np.ndarray,
                  quantile: float = 0.99, multiplier: float = 2.0) -> float:
    """A deployment's SLA: ``multiplier`` × the ``quantile`` of unloaded latency on the
    slowest GPU type able to hold it, rounded up to the next latency-histogram bound
    (so attainment is read exactly from the histogram vLLM exports)."""
    policy = settings.classes.classify(memory_gb)
    need_mib = memory_gb * 1024
    types = [t for t in settings.catalog.names
             if (not policy.allowed_types or t in policy.allowed_types)
             and settings.catalog[t].memory_mib >= need_mib]
    if not types:
        raise ValidationError("memory_gb", f"{memory_gb:g} GB fits no GPU type in the catalog")
    if len(prompt_tokens) == 0:
        raise ValidationError("traffic", "needs at least one request to size an SLA")
    worst = max(float(np.quantile(unloaded_latency_s(
        perf, policy.workload_class, t, share=policy.share_pct / 100.0,
        prompt_tokens=prompt_tokens, output_tokens=output_tokens), quantile)) for t in types)
    raw = multiplier * worst
    return next((b for b in E2E_LATENCY_BUCKETS_S if b >= raw - 1e-12), raw)


def latency_objectives(settings: Settings, perf: PerfModel, *, memory_gb: float,
                       prompt_tokens: np.ndarray, output_tokens: np.ndarray,
                       quantile: float = 0.99, multiplier: float = 4.0) -> LatencySlo:
    """TTFT and TPOT objectives at ``quantile``: ``multiplier`` × the unloaded figure on the
    slowest GPU type able to hold the model (TTFT of the ``quantile`` prompt; TPOT of a
    lone sequence), each rounded up to a bound of vLLM's histogram for it."""
    policy = settings.classes.classify(memory_gb)
    need_mib = memory_gb * 1024
    types = [t for t in settings.catalog.names
             if (not policy.allowed_types or t in policy.allowed_types)
             and settings.catalog[t].memory_mib >= need_mib]
    if not types:
        raise ValidationError("memory_gb", f"{memory_gb:g} GB fits no GPU type in the catalog")
    if len(prompt_tokens) == 0:
        raise ValidationError("traffic", "needs at least one request to size objectives")
    share = policy.share_pct / 100.0
    tail = float(np.quantile(np.asarray(prompt_tokens, dtype=np.float64), quantile))
    ttft = tpot = 0.0
    for t in types:
        p = perf.params_for(policy.workload_class, t)
        step = p.iteration_s(1.0, share)
        ttft = max(ttft, p.prefill_s(tail, share) + step)
        tpot = max(tpot, step)
    ttft_s = next((b for b in TTFT_BUCKETS_S if b >= multiplier * ttft - 1e-12),
                  multiplier * ttft)
    tpot_s = next((b for b in ITL_BUCKETS_S if b >= multiplier * tpot - 1e-12),
                  multiplier * tpot)
    return LatencySlo(ttft_s=ttft_s, ttft_quantile=quantile, tpot_s=tpot_s,
                      tpot_quantile=quantile, e2e_s=None)


# Three deployments of different sizes, one per workload class (name, GB, share of the
# requests, priority): a ~1.5 B completion model in fp16, a 7 B model in fp16 and a 70 B
# model quantized to 4 bits (AWQ), the kind of mix a code-assistant service runs.
STANDARD_MODELS: tuple[tuple[str, float, float, Priority], ...] = (
    ("coder-1b5", 3.0, 0.6, Priority.MEDIUM),
    ("coder-7b", 14.0, 0.3, Priority.MEDIUM),
    ("coder-70b-awq", 38.0, 0.1, Priority.HIGH),
)


def standard_deployments(settings: Settings, *, prompt_tokens: np.ndarray,
                         output_tokens: np.ndarray, perf: PerfModel | None = None,
                         sla_multiplier: float = 2.0, token_objectives: bool = False,
                         quantile: float = 0.99) -> tuple[Deployment, ...]:
    """``STANDARD_MODELS`` with SLAs sized by ``latency_sla_s`` on the given request sizes;
    with ``token_objectives`` also TTFT/TPOT objectives (``latency_objectives``, the same
    multiplier), which then are what a request must meet, and the sizes at ``quantile``."""
    perf = perf or PerfModel.for_catalog(settings.catalog)
    tail_p = float(np.quantile(prompt_tokens, quantile)) if len(prompt_tokens) else None
    tail_o = float(np.quantile(output_tokens, quantile)) if len(output_tokens) else None
    return tuple(
        Deployment(name=name, memory_gb=gb, traffic_weight=weight, priority=priority,
                   sla_s=latency_sla_s(settings, perf, memory_gb=gb, prompt_tokens=prompt_tokens,
                                       output_tokens=output_tokens, multiplier=sla_multiplier),
                   objectives=latency_objectives(
                       settings, perf, memory_gb=gb, prompt_tokens=prompt_tokens,
                       output_tokens=output_tokens, quantile=quantile,
                       multiplier=sla_multiplier) if token_objectives else None,
                   tail_prompt_tokens=tail_p, tail_output_tokens=tail_o)
        for name, gb, weight, priority in STANDARD_MODELS)


def empty_fleet(nodes: Sequence[Node], settings: Settings) -> tuple[Node, ...]:
    """The same nodes with no model servers, idle."""
    return tuple(replace(n, gpus=tuple(
        replace(g, slices=(), utilization=0.0, power_w=settings.catalog[g.gpu_type].idle_w)
        for g in n.gpus)) for n in nodes)

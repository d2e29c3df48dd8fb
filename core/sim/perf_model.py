"""Performance and power model of a model server on an MPS slice.

Why: the twin needs latency, throughput, utilization and power that respond to
load, MPS thread share, co-location and GPU type the way real LLM servers do,
so that placement, autoscaling and rollouts can be evaluated on it.

The model. All constants are *illustrative fits*: shaped by the published
form below and by datasheet ratios, sized to plausible vLLM step times, not
measurements of this fleet (the feedback loop, SPEC §3.7, calibrates them
from observed actual/predicted ratios).

- Decode. One iteration of a continuous batch of ``b`` sequences on a slice
  holding a fraction ``r`` of the SMs takes the published form
  ``t(b, r) = (k1·b² + k2·b + k3) / (r + k4) + k5`` seconds. ``k4 > 0`` makes
  throughput saturate in ``r`` (a quarter of the SMs delivers more than half
  of what half of them do); ``k5`` is share-independent overhead (scheduling,
  kernel launches, host work).
- Prefill is compute-bound: ``P`` prompt tokens take ``P·kp/(r + k4)``
  seconds (the same saturating shape in ``r``).
- Work. A request costs ``w = P·kp/(r + k4) + D·t(B, r)/B`` seconds of a
  saturated slice (``B`` = maximum batch, ``D`` = output tokens): the slice
  serves ``1/(m·w̄)`` requests/s at most. Offered work above that queues.
- Co-location: each *active* co-located MPS client multiplies times by
  ``1 + co_runner_slowdown`` per co-runner (``m``; default 8 %: published
  measurements of MPS co-location interference report +5 % to +13 % per
  co-runner).
- Load. Prefill takes a fraction ``f_p = λ·m·P̄·kp/(r + k4)`` of the slice;
  decode sequences in service ``L`` follow Little's law,
  ``L = λ_d·m·t(L, r)`` with ``λ_d = λ·D̄/(1 − f_p)`` — the smallest root of a
  quadratic, reaching ``B`` exactly at saturation. A request's latency is
  ``m·(P·kp/(r + k4) + t(L, r)) + (D − 1)·m·t(L, r)/(1 − f_p)`` after its
  queueing delay: latency grows with load through ``L`` and ``f_p``.
- Power: ``P = P_idle + (TDP − P_idle)·u^1.5`` (SPEC §3.1) with ``u`` the
  fraction of the GPU's peak throughput in use.

A100 constants (ms; tiny ≈ 1–3 B, medium ≈ 7–13 B, large ≈ 30–70 B
quantized models; ``kp`` ≈ 2 × parameters FLOP/token at ~50 % of 312 TFLOPS,
times ``1 + k4``):

==========  ======  =====  =====  ====  ====  =====  =========
class       k1      k2     k3     k4    k5    kp     max batch
==========  ======  =====  =====  ====  ====  =====  =========
tiny        0.0006  0.06   2.9    0.2   0.6   0.02   64
medium      0.002   0.19   9.6    0.2   2.0   0.108  48
large       0.0046  0.46   23.0   0.2   4.8   0.6    32
==========  ======  =====  =====  ====  ====  =====  =========

H100 = A100 with decode times divided by 2.0 (HBM bandwidth 3.35 vs
1.555 TB/s ≈ 2.15×, rounded down for fixed overheads) and prefill divided by
3.0 (dense BF16 989 vs 312 TFLOPS ≈ 3.2×). Other GPU types are scaled from
the A100 row by their dense-BF16 ratio (prefill) and its square root (decode).

Invariants: ``t`` is positive, increasing in ``b`` and decreasing in ``r``;
throughput grows with ``r`` but less than proportionally; power stays within
[idle, TDP] for utilization in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from core.catalog import Catalog
from core.errors import ValidationError
from core.model import WorkloadClass

DEFAULT_CO_RUNNER_SLOWDOWN = 0.08
H100_DECODE_SPEEDUP = 2.0
H100_PREFILL_SPEEDUP = 3.0
A100_DENSE_BF16_TFLOPS = 312.0
# A prefill share above this is treated as saturated (decode would stall).
_MAX_PREFILL_FRACTION = 0.95

# class: (k1, k2, k3, k4, k5, kp in ms; max batch) on an A100.
A100_BASE: Mapping[WorkloadClass, tuple[float, float, float, float, float, float, int]] = (
    MappingProxyType({
        WorkloadClass.TINY: (0.0006, 0.06, 2.9, 0.2, 0.6, 0.02, 64),
        WorkloadClass.MEDIUM: (0.002, 0.19, 9.6, 0.2, 2.0, 0.108, 48),
        WorkloadClass.LARGE: (0.0046, 0.46, 23.0, 0.2, 4.8, 0.6, 32),
    })
)

Num = np.ndarray | float


@dataclass(frozen=True, slots=True)
class PerfParams:
    """Constants of one (workload class, GPU type); times in seconds."""

    k1: float
    k2: float
    k3: float
    k4: float
    k5: float
    kp: float  # prefill seconds per prompt token × (r + k4)
    max_batch: int

    def __post_init__(self) -> None:
        for name in ("k1", "k2", "k5"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValidationError(f"perf.{name}", "must be a finite number ≥ 0")
        for name in ("k3", "k4", "kp"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValidationError(f"perf.{name}", "must be a finite number > 0")
        if self.max_batch < 1:
            raise ValidationError("perf.max_batch", "must be ≥ 1")

    def iteration_s(self, batch: float, share: float) -> float:
        """Seconds per decode iteration at batch ``batch`` and SM fraction ``share``."""
        return float(iteration_time(batch, share, k1=self.k1, k2=self.k2, k3=self.k3,
                                    k4=self.k4, k5=self.k5))

    def prefill_s(self, prompt_tokens: float, share: float) -> float:
        """Seconds to prefill ``prompt_tokens`` alone on the slice."""
        return prompt_tokens * self.kp / (share + self.k4)

    def work_s(self, prompt_tokens: float, output_tokens: float, share: float) -> float:
        """Seconds of a saturated slice one request costs (before co-location slowdown)."""
        full = self.iteration_s(self.max_batch, share)
        return self.prefill_s(prompt_tokens, share) + output_tokens * full / self.max_batch

    def scaled(self, *, decode_speedup: float, prefill_speedup: float) -> PerfParams:
        """The same server on a GPU whose decode and prefill are that much faster."""
        if decode_speedup <= 0 or prefill_speedup <= 0:
            raise ValidationError("perf.speedup", "must be > 0")
        d = decode_speedup
        return PerfParams(k1=self.k1 / d, k2=self.k2 / d, k3=self.k3 / d, k4=self.k4,
                          k5=self.k5 / d, kp=self.kp / prefill_speedup,
                          max_batch=self.max_batch)


def iteration_time(batch: Num, share: Num, *, k1: Num, k2: Num, k3: Num, k4: Num,
                   k5: Num) -> np.ndarray:
    """``t(b, r) = (k1·b² + k2·b + k3)/(r + k4) + k5``, elementwise."""
    b = np.asarray(batch, dtype=np.float64)
    return (k1 * b * b + k2 * b + k3) / (np.asarray(share, dtype=np.float64) + k4) + k5


def solve_concurrency(decode_rate: Num, share: Num, *, slowdown: Num, k1: Num, k2: Num,
                      k3: Num, k4: Num, k5: Num, max_batch: Num) -> np.ndarray:
    """Mean decode sequences in service: the smallest root of ``L = λ_d·m·t(L, r)``.

    ``λ_d`` is decode tokens per second of decode time. Rearranged:
    ``a·k1·L² + (a·k2 − 1)·L + a·k3 + λ_d·m·k5 = 0`` with ``a = λ_d·m/(r + k4)``,
    solved in the cancellation-free form ``L = 2c / (β + √(β² − 4·a·k1·c))``.
    Where no root is at most ``max_batch`` the slice is saturated: ``L = max_batch``.
    """
    w = np.asarray(decode_rate, dtype=np.float64) * slowdown
    a = w / (np.asarray(share, dtype=np.float64) + k4)
    beta = 1.0 - a * k2
    c = a * k3 + w * k5
    disc = beta * beta - 4.0 * a * k1 * c
    ok = (beta > 0) & (disc >= 0)
    denom = np.where(ok, beta + np.sqrt(np.where(ok, disc, 0.0)), 1.0)
    root = np.where(ok, 2.0 * c / denom, np.inf)
    return np.minimum(root, max_batch)


def power_w(utilization: Num, *, idle_w: Num, tdp_w: Num) -> np.ndarray:
    """``P_idle + (TDP − P_idle)·u^1.5`` with ``u`` clipped to [0, 1]."""
    u = np.clip(np.asarray(utilization, dtype=np.float64), 0.0, 1.0)
    return idle_w + (np.asarray(tdp_w) - idle_w) * u**1.5


@dataclass(frozen=True, slots=True)
class LoadPoint:
    """A slice in steady state at one arrival rate."""

    utilization: float  # fraction of the slice's peak throughput in use (0..1)
    decode_batch: float  # mean decode sequences in service (L)
    prefill_fraction: float  # f_p
    latency_s: float  # mean end-to-end time in service (no queue); inf when saturated
    ttft_s: float


@dataclass(frozen=True)
class PerfModel:
    """Per (workload class, GPU type) constants plus the co-location slowdown."""

    params: Mapping[tuple[WorkloadClass, str], PerfParams]
    co_runner_slowdown: float = DEFAULT_CO_RUNNER_SLOWDOWN

    def __post_init__(self) -> None:
        if not (0.0 <= self.co_runner_slowdown < 1.0):
            raise ValidationError("sim.co_runner_slowdown", "must be within [0, 1)")
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @classmethod
    def for_catalog(cls, catalog: Catalog, *,
                    co_runner_slowdown: float = DEFAULT_CO_RUNNER_SLOWDOWN) -> PerfModel:
        """The documented constants for every GPU type in ``catalog``."""
        base = {wc: PerfParams(k1=v[0] / 1e3, k2=v[1] / 1e3, k3=v[2] / 1e3, k4=v[3],
                               k5=v[4] / 1e3, kp=v[5] / 1e3, max_batch=v[6])
                for wc, v in A100_BASE.items()}
        params: dict[tuple[WorkloadClass, str], PerfParams] = {}
        for name in catalog.names:
            if name == "A100":
                decode, prefill = 1.0, 1.0
            elif name == "H100":
                decode, prefill = H100_DECODE_SPEEDUP, H100_PREFILL_SPEEDUP
            else:
                prefill = catalog[name].dense_bf16_tflops / A100_DENSE_BF16_TFLOPS
                decode = math.sqrt(prefill)
            for wc, p in base.items():
                params[(wc, name)] = p.scaled(decode_speedup=decode, prefill_speedup=prefill)
        return cls(params=params, co_runner_slowdown=co_runner_slowdown)

    def params_for(self, workload_class: WorkloadClass, gpu_type: str) -> PerfParams:
        try:
            return self.params[(workload_class, gpu_type)]
        except KeyError:
            raise ValidationError(
                "gpu_type", f"no performance constants for {workload_class.value} on {gpu_type}"
            ) from None

    def slowdown(self, co_runners: int) -> float:
        """Time multiplier for ``co_runners`` other active clients on the same GPU."""
        return 1.0 + self.co_runner_slowdown * max(0, int(co_runners))

    def max_throughput_rps(self, workload_class: WorkloadClass, gpu_type: str, *,
                           share: float, prompt_tokens: float, output_tokens: float,
                           co_runners: int = 0) -> float:
        """Requests/s a saturated slice serves for requests of this size."""
        _check_share(share)
        p = self.params_for(workload_class, gpu_type)
        return 1.0 / (self.slowdown(co_runners) * p.work_s(prompt_tokens, output_tokens, share))

    def steady_state(self, workload_class: WorkloadClass, gpu_type: str, *, share: float,
                     prompt_tokens: float, output_tokens: float, arrival_rps: float,
                     co_runners: int = 0) -> LoadPoint:
        """The slice at a steady arrival rate of requests of one size (no queueing delay)."""
        _check_share(share)
        if not math.isfinite(arrival_rps) or arrival_rps < 0:
            raise ValidationError("arrival_rps", "must be a finite number ≥ 0")
        p = self.params_for(workload_class, gpu_type)
        m = self.slowdown(co_runners)
        rho = arrival_rps * m * p.work_s(prompt_tokens, output_tokens, share)
        f_p = arrival_rps * m * p.prefill_s(prompt_tokens, share)
        if rho >= 1.0 or f_p >= _MAX_PREFILL_FRACTION:
            return LoadPoint(min(rho, 1.0), float(p.max_batch), min(f_p, 1.0), math.inf,
                             math.inf)
        batch = float(solve_concurrency(arrival_rps * output_tokens / (1.0 - f_p), share,
                                        slowdown=m,
                                        k1=p.k1, k2=p.k2, k3=p.k3, k4=p.k4, k5=p.k5,
                                        max_batch=p.max_batch))
        step = m * p.iteration_s(max(batch, 1.0), share)
        ttft = m * p.prefill_s(prompt_tokens, share) + step
        latency = ttft + max(0.0, output_tokens - 1) * step / (1.0 - f_p)
        return LoadPoint(rho, batch, f_p, latency, ttft)


def _check_share(share: float) -> None:
    if not (0.0 < share <= 1.0):
        raise ValidationError("share", "must be a fraction of the GPU within (0, 1]")

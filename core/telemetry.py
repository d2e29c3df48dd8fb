"""Fleet telemetry: what the console and the controller read about the fleet.

One reading (``FleetTelemetry``) holds per-GPU values (dcgm-exporter's view),
per-model-deployment values (vLLM's view) and fleet totals, all taken at one
``timestamp``. Sources (the twin, the Prometheus adapter) build these values;
consumers never see a client object.

Invariants kept here: utilization is a fraction in [0, 1]; counters
(``energy_j``, ``*_total``, histogram counts) never decrease for a given
series; rates are per second; a figure that has no data in its window (no
requests in the last 5 minutes, say) is ``None``, never ``NaN`` or 0, so a
consumer cannot mistake "no traffic" for "all requests failed". A reading is
measurements only: it carries no money. Cost needs the layout too (who holds
which MPS share of which GPU), so ``core.cost`` computes it from a reading and
the cluster's nodes, the same way whichever source made the reading.

No data is not zero: a source that answers but holds no current reading (a
Prometheus that scrapes nothing, an exporter that serves an empty page, a
newest sample older than the source allows) raises ``NoDataError`` instead of
returning a reading of zeros. It is a ``TransientError``, so every consumer
that treats an unavailable source as unknown (the monitor keeps its last
reading and records why; autoscaling, feedback and every gate wait) treats
"no data" the same way, and a consumer that knows the difference can say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import TransientError

# Bucket upper bounds (seconds) of vLLM's histograms (vLLM 0.6.x, ``vllm/engine/metrics.py``);
# the +Inf bucket is implicit (one more count than bounds).
E2E_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
)
TTFT_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
# vLLM's inter-token latency (``vllm:inter_token_latency_seconds``; before it,
# ``vllm:time_per_output_token_seconds``): one observation per output token after the first.
ITL_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)

QPS_WINDOWS_S: tuple[int, ...] = (60, 300, 900, 3600)

NO_DATA = "no data"

# Where a success rate comes from (``success_source``): the gateway or ingress in front of
# the model servers sees every client-visible failure; vLLM's own finishes do not count
# aborted requests (vllm-project/vllm#31503), so a rate from them reads high under
# timeouts and disconnects; the twin books every request it simulated.
SUCCESS_FROM_GATEWAY = "gateway"
SUCCESS_FROM_ENGINE = "engine"
SUCCESS_FROM_TWIN = "twin"
SUCCESS_MIXED = "mixed"  # fleet totals over deployments of both sources
SUCCESS_SOURCE_NOTES: dict[str, str] = {
    SUCCESS_FROM_GATEWAY: "from the gateway's request counts by status",
    SUCCESS_FROM_ENGINE: "engine-side only: aborts are not counted",
    SUCCESS_FROM_TWIN: "every simulated request",
    SUCCESS_MIXED: "from the gateway where one is scraped, else engine-side only: "
                   "aborts are not counted there",
}


class NoDataError(TransientError):
    """The source answered, but holds no current reading: ``reason`` says what is missing.

    Its message reads ``"no data: <reason>"``. Never a reading of zeros: unknown."""

    def __init__(self, reason: str, *, delay: float = 5.0) -> None:
        self.reason = reason
        super().__init__(f"{NO_DATA}: {reason}", delay=delay)


@dataclass(frozen=True, slots=True)
class Histogram:
    """A cumulative histogram: per-bucket counts (not cumulative across buckets).

    ``counts`` has one more entry than ``bounds``: the last is the +Inf bucket.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(q, bounds=self.bounds, counts=self.counts)


def histogram_quantile(q: float, *, bounds: Sequence[float], counts: Sequence[float]
                       ) -> float | None:
    """Prometheus' ``histogram_quantile`` over per-bucket counts.

    Linear interpolation inside the bucket that holds rank ``q × total``; the
    first bucket starts at 0; a rank in the +Inf bucket returns the highest
    finite bound. ``None`` when there are no observations.
    """
    if not 0.0 <= q <= 1.0 or math.isnan(q):
        raise ValueError("q must be within [0, 1]")
    if len(counts) != len(bounds) + 1:
        raise ValueError("counts needs one entry per bound plus the +Inf bucket")
    total = float(sum(counts))
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, c in enumerate(counts):
        if c > 0 and seen + c >= rank:
            if i == len(bounds):
                return float(bounds[-1])
            lower = 0.0 if i == 0 else float(bounds[i - 1])
            return lower + (float(bounds[i]) - lower) * (rank - seen) / c
        seen += c
    return float(bounds[-1])


@dataclass(frozen=True, slots=True)
class GpuTelemetry:
    """One GPU as dcgm-exporter reports it (``Hostname``/``gpu`` labels).

    ``memory_total_mib`` is FB_USED + FB_FREE + FB_RESERVED; ``pods`` the model-server
    pods (``namespace/pod``) dcgm-exporter's Kubernetes pod mapping names on this GPU;
    ``mig_instance`` the MIG GPU instance id (``GPU_I_ID``), "" for a whole GPU: the
    instances of one card are separate readings of one ``(node, gpu_index)``."""

    node: str
    gpu_index: int
    gpu_type: str
    uuid: str
    utilization: float  # 0..1 (DCGM_FI_DEV_GPU_UTIL / 100)
    power_w: float  # DCGM_FI_DEV_POWER_USAGE
    memory_used_mib: int  # DCGM_FI_DEV_FB_USED
    memory_total_mib: int  # FB_USED + FB_FREE + FB_RESERVED
    energy_j: float  # DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION (a counter; DCGM reports mJ)
    healthy: bool = True
    qps_1m: float = 0.0  # requests/s served by model servers on this GPU, over 1 m
    memory_reserved_mib: int = 0  # DCGM_FI_DEV_FB_RESERVED (driver and ECC)
    pods: tuple[str, ...] = ()  # "namespace/pod" of the model servers using it
    mig_instance: str = ""  # GPU_I_ID under MIG; "" for a whole GPU

    @property
    def memory_free_mib(self) -> int:
        return self.memory_total_mib - self.memory_used_mib - self.memory_reserved_mib


@dataclass(frozen=True, slots=True)
class DeploymentCounters:
    """Raw monotonic counters of one deployment, as vLLM exports them."""

    requests_total: int  # every request that arrived
    success_total: int  # vllm:request_success_total
    failure_total: int
    prompt_tokens_total: int  # vllm:prompt_tokens_total
    generation_tokens_total: int  # vllm:generation_tokens_total
    e2e_latency: Histogram  # vllm:e2e_request_latency_seconds
    ttft: Histogram  # vllm:time_to_first_token_seconds
    # vllm:inter_token_latency_seconds (older: vllm:time_per_output_token_seconds); None
    # where the source exports neither (unknown, not zero).
    itl: Histogram | None = None


@dataclass(frozen=True, slots=True)
class DeploymentTelemetry:
    """One model deployment (all replicas serving ``model`` in ``namespace``)."""

    model: str
    namespace: str
    replicas: int  # Running replicas
    qps_1m: float
    qps_5m: float
    qps_15m: float
    qps_1h: float
    success_rate: float | None  # over 5 m; None without requests
    p99_latency_ms: float | None  # from the e2e histogram over 5 m
    mean_latency_ms: float | None  # histogram sum / count over 5 m
    ttft_p50_ms: float | None  # from the TTFT histogram over 5 m
    queue_waiting: int  # vllm:num_requests_waiting, summed over replicas
    running: int  # vllm:num_requests_running, summed over replicas
    tokens_per_s: float  # generation tokens/s over 1 m
    nodes: tuple[str, ...] = ()
    counters: DeploymentCounters | None = None
    pods: tuple[str, ...] = ()  # "namespace/pod" of its serving replicas, when known
    success_source: str = SUCCESS_FROM_TWIN  # see SUCCESS_SOURCE_NOTES

    def qps(self, window_s: int) -> float:
        """QPS over one of ``QPS_WINDOWS_S``."""
        by_window = dict(zip(QPS_WINDOWS_S, (self.qps_1m, self.qps_5m, self.qps_15m,
                                             self.qps_1h), strict=True))
        if window_s not in by_window:
            raise ValueError(f"window must be one of {QPS_WINDOWS_S}")
        return by_window[window_s]


@dataclass(frozen=True, slots=True)
class FleetTotals:
    """Fleet-wide measurements at the reading's instant.

    ``qps`` is the deployments' served rate over 1 m, summed; ``power_w`` every
    GPU reading's power; ``tops_per_w`` delivered throughput (catalog figure ×
    utilization, summed) over total power. No cost: see ``core.cost.fleet_cost``.
    """

    qps: float
    power_w: float
    tops_per_w: float
    success_rate: float | None = None  # over 5 m, all deployments
    queue_waiting: int = 0
    success_source: str = SUCCESS_FROM_TWIN  # see SUCCESS_SOURCE_NOTES; "mixed" when mixed


@dataclass(frozen=True, slots=True)
class FleetTelemetry:
    timestamp: float  # epoch seconds of the reading
    gpus: tuple[GpuTelemetry, ...]
    deployments: tuple[DeploymentTelemetry, ...]
    totals: FleetTotals
    source: str = "twin"

    def deployment(self, model: str, namespace: str | None = None) -> DeploymentTelemetry:
        for d in self.deployments:
            if d.model == model and (namespace is None or d.namespace == namespace):
                return d
        raise KeyError(model)

    def gpu(self, node: str, gpu_index: int = 0) -> GpuTelemetry:
        for g in self.gpus:
            if g.node == node and g.gpu_index == gpu_index:
                return g
        raise KeyError(f"{node}/gpu{gpu_index}")

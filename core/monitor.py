"""The monitoring step: telemetry in, stored metric points and alert samples out.

Pure: the caller reads telemetry through the Metrics port and writes what this
returns to the store. Series keys are stable strings (``fleet``,
``model=<name>``, ``gpu=<node>/<index>``) so that history charts, cost reports
and the feedback loop all read the same series.

Cost series (``cost_per_1k``, ``cost_per_hour``, ``idle_cost_per_hour``) come
from ``core.cost.fleet_cost`` over the sample and the fleet layout read with
it, whatever the metrics source: without a layout there is no cost point
(unknown, never 0), and ``cost_per_1k`` has no point while nothing is served.

Unknown is not zero (``live_reading``, ``qps_gate``): the live figures are
known only while the latest sample is current — the source answered, the
sample is at most ``max_age_s`` old (3 × the monitor interval), and it holds
the series the cluster's layout says must exist (GPUs report dcgm-exporter
series; model servers report vLLM series). Otherwise the reading is unknown,
with the reason, and every gate built on it fails closed: a fleet that cannot
be seen is never "quiet" nor "safe to update".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from core.alerts import ModelCounters, ModelKey
from core.alerts import Sample as AlertSample
from core.catalog import Catalog
from core.cost import Prices, fleet_cost
from core.model import Node
from core.ports import MetricPoint
from core.telemetry import NO_DATA, FleetTelemetry

FLEET = "fleet"

# The fleet series the Overview draws, in order.
FLEET_SERIES = ("qps_1m", "success_rate", "p99_ms", "power_w", "cost_per_1k", "tops_per_w",
                "queue_waiting", "cost_per_hour", "idle_cost_per_hour")


def model_key(model: str) -> str:
    return f"model={model}"


def gpu_key(node: str, gpu_index: int) -> str:
    return f"gpu={node}/{gpu_index}"


def worst_p99_ms(t: FleetTelemetry) -> float | None:
    values = [d.p99_latency_ms for d in t.deployments if d.p99_latency_ms is not None]
    return max(values) if values else None


def metric_points(t: FleetTelemetry, *, layout: Sequence[Node] | None = None,
                  catalog: Catalog | Prices | None = None) -> list[MetricPoint]:
    """What one sample of the fleet stores: fleet totals, per model, per GPU.

    ``layout`` (the cluster's nodes read with the sample) and ``catalog`` price
    the fleet; without both, no cost point is stored.
    """
    ts = t.timestamp
    tot = t.totals
    out: list[MetricPoint] = []

    def add(metric: str, key: str, value: float | Decimal | None) -> None:
        if value is not None:
            out.append(MetricPoint(ts, metric, key, float(value)))

    add("qps_1m", FLEET, tot.qps)
    add("success_rate", FLEET, tot.success_rate)
    add("p99_ms", FLEET, worst_p99_ms(t))
    add("power_w", FLEET, tot.power_w)
    cost = None if layout is None or catalog is None else fleet_cost(t, layout, catalog)
    if cost is not None:
        add("cost_per_1k", FLEET, cost.cost_per_1k)
    add("tops_per_w", FLEET, tot.tops_per_w)
    add("queue_waiting", FLEET, tot.queue_waiting)
    if cost is not None:
        add("cost_per_hour", FLEET, cost.total_per_hour)
        add("idle_cost_per_hour", FLEET, cost.idle_cost_per_hour)
    for d in t.deployments:
        key = model_key(d.model)
        add("qps_1m", key, d.qps_1m)
        add("success_rate", key, d.success_rate)
        add("p99_ms", key, d.p99_latency_ms)
        add("queue_waiting", key, d.queue_waiting)
        add("replicas", key, d.replicas)
    # Per GPU as ``add`` does (three points each: most of a sample's), without its call.
    append = out.append
    for g in t.gpus:
        key = gpu_key(g.node, g.gpu_index)
        if (value := g.utilization) is not None:
            append(MetricPoint(ts, "utilization", key, float(value)))
        if (value := g.power_w) is not None:
            append(MetricPoint(ts, "power_w", key, float(value)))
        if (value := g.memory_used_mib) is not None:
            append(MetricPoint(ts, "memory_used_mib", key, float(value)))
    return out


def alert_sample(t: FleetTelemetry) -> AlertSample:
    """The alert evaluator's input: each model's cumulative counters and queue."""
    models = {}
    for d in t.deployments:
        if d.counters is None:
            continue
        finished = d.counters.success_total + d.counters.failure_total
        models[ModelKey(d.namespace, d.model)] = ModelCounters(requests_total=finished,
                                        requests_succeeded=d.counters.success_total,
                                        requests_waiting=d.queue_waiting)
    return AlertSample(at=t.timestamp, models=models)


def qps_band(qps: float, *, safe: float = 50, caution: float = 100,
             high_risk: float = 200) -> tuple[str, str]:
    """SPEC §4.2's live banner: (band, advice); thresholds from ``gates.qps_bands``."""
    if qps < safe:
        return "safe", f"under {safe:g} QPS: safe to update"
    if qps <= caution:
        return "caution", f"{safe:g}–{caution:g} QPS: proceed with caution"
    if qps <= high_risk:
        return "high-risk", f"{caution:g}–{high_risk:g} QPS: high risk, only emergency fixes"
    return "do-not-update", f"over {high_risk:g} QPS: do not update"


UNKNOWN_BAND = "unknown"


@dataclass(frozen=True, slots=True)
class LiveReading:
    """The live figures, or why they are unknown.

    ``telemetry``: the latest reading, if any (when ``unknown`` is set it is only the
    last known one, and is not to be shown as current); ``unknown``: why the figures
    are unknown, ``None`` while they are known; ``age_s``: how old the latest reading is.
    """

    telemetry: FleetTelemetry | None
    unknown: str | None
    age_s: float | None = None

    @property
    def known(self) -> bool:
        return self.unknown is None and self.telemetry is not None

    def current(self) -> FleetTelemetry | None:
        """The reading when it is known; ``None`` otherwise (never a stale one)."""
        return self.telemetry if self.known else None


def missing_series(t: FleetTelemetry, layout: Sequence[Node]) -> str | None:
    """Why ``t`` lacks series the ``layout`` says must exist; ``None`` when it has them.

    GPUs in the layout but none in the reading: dcgm-exporter is not scraped. Model
    servers (MPS slices) in the layout but no deployment in the reading: vLLM is not."""
    gpus = sum(len(n.gpus) for n in layout)
    servers = sum(len(g.slices) for n in layout for g in n.gpus)
    if gpus and not t.gpus:
        return (f"{NO_DATA}: the cluster has {gpus} GPUs but the metrics source holds no "
                "GPU series (dcgm-exporter) for them")
    if servers and not t.deployments:
        return (f"{NO_DATA}: {servers} model servers run but the metrics source holds no "
                "model-server series (vLLM) for them")
    return None


def live_reading(*, latest: FleetTelemetry | None, error: str | None,
                 last_sample_at: float | None, now: float, max_age_s: float,
                 layout: Sequence[Node] | None = None) -> LiveReading:
    """Whether the monitor's latest reading may be shown and gated on as current.

    Unknown, with the reason, when there is no reading yet, when the last sample
    failed (``error``: the source is down or holds no data), when the reading is
    older than ``max_age_s`` (the monitor stopped, or the store it writes to is
    down), and when ``layout`` says series are missing (``missing_series``)."""
    age = None if last_sample_at is None else max(0.0, now - last_sample_at)
    if error:
        return LiveReading(latest, error, age)
    if latest is None:
        return LiveReading(None, "no sample yet", age)
    if age is not None and age > max_age_s:
        return LiveReading(latest, f"{NO_DATA}: the latest sample is {age:.0f} s old (more "
                                   f"than {max_age_s:g} s); the monitor is not sampling", age)
    if layout is not None:
        missing = missing_series(latest, layout)
        if missing is not None:
            return LiveReading(latest, missing, age)
    return LiveReading(latest, None, age)


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """One gate's answer: ``passed`` (fails closed when unknown), the band and why."""

    name: str
    passed: bool
    band: str
    message: str


def qps_gate(reading: LiveReading, *, safe: float = 50, caution: float = 100,
             high_risk: float = 200) -> GateVerdict:
    """SPEC §4.2's QPS-aware gate over the live reading: passes up to ``high_risk``
    QPS (with the band's advice), fails above it, and fails closed when the reading is
    unknown (band ``unknown``, the reason in the message): no data is never 0 QPS."""
    t = reading.current()
    if t is None:
        why = reading.unknown or "no sample yet"
        return GateVerdict("qps", False, UNKNOWN_BAND,
                           f"unknown — {why}; update gates are closed until data arrives")
    band, advice = qps_band(t.totals.qps, safe=safe, caution=caution, high_risk=high_risk)
    return GateVerdict("qps", band != "do-not-update", band, advice)

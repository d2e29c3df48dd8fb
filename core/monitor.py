"""The monitoring step: telemetry in, stored metric points and alert samples out.

Pure: the caller reads telemetry through the Metrics port and writes what this
returns to the store. Series keys are stable strings (``fleet``,
``model=<name>``, ``gpu=<node>/<index>``) so that history charts, cost reports
and the feedback loop all read the same series.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.alerts import ModelCounters
from core.alerts import Sample as AlertSample
from core.telemetry import FleetTelemetry

FLEET = "fleet"

# The fleet series the Overview draws, in order.
FLEET_SERIES = ("qps_1m", "success_rate", "p99_ms", "power_w", "cost_per_1k", "tops_per_w",
                "queue_waiting", "cost_per_hour", "idle_cost_per_hour")


@dataclass(frozen=True, slots=True)
class MetricPoint:
    ts: float
    metric: str
    key: str
    value: float


def model_key(model: str) -> str:
    return f"model={model}"


def gpu_key(node: str, gpu_index: int) -> str:
    return f"gpu={node}/{gpu_index}"


def worst_p99_ms(t: FleetTelemetry) -> float | None:
    values = [d.p99_latency_ms for d in t.deployments if d.p99_latency_ms is not None]
    return max(values) if values else None


def metric_points(t: FleetTelemetry) -> list[MetricPoint]:
    """What one sample of the fleet stores: fleet totals, per model, per GPU."""
    ts = t.timestamp
    tot = t.totals
    out: list[MetricPoint] = []

    def add(metric: str, key: str, value: float | None) -> None:
        if value is not None:
            out.append(MetricPoint(ts, metric, key, float(value)))

    add("qps_1m", FLEET, tot.qps)
    add("success_rate", FLEET, tot.success_rate)
    add("p99_ms", FLEET, worst_p99_ms(t))
    add("power_w", FLEET, tot.power_w)
    add("cost_per_1k", FLEET, None if tot.cost_per_inference is None
        else float(tot.cost_per_inference) * 1000)
    add("tops_per_w", FLEET, tot.tops_per_w)
    add("queue_waiting", FLEET, tot.queue_waiting)
    add("cost_per_hour", FLEET, float(tot.cost_per_hour))
    add("idle_cost_per_hour", FLEET, float(tot.idle_cost_per_hour))
    for d in t.deployments:
        key = model_key(d.model)
        add("qps_1m", key, d.qps_1m)
        add("success_rate", key, d.success_rate)
        add("p99_ms", key, d.p99_latency_ms)
        add("queue_waiting", key, d.queue_waiting)
        add("replicas", key, d.replicas)
    for g in t.gpus:
        key = gpu_key(g.node, g.gpu_index)
        add("utilization", key, g.utilization)
        add("power_w", key, g.power_w)
        add("memory_used_mib", key, g.memory_used_mib)
    return out


def alert_sample(t: FleetTelemetry) -> AlertSample:
    """The alert evaluator's input: each model's cumulative counters and queue."""
    models = {}
    for d in t.deployments:
        if d.counters is None:
            continue
        finished = d.counters.success_total + d.counters.failure_total
        models[d.model] = ModelCounters(requests_total=finished,
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

"""The monitoring step: telemetry in, stored metric points and alert samples out.

Pure: the caller reads telemetry through the Metrics port and writes what this
returns to the store. Series keys are stable strings (``fleet``,
``model=<name>``, ``gpu=<node>/<index>``) so that history charts, cost reports
and the feedback loop all read the same series.

Cost series (``cost_per_1k``, ``cost_per_hour``, ``idle_cost_per_hour``) come
from ``core.cost.fleet_cost`` over the sample and the fleet layout read with
it, whatever the metrics source: without a layout there is no cost point
(unknown, never 0), and ``cost_per_1k`` has no point while nothing is served.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from core.alerts import ModelCounters
from core.alerts import Sample as AlertSample
from core.catalog import Catalog
from core.cost import Prices, fleet_cost
from core.model import Node
from core.ports import MetricPoint
from core.telemetry import FleetTelemetry

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

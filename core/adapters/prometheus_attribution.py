"""Who uses which GPU, and whose figures a series belongs to, from real exporters' labels.

Why: ``PrometheusMetrics`` reads series whose labels come from three places:
the exporter itself (dcgm-exporter's pod mapping, vLLM's ``model_name`` and
``engine``), the scrape's target labels (``namespace``, ``pod``, ``node`` from
Kubernetes discovery) and Prometheus' renaming of a clash under
``honor_labels: false`` (``exported_pod``). This module turns those labels
into attribution, purely (no I/O), so the rules are testable on their own.

Invariants kept: a GPU is attributed only to pods that serve vLLM (the
exporter's own pod, which an idle GPU's series carries as a target label, is
never a model server); a pod that uses k GPUs gives each 1/k of its QPS, so
per-GPU QPS sums to the served QPS of the mapped pods; a GPU no server uses
gets 0 QPS; without any pod mapping on a node, that node's QPS (vLLM's
``node`` label) is split over its GPUs that hold memory, as before.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace

from core.telemetry import (
    SUCCESS_FROM_GATEWAY,
    SUCCESS_MIXED,
    DeploymentTelemetry,
    FleetTotals,
    GpuTelemetry,
)

GpuKey = tuple[str, int, str]  # (node, gpu index, MIG instance or "")
MIXED_SOURCES = SUCCESS_MIXED


def mapped_pod(labels: Mapping[str, str]) -> str | None:
    """``namespace/pod`` named by dcgm-exporter's pod mapping on one series, if any.

    ``exported_pod`` (and its namespace) wins: under ``honor_labels: false`` the plain
    ``pod`` is then the exporter's own, a target label."""
    if labels.get("exported_pod"):
        namespace = labels.get("exported_namespace") or labels.get("namespace", "")
        return f"{namespace}/{labels['exported_pod']}"
    if labels.get("pod"):
        return f"{labels.get('namespace', '')}/{labels['pod']}"
    return None


def attribute_gpus(gpus: Iterable[GpuTelemetry], *, gpu_pods: Mapping[GpuKey, Collection[str]],
                   servers: Collection[str], pod_qps: Mapping[str, float],
                   node_qps: Mapping[str, float], idle_memory_mib: int
                   ) -> tuple[GpuTelemetry, ...]:
    """Each GPU with its model-server ``pods`` and its share of their QPS over 1 m."""
    gpus = list(gpus)
    serving: dict[GpuKey, tuple[str, ...]] = {}
    gpus_of_pod: dict[str, int] = defaultdict(int)
    for g in gpus:
        key = (g.node, g.gpu_index, g.mig_instance)
        pods = tuple(sorted(p for p in gpu_pods.get(key, ()) if p in servers))
        serving[key] = pods
        for p in pods:
            gpus_of_pod[p] += 1
    mapped_nodes = {g.node for g in gpus if serving[(g.node, g.gpu_index, g.mig_instance)]}
    by_node: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(gpus):
        by_node[g.node].append(i)
    out = []
    for g in gpus:
        pods = serving[(g.node, g.gpu_index, g.mig_instance)]
        if g.node in mapped_nodes:
            qps = sum(pod_qps.get(p, 0.0) / gpus_of_pod[p] for p in pods)
        else:
            qps = _node_share(g, gpus=[gpus[i] for i in by_node[g.node]],
                              node_qps=node_qps.get(g.node, 0.0),
                              idle_memory_mib=idle_memory_mib)
        out.append(replace(g, pods=pods, qps_1m=qps))
    return tuple(out)


def _node_share(g: GpuTelemetry, *, gpus: list[GpuTelemetry], node_qps: float,
                idle_memory_mib: int) -> float:
    if node_qps <= 0:
        return 0.0
    hosting = [x for x in gpus if x.memory_used_mib > idle_memory_mib]
    share = hosting or gpus
    return node_qps / len(share) if g in share else 0.0


def with_nodes(deployments: Iterable[DeploymentTelemetry], gpus: Iterable[GpuTelemetry]
               ) -> tuple[DeploymentTelemetry, ...]:
    """Each deployment's ``nodes`` widened by the nodes of the GPUs its pods use."""
    node_of: dict[str, set[str]] = defaultdict(set)
    for g in gpus:
        for p in g.pods:
            node_of[p].add(g.node)
    out = []
    for d in deployments:
        nodes = set(d.nodes).union(*(node_of.get(p, set()) for p in d.pods))
        out.append(replace(d, nodes=tuple(sorted(nodes))))
    return tuple(out)


def fleet_totals(gpus: Iterable[GpuTelemetry], deployments: Iterable[DeploymentTelemetry], *,
                 throughput: Mapping[str, float], default_source: str = SUCCESS_FROM_GATEWAY
                 ) -> FleetTotals:
    """Fleet totals; power is counted once per card (MIG instances repeat the card's)."""
    power = 0.0
    delivered = 0.0
    seen: set[tuple[str, int]] = set()
    for g in gpus:
        if (g.node, g.gpu_index) in seen:
            continue
        seen.add((g.node, g.gpu_index))
        power += g.power_w
        delivered += throughput.get(g.gpu_type, 0.0) * g.utilization
    deployments = list(deployments)
    rated = [d for d in deployments if d.success_rate is not None]
    total_5m = sum(d.qps_5m for d in rated)
    ok_5m = sum(d.qps_5m * (d.success_rate or 0.0) for d in rated)
    sources = {d.success_source for d in rated}
    return FleetTotals(
        qps=sum(d.qps_1m for d in deployments), power_w=power,
        tops_per_w=delivered / power if power > 0 else 0.0,
        success_rate=min(1.0, ok_5m / total_5m) if total_5m > 0 else None,
        queue_waiting=sum(d.queue_waiting for d in deployments),
        success_source=(sources.pop() if len(sources) == 1
                        else MIXED_SOURCES if sources else default_source))

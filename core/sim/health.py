"""The twin as a ``HealthSource``: per-node error rate and p99 for canary analysis.

Why: a canary verdict must come from the traffic the twin really served, with
its faults (``error_spike`` and ``latency_spike`` on a node show up in that
node's deployments). The twin's telemetry counts per deployment, not per node,
so each node's health is attributed from the deployments whose serving
replicas it runs (``core.rollout.analysis.node_health``), as it would be from a
Prometheus without per-node success counters.

Invariant: when the twin's metrics source is down (``metrics_down``) this
raises ``TransientError`` like the real source, never reports "healthy".
"""

from __future__ import annotations

from collections.abc import Sequence

from core.ports import Metrics
from core.rollout.analysis import Health, node_health


class TelemetryHealth:
    """``HealthSource`` over any ``Metrics`` port (the twin, or the Prometheus adapter)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def node_health(self, nodes: Sequence[str]) -> dict[str, Health]:
        return node_health(self.metrics.telemetry(), nodes)


TwinHealth = TelemetryHealth

"""The rollout gates every update type shares: its dependencies answer (SPEC §4.2).

Why: a change must not start, nor touch the next node, while the controller is
blind: the metrics source down means no gate on traffic, errors or utilization
can be evaluated, and an unreachable cluster API means a node could be left
half-done. Both fail closed, with the reason. ``DependencyGates`` checks only
those two (tests, and clusters without stored history); ``SpecGates`` runs every
gate of ``core.rollout.gates`` (traffic, errors, utilization, capacity, window,
incidents, dependencies, QPS bands) over the controller's ports.

Invariant: an exception from a dependency is a failed gate, never a pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import SchedulerError
from core.ports import Cluster, GateReport, Metrics
from core.rollout import gates


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    value: str
    threshold: str
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "value": self.value,
                "threshold": self.threshold, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Report:
    checks: tuple[Check, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks if not c.passed)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed": list(self.failed),
                "checks": [c.to_json() for c in self.checks], **dict(self.extra)}


class DependencyGates:
    """``RolloutGates``: the metrics source and the cluster API must answer."""

    def __init__(self, *, metrics: Metrics, cluster: Cluster) -> None:
        self.metrics = metrics
        self.cluster = cluster

    def check(self, *, plan: Any, now: float, node: str | None = None) -> Report:
        checks = []
        try:
            up = self.metrics.available()
            if up:
                self.metrics.telemetry()
            checks.append(Check("metrics-source", up, "answers" if up else "down", "answers",
                                "" if up else "the metrics source does not answer: no "
                                "traffic or error gate can be evaluated (fails closed)"))
        except SchedulerError as exc:
            checks.append(Check("metrics-source", False, "down", "answers",
                                f"the metrics source does not answer: {exc} (fails closed)"))
        try:
            self.cluster.nodes()
            checks.append(Check("cluster-api", True, "answers", "answers"))
        except SchedulerError as exc:
            checks.append(Check("cluster-api", False, "unreachable", "answers",
                                f"the cluster API does not answer: {exc} (fails closed)"))
        return Report(checks=tuple(checks))


class SpecGates:
    """``RolloutGates``: every gate of SPEC §4.2 (``core.rollout.gates``) over the
    controller's ports: the live reading, the cluster's nodes, the firing alerts and the
    stored 15-minute fleet QPS. A source that fails makes its figures unknown, and the
    gates over them fail closed, with the reason."""

    def __init__(self, *, metrics: Metrics, cluster: Cluster, settings: Any,
                 firing: Callable[[], Sequence[Any]],
                 qps_points: Callable[[float, float], Sequence[tuple[float, float]]]) -> None:
        self.metrics = metrics
        self.cluster = cluster
        self.settings = settings
        self.firing = firing
        self.qps_points = qps_points

    def check(self, *, plan: Any, now: float, node: str | None = None) -> GateReport:
        telemetry = metrics_problem = None
        try:
            telemetry = self.metrics.telemetry()
        except SchedulerError as exc:
            metrics_problem = str(exc) or type(exc).__name__
        nodes = cluster_problem = None
        try:
            nodes = self.cluster.nodes()
        except SchedulerError as exc:
            cluster_problem = str(exc) or type(exc).__name__
        points = store_problem = None
        try:
            points = self.qps_points(now - gates.PEAK_WINDOW_S, now)
        except Exception as exc:  # the store's own errors: unknown, and the gate fails closed
            store_problem = f"the store did not answer: {type(exc).__name__}: {exc}"
        inputs = gates.gate_inputs(now=now, telemetry=telemetry,
                                   metrics_problem=metrics_problem, nodes=nodes,
                                   cluster_problem=cluster_problem, firing=self.firing(),
                                   qps_points=points, store_problem=store_problem)
        kind = self.settings.rollouts.update_type(plan.update_type)
        return gates.evaluate_gates(inputs, update_type=kind, bands=self.settings.qps_bands)

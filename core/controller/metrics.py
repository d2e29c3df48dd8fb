"""The controller's own metrics (SPEC §3.5), in a registry of its own.

Only the registry lives here; serving it over HTTP is an adapter's job
(``core.adapters.exporter``). Every labelled series is created up front, so a
scrape shows zeros rather than nothing before the first event.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.states import AutoscalingAction, PlacementStatus, RequestState


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.placements = Counter("gsc_placements_total", "Placement outcomes",
                                  ["outcome"], registry=self.registry)
        for outcome in PlacementStatus:
            self.placements.labels(outcome=outcome.value)
        self.placement_seconds = Histogram(
            "gsc_placement_seconds", "Wall time to place one request (decide, reserve, bind, "
            "wait)", buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 300),
            registry=self.registry)
        self.decision_seconds = Histogram(
            "gsc_decision_seconds", "Placement decision latency: classify, filter, score, "
            "choose (no I/O)", buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01,
                                        0.05, 0.1), registry=self.registry)
        self.queue_depth = Gauge("gsc_queue_depth", "Placement requests by state", ["state"],
                                 registry=self.registry)
        for state in RequestState:
            self.queue_depth.labels(state=state.value)
        self.leader = Gauge("gsc_controller_leader", "1 while this controller leads",
                            registry=self.registry)
        self.autoscaling_actions = Counter("gsc_autoscaling_actions_total",
                                           "Autoscaling actions taken", ["action"],
                                           registry=self.registry)
        for action in (AutoscalingAction.UP, AutoscalingAction.DOWN):
            self.autoscaling_actions.labels(action=action.value)
        self.monitor_samples = Counter("gsc_monitor_samples_total",
                                       "Telemetry samples taken, by outcome", ["outcome"],
                                       registry=self.registry)
        for outcome in ("stored", "unavailable"):
            self.monitor_samples.labels(outcome=outcome)
        # Labelled by step name when one fails (the names are the loop's own, not known
        # here): a failing step is counted and the iteration goes on with the others.
        self.step_failures = Counter("gsc_controller_step_failures_total",
                                     "Controller step runs that raised, by step", ["step"],
                                     registry=self.registry)
        self.autoscaling_paused = Gauge("gsc_autoscaling_paused",
                                        "1 while an operator has paused autoscaling",
                                        registry=self.registry)

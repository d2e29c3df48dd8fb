"""The controller's rollout step as the runtime wires it (``app.bootstrap.build_controller``).

Why a module of its own: the step needs the store's rollout, placement and feedback
stores, the cluster as both ``Cluster`` and ``NodeConfigurator``, the monitor's
metrics and firing alerts, and the ``[rollouts]`` settings; gathering them here keeps
``build_controller`` one line per step. Without a monitor there is no metrics source,
so every plan is postponed by a gate that fails closed and says so (never run blind).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy.orm import Session, sessionmaker

from core.controller.monitor import Monitor
from core.controller.rollout import RolloutConfig, RolloutEngine, RolloutStep
from core.controller.rollout_actions import Ports
from core.controller.rollout_gates import Check, Report, SpecGates
from core.ports import Clock, Cluster, NodeConfigurator
from core.rollout.analysis import Thresholds
from core.rollout.breaker import Breaker, BreakerState
from core.settings import Settings
from core.sim.health import TelemetryHealth
from db.rollouts import SqlRolloutStore
from db.stores import SqlFeedbackStore, SqlPlacementStore

log = logging.getLogger(__name__)


class NoMetricsGates:
    """Gates when the controller has no metrics source: closed, with the reason."""

    def check(self, *, plan: Any, now: float, node: str | None = None) -> Report:
        return Report(checks=(Check("metrics-source", False, "none", "answers",
                                    "unknown: this controller has no metrics source "
                                    "(no monitor), so no gate can be evaluated"),))


def breaker_gauges(registry: CollectorRegistry) -> Callable[[Breaker], None]:
    """Export the circuit breaker (SPEC §4.3) as controller metrics; returns the updater."""
    state = Gauge("gsc_rollout_breaker_state", "1 for the rollout circuit breaker's state",
                  ["state"], registry=registry)
    failures = Gauge("gsc_rollout_breaker_failures",
                     "Failed rollouts in a row (the breaker opens at its threshold)",
                     registry=registry)
    for s in BreakerState:
        state.labels(state=s.value)

    def update(breaker: Breaker) -> None:
        for s in BreakerState:
            state.labels(state=s.value).set(1 if breaker.state is s else 0)
        failures.set(breaker.consecutive_failures)

    return update


def build_rollout_step(*, factory: sessionmaker[Session], cluster: Cluster, clock: Clock,
                       settings: Settings, monitor: Monitor | None,
                       registry: CollectorRegistry | None = None,
                       interval_s: float = 5.0) -> RolloutStep | None:
    """The rollout step, or None when ``cluster`` cannot change a node's configuration.
    ``registry``: the controller's metrics, which then export the breaker."""
    if not isinstance(cluster, NodeConfigurator):
        log.info("rollouts disabled: %s cannot reconfigure nodes", type(cluster).__name__)
        return None
    canary = settings.rollouts.canary
    feedback = SqlFeedbackStore(factory)
    gates: Any
    if monitor is None:
        gates = NoMetricsGates()
    else:
        def firing() -> Sequence[Any]:
            return monitor.state.firing

        gates = SpecGates(metrics=monitor.metrics, cluster=cluster, settings=settings,
                          firing=firing,
                          qps_points=lambda since, until: feedback.fleet_qps_series(
                              since=since, until=until))
    ports = Ports(store=SqlRolloutStore(factory), cluster=cluster, nodes=cluster,
                  placement=SqlPlacementStore(factory),
                  health=None if monitor is None else TelemetryHealth(monitor.metrics),
                  thresholds=Thresholds(max_error_rate=canary.max_error_rate,
                                        max_p99_ms=canary.max_p99_ms))
    breaker = settings.rollouts.breaker
    config = RolloutConfig(interval_s=interval_s, breaker_failures=breaker.failures,
                           breaker_cooldown_s=breaker.cooldown_s)
    return RolloutStep(RolloutEngine(ports=ports, gates=gates, clock=clock, config=config),
                       observe=None if registry is None else breaker_gauges(registry))

"""The monitoring step: sample the fleet, evaluate alerts, book cost, store it all.

Every ``interval_s`` the leader reads telemetry through the ``Metrics`` port,
evaluates the alert rules, turns the interval since the previous sample into
cost-ledger lines (SPEC §3.8) under the layout the cluster reported with that
previous sample, and hands points, alert transitions and cost lines to the
``MetricSink`` in one call (one transaction). A standby samples without storing,
to keep its own live view. ``Monitor.state`` is what live panels and the other
steps read; a source that does not answer leaves the last reading in place and
records the error beside it (the panels show it as unknown, never as zero).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.alerts import Alert, AlertEvaluator, AlertThresholds
from core.catalog import Catalog
from core.controller.metrics import ControllerMetrics
from core.cost import CostAccountant, CostLine, LineKey, accumulate
from core.errors import SchedulerError, TransientError
from core.model import Node
from core.monitor import alert_sample, metric_points
from core.ports import AlertTransition, Cluster, MetricPoint, Metrics, MetricSink
from core.states import AlertState
from core.telemetry import FleetTelemetry, NoDataError

log = logging.getLogger(__name__)


@dataclass
class MonitorState:
    latest: FleetTelemetry | None = None
    error: str | None = None
    # Set with ``error`` when the source answered without current data (NoDataError).
    no_data: str | None = None
    firing: tuple[Alert, ...] = ()
    pending: tuple[Alert, ...] = ()
    last_sample_at: float | None = None
    # Increases with every stored sample (steps that act on samples compare it).
    stored: int = 0


def _key(alert: Alert) -> tuple[str, tuple[tuple[str, str], ...]]:
    return alert.name, tuple(sorted(alert.labels.items()))


class Monitor:
    """Samples the fleet into the sink and the alert evaluator.

    With a ``cluster`` (and the ``catalog``'s prices) it also books cost: cost
    needs the layout (which model holds which MPS share of which GPU), which only
    the cluster knows; without one, no cost lines are written. The first sample
    after start opens the first interval; an interval longer than
    ``max(1 h, 3 × interval_s)`` (a gap) is not booked.

    ``keep``: which points are stored (all when None). Next to a Prometheus, which holds
    every series for the charts, the store keeps only those decisions read (the fleet's);
    alerts and cost are evaluated on the whole sample either way.
    """

    def __init__(self, *, metrics: Metrics, sink: MetricSink, interval_s: float,
                 thresholds: AlertThresholds | None = None, cluster: Cluster | None = None,
                 catalog: Catalog | None = None,
                 keep: Callable[[MetricPoint], bool] | None = None) -> None:
        if cluster is not None and catalog is None:
            raise ValueError("a Monitor that books cost (given a cluster) needs the catalog")
        self.metrics = metrics
        self.sink = sink
        self.interval_s = interval_s
        self.keep = keep
        self.evaluator = AlertEvaluator(thresholds)
        self.state = MonitorState()
        self.cluster = cluster
        self.costs = None if cluster is None or catalog is None else CostAccountant(
            catalog, max_interval_s=max(3600.0, 3 * interval_s))
        # The last sample and the layout read with it: the start of the next interval.
        self._cost_prev: tuple[FleetTelemetry, tuple[Node, ...] | None] | None = None
        self._lock = threading.Lock()
        self._sample_lock = threading.Lock()

    def sample_once(self, *, persist: bool = True) -> MonitorState:
        """Read one sample; store it unless ``persist`` is False (a standby's live view)."""
        # One sample at a time: a read and its record never interleave with another's.
        with self._sample_lock:
            try:
                telemetry = self.metrics.telemetry()
            except TransientError as exc:
                self.fail(str(exc), no_data=exc.reason if isinstance(exc, NoDataError) else None)
                return self.state
            if not persist:
                evaluation = self.evaluator.observe(alert_sample(telemetry))
                with self._lock:
                    self.state = MonitorState(
                        latest=telemetry, error=None, firing=evaluation.firing,
                        pending=tuple(a for a in evaluation.alerts if not a.firing),
                        last_sample_at=telemetry.timestamp, stored=self.state.stored)
                    self._cost_prev = None  # the leader books cost meanwhile
                return self.state
            self.record_many([telemetry], layouts=[self.layout()])
            return self.state

    def fail(self, reason: str, *, no_data: str | None = None) -> None:
        """Keep the last reading but say why there is no new one (``no_data``: the source
        answered without current data)."""
        with self._lock:
            self.state.error = reason
            self.state.no_data = no_data

    def layout(self) -> tuple[Node, ...] | None:
        """The fleet layout now; None without a cluster or when it does not answer."""
        if self.cluster is None:
            return None
        try:
            return tuple(self.cluster.nodes())
        except SchedulerError as exc:  # this interval goes unbooked; sampling goes on
            log.warning("cost accounting: the cluster did not report its layout: %s", exc)
            return None

    def record(self, telemetry: FleetTelemetry, *, layout: tuple[Node, ...] | None = None
               ) -> None:
        """Evaluate one sample and store it (points, alert transitions, cost) at once.

        ``layout``: the fleet layout read with the sample; read now when not given.
        """
        self.record_many([telemetry], layouts=None if layout is None else [layout])

    def record_many(self, samples: Sequence[FleetTelemetry], *,
                    layouts: Sequence[tuple[Node, ...] | None] | None = None) -> None:
        """Evaluate samples in order; store all of them in one sink call.

        ``layouts``: the fleet layout read with each sample; when not given, the
        layout now stands for every sample's.
        """
        if layouts is None:
            layouts = [self.layout()] * len(samples) if self.costs is not None else []
        elif len(layouts) != len(samples):
            raise ValueError("record_many needs one layout per sample")
        points: list[MetricPoint] = []
        events: list[AlertTransition] = []
        booked: list[list[CostLine]] = []  # each interval's lines (one line per key)
        cost_prev = self._cost_prev
        state = self.state
        for i, telemetry in enumerate(samples):
            if self.costs is not None:
                layout = layouts[i]
                if cost_prev is not None:
                    held = cost_prev[1] if cost_prev[1] is not None else layout
                    if held is not None:
                        booked.append(self.costs.interval(prev=cost_prev[0], cur=telemetry,
                                                          layout=held))
                cost_prev = (telemetry, layout)
            evaluation = self.evaluator.observe(alert_sample(telemetry))
            previous = {_key(a) for a in state.firing}
            at = telemetry.timestamp
            sampled = metric_points(
                telemetry, layout=layouts[i] if self.costs is not None else None,
                catalog=self.costs.prices if self.costs is not None else None)
            points += sampled if self.keep is None else [p for p in sampled if self.keep(p)]
            events += [AlertTransition(name=a.name, severity=a.severity,
                                       state=AlertState.FIRING, labels=a.labels,
                                       summary=a.summary, at=at)
                       for a in evaluation.firing if _key(a) not in previous]
            events += [AlertTransition(name=a.name, severity=a.severity,
                                       state=AlertState.RESOLVED, labels=a.labels,
                                       summary="", at=at)
                       for a in evaluation.resolved]
            state = MonitorState(
                latest=telemetry, error=None, firing=evaluation.firing,
                pending=tuple(a for a in evaluation.alerts if not a.firing),
                last_sample_at=telemetry.timestamp, stored=state.stored + 1)
        if len(booked) == 1:  # one interval's lines are merged already: as they are
            cost_lines = booked[0]
        else:
            ledger: dict[LineKey, CostLine] = {}
            for lines in booked:
                accumulate(ledger, lines)
            cost_lines = list(ledger.values())
        self.sink.record_sample(points=points, alerts=events, cost_lines=cost_lines)
        with self._lock:
            self.state = state
            self._cost_prev = cost_prev


class MonitorStep:
    """Takes a sample every ``interval_s``: stored on the leader, live-only on a standby."""

    name = "monitor"
    leader_only = False

    def __init__(self, monitor: Monitor, *, metrics: ControllerMetrics) -> None:
        self.monitor = monitor
        self.metrics = metrics
        self._next: float | None = None

    def due(self, now: float) -> bool:
        return self._next is None or now >= self._next

    def run(self, *, now: float, leading: bool) -> None:
        self._next = now + self.monitor.interval_s
        state = self.monitor.sample_once(persist=leading)
        if not leading:
            return
        outcome = "unavailable" if state.error is not None or state.latest is None \
            else "stored"
        self.metrics.monitor_samples.labels(outcome=outcome).inc()


class OnEachSample(ABC):
    """A leader step due once per sample the monitor stored (autoscaling, feedback):
    it acts on that sample and waits for the next one; a failed sample is skipped."""

    leader_only = True

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self._seen = 0

    def due(self, now: float) -> bool:
        state = self.monitor.state
        return state.stored > self._seen and state.error is None and state.latest is not None

    def run(self, *, now: float, leading: bool) -> None:
        state = self.monitor.state
        self._seen = state.stored
        if state.latest is not None:
            self.on_sample(state.latest, now=now)

    @abstractmethod
    def on_sample(self, telemetry: FleetTelemetry, *, now: float) -> None: ...

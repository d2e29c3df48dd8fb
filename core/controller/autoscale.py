"""The autoscaling step: runs the autoscaler on each stored sample and carries it out.

A scale-up enqueues placement requests like the deployment's newest one
(source ``autoscaler``); a scale-down deletes the least valuable replicas and
marks their requests removed, in the same transaction as the decision record.
Every action and the start of every stabilization window is stored with its
inputs. The latest recommendations are published (``AutoscalingStatus``) for
consoles in other processes. While an operator has paused autoscaling — or the
pause switch cannot be read, which counts as paused (fail closed) — it
recommends but does not act, and windows restart after a resume.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from core.autoscale import (
    Action,
    Autoscaler,
    DeploymentView,
    Recommendation,
    Replica,
    fleet_views,
    least_valuable,
)
from core.autoscale import scale_up_requests as more_like
from core.autoscale_forecast import DailyLookup
from core.autoscale_policy import Decision, SloPolicy, spec_for
from core.autoscale_slo import Addition
from core.controller.metrics import ControllerMetrics
from core.controller.monitor import Monitor, OnEachSample
from core.controller.payloads import AutoscalingPause, AutoscalingStatus, DeploymentScaling
from core.errors import SchedulerError, ValidationError
from core.model import PlacementRequest, Priority
from core.ports import AutoscalingRecord, AutoscalingStore, Cluster, FlagStore, ReplicaPod
from core.settings import Settings
from core.sim.perf_model import PerfModel
from core.slo_settings import POLICY_SLO
from core.states import AutoscalingAction, FlagKey
from core.telemetry import FleetTelemetry

log = logging.getLogger(__name__)



def _slo_recommendation(decision: Decision, view: DeploymentView) -> Recommendation:
    """The ``slo`` plan as a recommendation (it is already stabilized): requests in flight
    count as replicas on their way, and no replica is removed while some are."""
    plan = decision.plan
    flying = view.in_flight
    replicas = plan.replicas + flying
    f = decision.forecast
    inputs: dict[str, float | None] = {
        "replicas": float(replicas), "need_rps": plan.need_rps,
        "capacity_rps": round(plan.capacity_rps, 4),
        "forecast_rps": None if f is None else round(f.expected_rps, 4),
        "burst_factor": None if f is None else round(f.burst_factor, 4),
        "recent_rps": None if f is None else round(f.recent_rps, 4)}
    adds = len(plan.additions) - flying
    if adds > 0:
        return Recommendation(plan.key, Action.UP, replicas, replicas + adds,
                              f"slo: {plan.reason}; {plan.type_choice}", pending=Action.UP,
                              fires_in_s=0.0, inputs=inputs)
    if plan.removals and not flying:
        return Recommendation(plan.key, Action.DOWN, replicas, replicas - len(plan.removals),
                              f"slo: {plan.reason}", pending=Action.DOWN, fires_in_s=0.0,
                              inputs=inputs)
    why = plan.reason if not flying else f"{plan.reason}; {flying} replica(s) on their way"
    return Recommendation(plan.key, Action.HOLD, replicas, replicas, f"slo: {why}",
                          inputs=inputs)


def _finite(value: object) -> object:
    """JSON has no infinity: an infinite cost per inference (nothing served) is stored as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _inputs(rec: Recommendation, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    inputs = {k: _finite(v) for k, v in rec.inputs.items()}
    inputs.update(extra or {})
    return inputs


def read_pause(flags: FlagStore) -> tuple[bool, str]:
    """(paused, why); a switch that cannot be read counts as paused."""
    raw = flags.get_flag(FlagKey.AUTOSCALING_PAUSED)
    if raw is None:
        return False, ""
    try:
        pause = AutoscalingPause.from_json(raw)
    except ValidationError as exc:
        return True, f"the pause switch cannot be read ({exc}): acting as paused"
    return pause.paused, pause.reason


class Autoscaling:
    """Decides on one telemetry sample and acts (the step wraps it)."""

    def __init__(self, *, store: AutoscalingStore, flags: FlagStore, cluster: Cluster,
                 settings: Settings, identity: str, metrics: ControllerMetrics,
                 perf: PerfModel | None = None, daily: DailyLookup | None = None) -> None:
        self.store = store
        self.flags = flags
        self.cluster = cluster
        self.settings = settings
        self.config = settings.autoscaling
        self.identity = identity
        self.metrics = metrics
        self.autoscaler = Autoscaler(self.config.policy)
        # The ``slo`` policy (the default, SPEC §3.6): the same class the evaluation runs.
        self.slo = SloPolicy(settings, perf or PerfModel.for_catalog(settings.catalog),
                             daily=daily)
        self._pending: dict[str, Action] = {}

    def run(self, telemetry: FleetTelemetry, *, now: float) -> list[Recommendation]:
        pods = self.cluster.replica_pods()
        paused, _ = read_pause(self.flags)
        in_flight = self.store.in_flight_by_deployment()
        self.metrics.autoscaling_paused.set(1 if paused else 0)
        if paused:
            self.autoscaler.reset()
            self.slo.reset()
            self._pending.clear()
        views = fleet_views(telemetry, pods, self.settings.catalog, in_flight=dict(in_flight))
        decisions = self._slo_decisions(telemetry, views, pods, now=now)
        recs: list[Recommendation] = []
        status: list[DeploymentScaling] = []
        for view in views:
            sig = view.signals
            policy = self.config.policy.for_deployment(sig.deployment, self.config.limits)
            decision = decisions.get(sig.deployment)
            if decision is not None:
                rec = _slo_recommendation(decision, view)
            else:
                rec = self.autoscaler.observe(sig, now=now, policy=policy)
            recs.append(rec)
            acted = False
            if paused:
                self.autoscaler.reset()
            elif rec.action is Action.UP:
                types = [] if decision is None else \
                    list(decision.plan.additions)[view.in_flight:]
                acted = self._scale_up(rec, now=now, gpu_types=types)
            elif rec.action is Action.DOWN:
                victims = least_valuable(view.replicas, rec.replicas - rec.target) \
                    if decision is None else \
                    [r for r in view.replicas if r.name in decision.plan.removals]
                acted = self._scale_down(rec, victims, now=now)
            if not acted and not paused and rec.pending is not Action.HOLD \
                    and self._pending.get(rec.deployment) is not rec.pending:
                self.store.record_autoscaling(AutoscalingRecord(
                    deployment=rec.deployment, action=AutoscalingAction.HOLD,
                    replicas_before=rec.replicas, replicas_after=rec.replicas,
                    inputs=_inputs(rec), reason=f"{rec.pending.value} recommended; {rec.reason}"),
                    now=now)
            self._pending[rec.deployment] = rec.pending if not acted else Action.HOLD
            window = (policy.up_stabilization_s if rec.pending is Action.UP
                      else policy.down_stabilization_s)
            status.append(DeploymentScaling(
                deployment=rec.deployment, replicas=rec.replicas,
                running=sum(1 for r in view.replicas if r.running), in_flight=view.in_flight,
                queue=sig.queue_waiting, tops_per_w=sig.tops_per_w,
                cost_per_inference=sig.cost_per_inference, utilization=sig.utilization,
                action=rec.action, target=rec.target,
                reason=rec.reason, pending=rec.pending,
                pending_since=rec.pending_since, fires_in_s=rec.fires_in_s,
                window_s=window if rec.pending is not Action.HOLD else None,
                min_replicas=policy.min_replicas, max_replicas=policy.max_replicas,
                **self._slo_status(decision)))
        self.flags.set_flag(FlagKey.AUTOSCALING_STATUS,
                            AutoscalingStatus(at=now, paused=paused,
                                              deployments=tuple(status)).to_json(),
                            actor=self.identity, now=now)
        return recs

    def _template(self, deployment: str) -> PlacementRequest | None:
        namespace, model = deployment.split("/", 1)
        latest = self.store.latest_request_for(namespace=namespace, model=model)
        if latest is not None:
            return latest
        pods = [p for p in self.cluster.replica_pods() if p.deployment == deployment]
        if not pods:
            return None
        memory_gb = max(p.memory_mib for p in pods) / 1024
        return PlacementRequest(model_name=model, model_memory_gb=memory_gb,
                                priority=Priority[self.config.default_priority],
                                latency_sla_ms=self.config.default_latency_sla_ms,
                                namespace=namespace)

    def _slo_decisions(self, telemetry: FleetTelemetry, views: Sequence[DeploymentView],
                       pods: Sequence[ReplicaPod], *, now: float) -> dict[str, Decision]:
        """The ``slo`` policy's plans for the deployments that use it."""
        keys = [v.signals.deployment for v in views
                if self.settings.slo.policy_for(v.signals.deployment) == POLICY_SLO]
        if not keys:
            return {}
        # Rates are counter deltas over the readings' own times: the step runs a variable
        # while after the reading was taken (a busy process), and timing the deltas by the
        # step's clock turned that jitter into traffic bursts (phantom scale-ups).
        at = telemetry.timestamp if math.isfinite(telemetry.timestamp) else now
        self.slo.observe(telemetry, now=at)
        specs = {}
        for key in keys:
            memory = max((p.memory_mib for p in pods if p.deployment == key), default=0)
            if memory <= 0:
                template = self._template(key)
                if template is None:
                    continue
                memory = int(template.model_memory_gb * 1024)
            bounds = self.config.policy.for_deployment(key, self.config.limits)
            specs[key] = spec_for(self.settings, key=key, memory_mib=memory,
                                  min_replicas=bounds.min_replicas,
                                  max_replicas=bounds.max_replicas)
        if not specs:
            return {}
        return {d.plan.key: d for d in self.slo.decide(now=at, nodes=self.cluster.nodes(),
                                                        pods=pods, specs=specs)}

    def _slo_status(self, decision: Decision | None) -> dict[str, Any]:
        if decision is None:
            return {}
        plan = decision.plan
        return {"policy": POLICY_SLO, "objectives": plan.objectives, "need_rps": plan.need_rps,
                "capacity_rps": plan.capacity_rps,
                "forecast": None if decision.forecast is None else decision.forecast.to_json(),
                "capacity_per_type": {t: c.rps for t, c in plan.per_type.items()},
                "limited_by": {t: c.limited_by for t, c in plan.per_type.items()},
                "type_choice": plan.type_choice,
                "attainment": self.slo.attainment(plan.key)}

    def _scale_up(self, rec: Recommendation, *, now: float,
                  gpu_types: Sequence[Addition] = ()) -> bool:
        template = self._template(rec.deployment)
        if template is None:
            log.warning("cannot scale up %s: no request or pod to copy", rec.deployment)
            return False
        requests = more_like(template, count=rec.target - rec.replicas, tag=f"{int(now)}")
        # Where the ``slo`` policy sized each for, as labels the placement filter
        # ``AutoscalerChoice`` honours: the GPU type, and a free slot of a GPU in use.
        requests = [replace(r, labels=MappingProxyType({**r.labels, **a.labels()}))
                    for r, a in zip(requests, gpu_types, strict=False)] + requests[len(gpu_types):]
        self.store.record_autoscaling(
            AutoscalingRecord(deployment=rec.deployment, action=AutoscalingAction.UP,
                              replicas_before=rec.replicas, replicas_after=rec.target,
                              reason=rec.reason,
                              inputs=_inputs(rec, {"requests": [r.request_id
                                                                for r in requests]})),
            now=now, enqueue=requests)
        self.metrics.autoscaling_actions.labels(action=AutoscalingAction.UP.value).inc()
        log.info("autoscaler: %s up %d → %d (%s)", rec.deployment, rec.replicas, rec.target,
                 rec.reason)
        return True

    def _scale_down(self, rec: Recommendation, victims: Sequence[Replica], *,
                    now: float) -> bool:
        removed: list[str] = []
        for r in victims:
            try:
                self.cluster.delete_pod(r.namespace, r.name)
            except SchedulerError as exc:
                log.warning("autoscaler could not delete %s/%s: %s", r.namespace, r.name, exc)
                continue
            removed.append(r.name)
        if not removed:
            return False
        owners = [r.owner for r in victims if r.name in removed]
        after = rec.replicas - len(removed)
        self.store.record_autoscaling(
            AutoscalingRecord(deployment=rec.deployment, action=AutoscalingAction.DOWN,
                              replicas_before=rec.replicas, replicas_after=after,
                              reason=rec.reason,
                              inputs=_inputs(rec, {"removed": removed,
                                                   "removed_requests": owners})),
            now=now, removed_requests=owners)
        self.metrics.autoscaling_actions.labels(action=AutoscalingAction.DOWN.value).inc()
        log.info("autoscaler: %s down %d → %d (%s)", rec.deployment, rec.replicas, after,
                 rec.reason)
        return True


class AutoscaleStep(OnEachSample):
    """Due once per stored sample of the monitor (SPEC §3.6 runs on each sample)."""

    name = "autoscale"

    def __init__(self, autoscaling: Autoscaling, monitor: Monitor) -> None:
        super().__init__(monitor)
        self.autoscaling = autoscaling

    def on_sample(self, telemetry: FleetTelemetry, *, now: float) -> None:
        try:
            self.autoscaling.run(telemetry, now=now)
        except SchedulerError as exc:  # the cluster is unreachable: try at the next sample
            log.warning("autoscaling skipped: %s", exc)

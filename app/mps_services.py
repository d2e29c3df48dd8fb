"""Services of the MPS planner page and the gate panels: proposals, gates, best update time.

Pages read these and never build domain objects themselves. Each reads what it
needs through ``app.services`` (the cluster's nodes, the monitor's live reading,
the stored series, the queue) and hands the pure cores their inputs:
``core.mps.planner`` for proposals, ``core.rollout.gates`` for the gate report,
``core.rollout.timing`` for the best update time.

One action: ``create_rollout_plan`` (operator) turns chosen proposals into a
``core.rollout.plan.RolloutPlan``, refused with the reason when it would disrupt
more than its update type allows or leave too little free capacity, and stores
it awaiting an approver (``db.rollouts.create_plan``) with the gate report, the
diffs and the predicted impact the person was shown.

Unknown is not zero: a dependency that does not answer turns the figures read
through it into unknown, with the reason, and the gates built on them fail
closed (the report says which dependency and why). The planner needs the
cluster's nodes; without them it raises ``ClusterUnavailable`` for the page to
show.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import streamlit as st

from app import services
from app.actions import action, audit_details
from core.auth import Actor, Role
from core.errors import ValidationError
from core.model import Node, PlacementRequest
from core.mps.planner import (
    Disruption,
    PlannerResult,
    Proposal,
    change_groups,
    plan_mps,
    predict_disruption,
    proposal_summary,
)
from core.rollout import gates, timing
from core.rollout.gates import PEAK_WINDOW_S, GateInputs, GateReport, evaluate_gates, qps_band
from core.rollout.plan import NodeChange, RolloutPlan, Strategy, Timeouts, validate_plan
from core.rollout.timing import DAY_S, UpdateTimeAdvice
from core.states import RequestState
from db import metrics, outbox, queue, rollouts

PLANNER_REQUEST_LIMIT = 50


def queued_requests(limit: int = PLANNER_REQUEST_LIMIT) -> list[PlacementRequest]:
    """The requests waiting in the queue, oldest first: the workloads to plan for."""
    with services.store_call(), services.runtime().factory() as s:
        rows = queue.list_requests(s, statuses=[RequestState.QUEUED], limit=limit)
    return [q.request for q in reversed(rows)]


def planner_proposals(extra: Sequence[PlacementRequest] = (), *,
                      include_queue: bool = True) -> PlannerResult:
    """Proposals for the fleet as it stands, plus the queued requests (unless
    ``include_queue`` is off) and ``extra`` (a forecast typed on the page).

    ``ClusterUnavailable`` when the cluster does not answer; the queue is skipped
    (with the store's ``StoreUnavailable``) only by the caller's choice."""
    s = services.settings()
    nodes = services.nodes_this_run()
    reading = services.live_reading_now(nodes)
    requests = [*(queued_requests() if include_queue else ()), *extra]
    return plan_mps(nodes, catalog=s.catalog, requests=requests,
                    scheduler=services.scheduler() if requests else None,
                    telemetry=reading.current(), backend=s.rollouts.mps_backend,
                    max_clients=s.placement.max_mps_clients_per_gpu)


PLAN_REUSE_S = 60.0


def layout_signature(nodes: Sequence[Node]) -> int:
    """What a plan depends on in ``nodes``: every field but the GPUs' utilization and
    power (those move with every reading; the plan's energy figures are the reading's).
    Kept while ``nodes`` is the same read (``services.per_read``)."""
    return services.per_read("layout", nodes, lambda ns: hash(tuple(
        (n.name, n.schedulable, n.ready, n.device_plugin_config, n.gpu_replicas,
         tuple(sorted(n.labels.items())),
         tuple((g.index, g.gpu_type, g.memory_total_mib, g.healthy, g.mig_enabled, g.uuid,
                g.other_memory_mib, g.slices) for g in n.gpus))
        for n in ns)))


def page_proposals(extra: Sequence[PlacementRequest] = (), *,
                   include_queue: bool = True) -> PlannerResult:
    """``planner_proposals`` for the page, reused for up to ``PLAN_REUSE_S`` while the
    cluster's layout (``layout_signature``), the requests planned for, the weights and
    whether the live reading is known stay the same: a 5,000-GPU fleet takes over a
    second to plan, and the page reruns every few seconds. A reused plan's cost impacts
    are from the live reading it was made with; "Create rollout plan" plans again from
    what is true then (``create_rollout_plan``)."""
    s = services.settings()
    nodes = services.nodes_this_run()
    reading = services.live_reading_now(nodes).current()
    requests = (*(queued_requests() if include_queue else ()), *extra)
    sched = services.scheduler() if requests else None
    key = (layout_signature(nodes), repr(requests), reading is None,
           None if sched is None else id(sched), s.rollouts.mps_backend,
           s.placement.max_mps_clients_per_gpu)
    return _reused_plan(hash(key), _nodes=nodes, _requests=requests, _scheduler=sched,
                        _reading=reading)


@st.cache_resource(ttl=PLAN_REUSE_S, max_entries=4, show_spinner=False)
def _reused_plan(key: int, *, _nodes: tuple[Node, ...], _requests: Sequence[PlacementRequest],
                 _scheduler: Any, _reading: Any) -> PlannerResult:
    s = services.settings()
    return plan_mps(_nodes, catalog=s.catalog, requests=_requests, scheduler=_scheduler,
                    telemetry=_reading, backend=s.rollouts.mps_backend,
                    max_clients=s.placement.max_mps_clients_per_gpu)


@dataclass(frozen=True)
class GateView:
    """A gate report and what the banner shows beside it."""

    report: GateReport
    inputs: GateInputs
    band: str
    band_advice: str


def gate_inputs(*, now: float | None = None) -> GateInputs:
    """What is known now for the gates, each unknown figure with why."""
    at = time.time() if now is None else now
    nodes: tuple[Node, ...] | None = None
    cluster_problem = None
    try:
        nodes = services.nodes_this_run()
    except services.Unavailable as exc:
        cluster_problem = str(exc)
    reading = services.live_reading_now(nodes)
    t = reading.current()
    points: list[tuple[float, float]] | None = None
    store_problem = None
    try:
        with services.store_call(), services.runtime().factory() as s:
            points = metrics.series(s, metric="qps_1m", key="fleet",
                                    since=at - PEAK_WINDOW_S, until=at,
                                    retention=services.settings().retention)
    except services.Unavailable as exc:
        store_problem = str(exc)
    return gates.gate_inputs(
        now=at, telemetry=t, metrics_problem=None if t is not None else
        (reading.unknown or "no sample yet"), nodes=nodes, cluster_problem=cluster_problem,
        firing=services.monitor_state().firing, qps_points=points, store_problem=store_problem)


def gate_report(update_type: str, *, now: float | None = None) -> GateView:
    """Every gate of SPEC §4.2 for a change of ``update_type`` (``ValidationError``
    naming ``update_type`` for an unknown one)."""
    s = services.settings()
    kind = s.rollouts.update_type(update_type)
    inputs = gate_inputs(now=now)
    band, advice = qps_band(inputs.qps, s.qps_bands)
    return GateView(report=evaluate_gates(inputs, update_type=kind, bands=s.qps_bands),
                    inputs=inputs, band=band, band_advice=advice)


def update_types() -> tuple[str, ...]:
    return tuple(services.settings().rollouts.update_types)


def best_update_time(*, now: float | None = None) -> UpdateTimeAdvice:
    """The next quiet, off-business window from up to 30 days of stored fleet QPS
    (hourly buckets), and the QPS to expect now. ``StoreUnavailable`` without the store."""
    s = services.settings()
    at = time.time() if now is None else now
    days = s.rollouts.timing.history_days
    with services.store_call(), services.runtime().factory() as session:
        points = metrics.series(session, metric="qps_1m", key="fleet", since=at - days * DAY_S,
                                until=at, retention=s.retention,
                                max_points=int(days * 24) + 1)
    reading = services.live_reading_now()
    t = reading.current()
    return best_update_time_from(points, now=at, qps=None if t is None else t.totals.qps)


def best_update_time_from(points: Sequence[tuple[float, float]], *, now: float,
                          qps: float | None) -> UpdateTimeAdvice:
    return timing.best_update_time(points, now=now, settings=services.settings().rollouts,
                                   qps=qps)


def shown_gates(view: GateView) -> Mapping[str, Any]:
    """The gate values an approver was shown, for the audit."""
    return {"gates": view.report.to_json(), "band": view.band,
            "at": datetime.fromtimestamp(view.report.at, UTC).isoformat()}


# ---- rollout plans from proposals
STRATEGY_CHOICES: tuple[str, ...] = tuple(s.value for s in Strategy)


def default_strategy() -> str:
    return services.settings().rollouts.strategy


@dataclass(frozen=True)
class PlanDraft:
    """A plan built from the planner's proposals, validated against its update type, with
    what the person creating it was shown."""

    plan: RolloutPlan
    disruption: Disruption
    proposals: tuple[Proposal, ...]
    gates: GateView


def draft_plan(result: PlannerResult, *, nodes: Sequence[str], strategy: str, update_type: str,
               fleet: Sequence[Node], gates: GateView) -> PlanDraft:
    """The plan for ``nodes`` of ``result``'s proposals; ``ValidationError`` naming the field
    when it is refused: no node, a node without a proposal that a plan can run, an unknown
    strategy or update type, more disruption or less free capacity than the type allows."""
    rs = services.settings().rollouts
    limits = rs.update_type(update_type)
    try:
        kind = Strategy(strategy.replace("-", "_"))
    except ValueError:
        raise ValidationError("strategy", f"must be one of {', '.join(STRATEGY_CHOICES)}") \
            from None
    if not nodes:
        raise ValidationError("nodes", "choose at least one node to change")
    by_node = {p.node: p for p in result.proposals}
    chosen: list[Proposal] = []
    for node in dict.fromkeys(nodes):
        p = by_node.get(node)
        if p is None:
            raise ValidationError("nodes", f"{node} has no proposal: its config already fits")
        if not p.can_roll_out or p.config_before is None:
            raise ValidationError("nodes", f"{node}: the running config is unknown, so a plan "
                                           "cannot say what to roll back to")
        chosen.append(p)
    disruption = predict_disruption(fleet, change_groups(kind.value, [p.node for p in chosen]))
    plan = RolloutPlan(
        strategy=kind, update_type=limits.name,
        changes=tuple(NodeChange(node=p.node, from_config=p.config_before or "",
                                 to_config=p.config_after, gpus=p.gpus) for p in chosen),
        auto_promote=rs.canary.auto_promote,
        predicted_disruption=round(disruption.disruption, 6),
        free_capacity=round(disruption.free_capacity, 6),
        analysis_window_s=rs.canary.analysis_window_s,
        # SPEC §4.1's validation timeout: how long a node may take to come back advertising
        # its new config before the change counts as failed.
        timeouts=Timeouts(restart_s=rs.validation_timeout_s))
    plan = plan.with_canaries(sum(1 for n in fleet if n.gpus))
    validate_plan(plan, limits=limits, known_nodes=[n.name for n in fleet])
    return PlanDraft(plan=plan, disruption=disruption, proposals=tuple(chosen), gates=gates)


def shown_plan(draft: PlanDraft) -> dict[str, Any]:
    """What the person creating the plan was shown: the diff, the gates, the impact."""
    return {"plan": draft.plan.to_json(), **shown_gates(draft.gates),
            "proposals": [proposal_summary(p) for p in draft.proposals],
            "diffs": {p.node: p.diff for p in draft.proposals},
            "disruption": {"predicted": draft.disruption.disruption,
                           "free_capacity": draft.disruption.free_capacity,
                           "worst_group": list(draft.disruption.worst_group)}}


@action("create-rollout-plan", role=Role.OPERATOR, object_type=rollouts.OBJECT_TYPE)
def create_rollout_plan(actor: Actor, *, nodes: Sequence[str], strategy: str, update_type: str,
                        reason: str, extra: Sequence[PlacementRequest] = (),
                        include_queue: bool = True) -> int:
    """Store a rollout plan for ``nodes`` of the planner's proposals, awaiting an approver;
    returns its id. The proposals and the gates are computed again here, on the server,
    from what is true now: the plan, its audit entry and what it records as shown are
    those figures. ``ValidationError`` naming the field when it is refused (no reason, no
    such proposal, more disruption or less free capacity than its update type allows)."""
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError("reason", "is required: say why, for the audit trail")
    services.forget_nodes_read()  # the plan and its gates from a fresh read
    result = planner_proposals(extra, include_queue=include_queue)
    fleet = services.nodes_this_run()
    view = gate_report(update_type)
    draft = draft_plan(result, nodes=nodes, strategy=strategy, update_type=update_type,
                       fleet=fleet, gates=view)
    shown = shown_plan(draft)
    impact = {"disruption": draft.disruption.disruption,
              "free_capacity": draft.disruption.free_capacity,
              "worst_group": list(draft.disruption.worst_group),
              "pods_total": draft.disruption.pods_total,
              "fleet_cost_per_hour_before": str(result.cost_before.total_per_hour),
              "fleet_cost_per_hour_after": str(result.cost_after.total_per_hour),
              "energy_known": result.energy_known,
              "nodes": [proposal_summary(p) for p in draft.proposals]}
    diff = {p.node: {"from": p.config_before, "to": p.config_after, "diff": p.diff}
            for p in draft.proposals}
    at = services.now()
    with services.store_call(), services.runtime().factory.begin() as s:
        plan_id = rollouts.create_plan(
            s, plan=draft.plan, actor=actor.name, reason=reason.strip(), now=at,
            gate_report_json=view.report.to_json(),
            shown=audit_details(actor, shown=shown), config_diff=diff,
            predicted_impact=impact)
        # The approver hears of it (webhook outbox, in this same transaction).
        outbox.notify_approval_waiting(
            s, object_type="rollout", object_id=plan_id, now=at, stage="start",
            summary=f"Rollout plan {plan_id} ({draft.plan.strategy.value}, "
                    f"{', '.join(draft.plan.nodes)}) by {actor.name} waits for an approver",
            fields=(("Update type", update_type), ("Gates now", view.report.summary)))
        return plan_id

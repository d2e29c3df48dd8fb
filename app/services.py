"""Process-wide services for the console, created once and cached by Streamlit.

Pages read and act through these functions; they never open sessions or build
domain objects themselves. The runtime (store migrated to head, the fleet, the
metrics source and the monitor thread) is created once per process.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app.bootstrap import MonitorState, Runtime, build_runtime
from core.adapters.settings_source import load_settings
from core.batch import parse_batch
from core.clock import SystemClock
from core.controller import PlacementConfig, PlacementWorker
from core.controller.payloads import AutoscalingPause, AutoscalingStatus
from core.cost import (
    FleetCost,
    check_dimensions,
    filter_groups,
    fleet_cost,
    report_columns,
    report_rows,
    to_csv,
)
from core.cost import total as cost_total
from core.errors import TransientError, ValidationError
from core.feedback import LAST_RUN_FLAG
from core.model import PlacementRequest, SchedulerWeights
from core.placement import Decision, FleetSnapshot, Scheduler
from core.scheduling import build_scheduler
from core.settings import Settings
from core.states import AutoscalingAction, FlagKey
from core.telemetry import FleetTelemetry
from db import audit, autoscaling, decisions, flags, metrics, queue, versions
from db import weights as weight_store
from db.costs import CostReport
from db.costs import cost_report as ledger_report
from db.engine import redacted
from db.stores import SqlPlacementStore

WORKER = f"console@{platform.node()}/{os.getpid()}"
RETRY_AFTER_SECONDS = 30.0


def now() -> datetime:
    return datetime.now(UTC)


def current_actor() -> str:
    """Who acts. Logins and roles arrive with the auth work; until then, one local operator."""
    return "local-operator"


@st.cache_resource(show_spinner=False)
def settings() -> Settings:
    return load_settings()


def _close(rt: Runtime) -> None:
    rt.close()


@st.cache_resource(show_spinner="Starting the fleet and its history…", on_release=_close)
def runtime() -> Runtime:
    return build_runtime(settings())


def store_display_url() -> str:
    return redacted(runtime().url)


def fleet_source() -> str:
    rt = runtime()
    if rt.twin is not None:
        return f"embedded digital twin ({rt.twin.gpu_count} GPUs)"
    return "Kubernetes cluster"


def monitor_state() -> MonitorState:
    return runtime().monitor.state


def live_cost(telemetry: FleetTelemetry) -> FleetCost | None:
    """The fleet's cost rate at ``telemetry``'s instant: ``core.cost``'s one formula over
    the cluster's layout now, the same for every metrics source. ``None`` (unknown,
    never 0) when the layout cannot be read."""
    layout = runtime().monitor.layout()
    if layout is None:
        return None
    return fleet_cost(telemetry, layout, settings().catalog)


def scheduler() -> Scheduler:
    """A scheduler with the store's active weight version."""
    with runtime().factory() as s:
        active = versions.active_weights(s)
    return _scheduler(active.version if active else None,
                      tuple(active.weights.as_dict().items()) if active else ())


@st.cache_resource(show_spinner=False, max_entries=8)
def _scheduler(version: int | None, weights: tuple[tuple[str, float], ...]) -> Scheduler:
    return build_scheduler(
        settings(), weights=SchedulerWeights(**dict(weights)) if weights else None,
        weight_version=version)


def fleet_snapshot() -> FleetSnapshot:
    """The fleet as it stands now, read through the cluster port."""
    s = settings()
    return FleetSnapshot(runtime().cluster.nodes(), s.catalog,
                         max_clients=s.placement.max_mps_clients_per_gpu)


def parse_request(raw: Mapping[str, Any]) -> PlacementRequest:
    """Validate operator input; raises ``ValidationError`` naming the field."""
    return PlacementRequest.parse(raw, max_gpu_memory_gb=settings().catalog.max_memory_gb)


def parse_upload(text: str, *, kind: str) -> list[PlacementRequest]:
    return parse_batch(text, kind=kind, max_gpu_memory_gb=settings().catalog.max_memory_gb)


def what_if(request: PlacementRequest) -> Decision:
    """Decide on a fresh snapshot of the fleet: nothing is reserved or changed."""
    return scheduler().decide(request, fleet_snapshot())


def submit(requests: Sequence[PlacementRequest], *, source: str, reason: str) -> list[str]:
    """Enqueue requests and audit it, in one transaction: all of them or none."""
    at = now()
    with runtime().factory.begin() as s:
        queued = queue.enqueue_many(s, requests, now=at, source=source)
        ids = [q.request_id for q in queued]
        audit.record_audit(s, actor=current_actor(), action="submit-requests",
                          object_type="placement_request", object_id=",".join(ids)[:128],
                          reason=reason, now=at,
                          details={"count": len(ids), "source": source, "request_ids": ids})
    return ids


@dataclass(frozen=True)
class PassResult:
    placed: list[str]
    requeued: list[str]
    failed: list[str]


def place_queued(limit: int = 50) -> PassResult:
    """One placement pass of the controller's placement step, run from the console.

    Does not wait for pods to reach Running (the background controller does);
    a pod the cluster accepted counts as bound.
    """
    rt = runtime()
    s = settings()
    worker = PlacementWorker(
        store=SqlPlacementStore(rt.factory), cluster=rt.cluster, clock=SystemClock(),
        scheduler=scheduler, catalog=s.catalog,
        max_clients=s.placement.max_mps_clients_per_gpu, worker=WORKER,
        config=PlacementConfig(claim_batch=limit, bind_timeout_s=0,
                               retry_after_s=RETRY_AFTER_SECONDS))
    outcomes = worker.run_once()
    return PassResult([o.request_id for o in outcomes if o.status == "bound"],
                      [o.request_id for o in outcomes if o.status == "queued"],
                      [o.request_id for o in outcomes if o.status == "failed"])


def queue_frame(limit: int = 200) -> tuple[dict[str, int], pd.DataFrame]:
    """Counts per state and the newest requests, as a table."""
    with runtime().factory() as s:
        counts = queue.queue_counts(s)
        rows = queue.list_requests(s, limit=limit)
    frame = pd.DataFrame([{
        "request": q.request_id, "model": q.request.model_name,
        "memory GB": q.request.model_memory_gb, "priority": q.request.priority.value,
        "SLA ms": q.request.latency_sla_ms, "status": q.status, "attempts": q.attempts,
        "source": q.source, "reason": q.reason or "", "updated": q.updated_at,
    } for q in rows])
    return counts, frame


def decision_history(limit: int = 100) -> list[decisions.DecisionRecord]:
    with runtime().factory() as s:
        return decisions.decision_history(s, limit=limit)


def fleet_series(metric: str, *, hours: float, key: str = "fleet") -> pd.DataFrame:
    """One stored series as (time, value) over the last ``hours``."""
    until = now()
    since = until - timedelta(hours=hours)
    with runtime().factory() as s:
        points = metrics.series(s, metric=metric, key=key, since=since.timestamp(),
                             until=until.timestamp())
    frame = pd.DataFrame(points, columns=["ts", "value"])
    frame["time"] = pd.to_datetime(frame["ts"], unit="s", utc=True)
    return frame


def set_schedulable(node: str, schedulable: bool, *, reason: str) -> None:
    """Cordon or uncordon a node, and audit it."""
    rt = runtime()
    rt.cluster.set_schedulable(node, schedulable)
    with rt.factory.begin() as s:
        audit.record_audit(s, actor=current_actor(),
                          action="uncordon" if schedulable else "cordon",
                          object_type="node", object_id=node, reason=reason, now=now())


# ---- autoscaling


@dataclass(frozen=True)
class AutoscalingView:
    """The controller's latest recommendations, as the Autoscaling page shows them."""

    sampled_at: datetime | None
    paused: bool
    paused_by: str | None
    paused_reason: str
    paused_at: datetime | None
    frame: pd.DataFrame
    unreadable: tuple[str, ...] = ()  # payloads that could not be read, and why


def autoscaling_view() -> AutoscalingView:
    """Per deployment: replicas, queue, signals, recommendation and its countdown.

    A status or pause switch that cannot be read shows as unknown (``unreadable``),
    and an unreadable switch as paused, the way the controller treats it."""
    with runtime().factory() as s:
        status_flag = flags.get_flag(s, FlagKey.AUTOSCALING_STATUS)
        paused_flag = flags.get_flag(s, FlagKey.AUTOSCALING_PAUSED)
    problems: list[str] = []
    is_paused, why_paused = False, ""
    if paused_flag is not None:
        try:
            pause = AutoscalingPause.from_json(paused_flag.value)
            is_paused, why_paused = pause.paused, pause.reason
        except ValidationError as exc:
            is_paused, why_paused = True, f"the pause switch cannot be read ({exc})"
            problems.append(str(exc))
    rows = []
    sampled_at = None
    status: AutoscalingStatus | None = None
    if status_flag is not None:
        try:
            status = AutoscalingStatus.from_json(status_flag.value)
        except ValidationError as exc:
            problems.append(f"the controller's status cannot be read: {exc}")
    if status is not None:
        sampled_at = datetime.fromtimestamp(status.at, UTC)
        elapsed = max(0.0, now().timestamp() - status.at)
        for d in status.deployments:
            remaining = None if d.fires_in_s is None else max(0.0, d.fires_in_s - elapsed)
            cost = d.cost_per_inference
            rows.append({
                "deployment": d.deployment, "running": d.running,
                "in flight": d.in_flight, "replicas": d.replicas,
                "min": d.min_replicas, "max": d.max_replicas,
                "queue": d.queue, "TOPS/W": d.tops_per_w,
                "$ / 1k inferences": None if cost is None else cost * 1000,
                "utilization": d.utilization,
                "recommendation": (d.pending if d.pending is not AutoscalingAction.HOLD
                                   else d.action).value,
                "target": d.target,
                "acts in s": remaining,
                "window done": (None if remaining is None or not d.window_s
                                else 1.0 - remaining / d.window_s),
                "why": d.reason,
            })
    return AutoscalingView(sampled_at=sampled_at, paused=is_paused,
                           paused_by=paused_flag.updated_by if paused_flag else None,
                           paused_reason=why_paused,
                           paused_at=paused_flag.updated_at if paused_flag else None,
                           frame=pd.DataFrame(rows), unreadable=tuple(problems))


def autoscaling_history(hours: float = 24.0) -> pd.DataFrame:
    """Autoscaling decisions over the last ``hours``, newest first."""
    with runtime().factory() as s:
        rows = autoscaling.autoscaling_history(s, since=now() - timedelta(hours=hours), limit=2000)
    return pd.DataFrame([{
        "time": r.created_at, "deployment": r.deployment, "action": r.action,
        "before": r.replicas_before, "after": r.replicas_after, "reason": r.reason,
        "queue": r.inputs.get("queue_waiting"), "TOPS/W": r.inputs.get("tops_per_w"),
        "cost per inference": r.inputs.get("cost_per_inference"),
    } for r in rows])


def set_autoscaling_paused(paused: bool, *, reason: str) -> None:
    """Pause or resume autoscaling for every controller (a durable flag), and audit it."""
    if not reason.strip():
        raise ValidationError("reason", "say why autoscaling is paused or resumed")
    at = now()
    with runtime().factory.begin() as s:
        flags.set_flag(s, key=FlagKey.AUTOSCALING_PAUSED,
                       value=AutoscalingPause(paused=paused, reason=reason.strip()).to_json(),
                       actor=current_actor(), now=at)
        audit.record_audit(s, actor=current_actor(),
                          action="pause-autoscaling" if paused else "resume-autoscaling",
                          object_type="autoscaler", object_id="all", reason=reason.strip(),
                          now=at)


def twin_models() -> list[str]:
    """Models with replicas on the embedded twin (empty for a real cluster)."""
    twin = runtime().twin
    if twin is None:
        return []
    return sorted({p.model for p in twin.replica_pods()})


def surge_traffic(model: str, *, factor: float, minutes: float) -> str:
    """Embedded mode only: multiply one model's traffic for a while (audited)."""
    from core.sim.faults import traffic_surge

    twin = runtime().twin
    if twin is None:
        raise ValidationError("cluster", "traffic can only be simulated on the embedded twin")
    if not (0 < minutes <= 240):
        raise ValidationError("minutes", "must be within (0, 240]")
    fault_id = twin.inject(traffic_surge(model, factor=factor, duration_s=minutes * 60))
    with runtime().factory.begin() as s:
        audit.record_audit(s, actor=current_actor(), action="simulate-traffic-surge",
                          object_type="deployment", object_id=model,
                          reason=f"×{factor:g} for {minutes:g} min", now=now(),
                          details={"fault": fault_id})
    return fault_id


# ---- scheduler weights
WeightConflict = weight_store.WeightConflict
ROLLBACK_TARGETS = weight_store.ROLLBACK_TARGETS


def weight_versions() -> list[versions.WeightVersion]:
    """Every weight version, newest first, with its evidence."""
    with runtime().factory() as s:
        return versions.list_weight_versions(s)


def decide_weights(version: int, *, approve: bool, reason: str) -> versions.WeightVersion:
    """Approve or reject a proposed version; the audit entry lands in the same transaction.

    Raises ``ValidationError`` (no reason), ``KeyError`` (no such version) or
    ``weight_store.WeightConflict`` (it is no longer proposed).
    """
    at, actor = now(), current_actor()
    with runtime().factory.begin() as s:
        if approve:
            return weight_store.approve(s, version=version, actor=actor, reason=reason, now=at)
        return weight_store.reject(s, version=version, actor=actor, reason=reason, now=at)


def roll_back_weights(to_version: int, *, reason: str) -> versions.WeightVersion:
    """Make an earlier version active again, audited in the same transaction."""
    with runtime().factory.begin() as s:
        return weight_store.roll_back(s, to_version=to_version, actor=current_actor(),
                                      reason=reason, now=now())


def last_feedback_run() -> flags.Flag | None:
    """The controller's latest feedback run: its proposal, or why it made none."""
    with runtime().factory() as s:
        return flags.get_flag(s, LAST_RUN_FLAG)


# ---- cost reports


def cost_report(*, first_day: date, last_day: date, group_by: Sequence[str],
                filter_text: str = "") -> CostReport:
    """The cost ledger over the UTC days ``first_day``..``last_day`` (inclusive), grouped.

    ``filter_text`` keeps the groups whose key contains it (totals follow the rows
    kept). Raises ``ValidationError`` for a bad range or dimension and
    ``TransientError`` when the store does not answer.
    """
    if first_day > last_day:
        raise ValidationError("range", "the first day is after the last day")
    report = _cost_report(runtime().url, first_day, last_day, check_dimensions(group_by))
    if not filter_text.strip():
        return report
    groups = filter_groups(report.groups, filter_text)
    return replace(report, groups=groups, total=cost_total(groups))


@st.cache_data(ttl=15, show_spinner=False)
def _cost_report(store_url: str, first_day: date, last_day: date,
                 by: tuple[str, ...]) -> CostReport:
    # ``store_url`` only keys the cache: a report belongs to the store it was read from.
    since = datetime.combine(first_day, datetime.min.time(), UTC)
    until = datetime.combine(last_day, datetime.min.time(), UTC) + timedelta(days=1)
    try:
        with runtime().factory() as s:
            return ledger_report(s, since=since, until=until, group_by=by)
    except SQLAlchemyError as exc:
        raise TransientError(f"the store did not answer ({type(exc).__name__})") from exc


def cost_rows(report: CostReport) -> list[dict[str, Any]]:
    """The report's rows, column → value: the table shows these and the CSV holds them."""
    return report_rows(report.groups, by=report.by)


def cost_csv(report: CostReport) -> str:
    """The report as CSV (text cells neutralized against formula injection)."""
    return to_csv(cost_rows(report), columns=report_columns(report.by))

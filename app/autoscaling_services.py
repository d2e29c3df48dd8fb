"""The Autoscaling page's services: the controller's latest recommendations per
deployment (with the ``slo`` policy's forecast, capacity per GPU type and choice of
type), the decision history, and the audited pause switch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from app import services
from app.actions import action, audit_details
from core.auth import Actor, Role
from core.controller.payloads import AutoscalingPause, AutoscalingStatus
from core.errors import ValidationError
from core.states import AutoscalingAction, FlagKey
from db import audit, autoscaling, flags

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
    with services.store_call(), services.runtime().factory() as s:
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
        elapsed = max(0.0, services.now().timestamp() - status.at)
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
                # The ``slo`` policy's view (empty for ``seed`` deployments and old payloads).
                "policy": d.policy, "SLO": d.objectives,
                "SLO met": (None if not d.attainment or None in d.attainment.values()
                            else min(v for v in d.attainment.values() if v is not None)),
                "forecast /s": None if d.forecast is None else d.forecast.get("expected_rps"),
                "burst ×": None if d.forecast is None else d.forecast.get("burst_factor"),
                "planned /s": d.need_rps, "sustains /s": d.capacity_rps,
                **{f"per replica on {t} /s": v
                   for t, v in sorted((d.capacity_per_type or {}).items())},
                "forecast": "" if d.forecast is None else str(d.forecast.get("note", "")),
                "why this GPU type": d.type_choice,
            })
    return AutoscalingView(sampled_at=sampled_at, paused=is_paused,
                           paused_by=paused_flag.updated_by if paused_flag else None,
                           paused_reason=why_paused,
                           paused_at=paused_flag.updated_at if paused_flag else None,
                           frame=pd.DataFrame(rows), unreadable=tuple(problems))


def autoscaling_history(hours: float = 24.0) -> pd.DataFrame:
    """Autoscaling decisions over the last ``hours``, newest first."""
    with services.store_call(), services.runtime().factory() as s:
        rows = autoscaling.autoscaling_history(s, since=services.now() - timedelta(hours=hours),
                                               limit=2000)
    return pd.DataFrame([{
        "time": r.created_at, "deployment": r.deployment, "action": r.action,
        "before": r.replicas_before, "after": r.replicas_after, "reason": r.reason,
        "queue": r.inputs.get("queue_waiting"), "TOPS/W": r.inputs.get("tops_per_w"),
        "cost per inference": r.inputs.get("cost_per_inference"),
        "planned /s": r.inputs.get("need_rps"), "sustains /s": r.inputs.get("capacity_rps"),
    } for r in rows])


@action("pause-or-resume-autoscaling", role=Role.OPERATOR, object_type="autoscaler")
def set_autoscaling_paused(actor: Actor, paused: bool, *, reason: str,
                           shown: Mapping[str, Any] | None = None) -> None:
    """Pause or resume autoscaling for every controller (a durable flag), and audit it."""
    if not reason.strip():
        raise ValidationError("reason", "say why autoscaling is paused or resumed")
    at = services.now()
    with services.store_call(), services.runtime().factory.begin() as s:
        flags.set_flag(s, key=FlagKey.AUTOSCALING_PAUSED,
                       value=AutoscalingPause(paused=paused, reason=reason.strip()).to_json(),
                       actor=actor.name, now=at)
        audit.record_audit(s, actor=actor.name,
                          action="pause-autoscaling" if paused else "resume-autoscaling",
                          object_type="autoscaler", object_id="all", reason=reason.strip(),
                          now=at, details=audit_details(actor, shown=shown))

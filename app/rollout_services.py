"""The Rollouts page's reads and a person's actions on a plan (SPEC §4.5).

Each action (approve, promote, pause, resume, abort, roll back, fail over) is its own
registered service function that needs the approver role, asks for a reason, and is
audited, in the transition's own transaction, with what the approver was shown (the
gate values, the QPS, the plan's progress and the canary analysis on their screen).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from app import services
from app.actions import action, audit_details
from core.auth import Actor, Role
from core.errors import ValidationError
from core.rollout.breaker import Breaker
from core.rollout.machine import RolloutEvent
from db import audit, rollouts

PlanView = rollouts.PlanView
PlanConflict = rollouts.PlanConflict
MAX_PLANS = 200


def plans(limit: int = 50) -> list[PlanView]:
    """The newest plans first, with their steps and approvals."""
    with services.store_call(), services.runtime().factory() as s:
        return rollouts.list_plans(s, limit=max(1, min(limit, MAX_PLANS)))


def plan(plan_id: int) -> PlanView:
    with services.store_call(), services.runtime().factory() as s:
        return rollouts.get_plan(s, plan_id)


def breaker() -> Breaker:
    """The circuit breaker as of now (an open one whose cooldown ended reads half-open)."""
    with services.store_call(), services.runtime().factory() as s:
        return rollouts.get_breaker(s).current(services.now().timestamp())


def analysis_samples(view: PlanView) -> list[dict[str, Any]]:
    """The canary analysis' samples of a plan (canary vs baseline), oldest first."""
    out: list[dict[str, Any]] = []
    for step in view.steps:
        if step.spec.action.value == "analyze":
            out.extend(step.details.get("samples", ()))
    return sorted(out, key=lambda s: s.get("at", 0.0))


def _act(event: RolloutEvent) -> Callable[..., PlanView]:
    def act(actor: Actor, plan_id: int, *, reason: str,
            shown: Mapping[str, Any] | None = None) -> PlanView:
        with services.store_call(), services.runtime().factory.begin() as s:
            return rollouts.apply_event(s, plan_id=plan_id, event=event.value, actor=actor.name,
                                        reason=reason, now=services.now(),
                                        details=audit_details(actor, shown=shown))

    act.__name__ = act.__qualname__ = f"{event.value}_rollout"
    act.__doc__ = (f"A person's {event.value.replace('_', ' ')} of a rollout plan (approver "
                   "only), audited with what they were shown.")
    return action(f"rollout-{event.value.replace('_', '-')}", role=Role.APPROVER,
                  object_type=rollouts.OBJECT_TYPE, object_arg="plan_id")(act)


approve_rollout = _act(RolloutEvent.APPROVE)
promote_rollout = _act(RolloutEvent.PROMOTE)
pause_rollout = _act(RolloutEvent.PAUSE)
resume_rollout = _act(RolloutEvent.RESUME)
abort_rollout = _act(RolloutEvent.ABORT)
roll_back_rollout = _act(RolloutEvent.ROLL_BACK)
failover_rollout = _act(RolloutEvent.FAILOVER)

BY_EVENT: dict[str, Callable[..., PlanView]] = {
    RolloutEvent.APPROVE.value: approve_rollout,
    RolloutEvent.PROMOTE.value: promote_rollout,
    RolloutEvent.PAUSE.value: pause_rollout,
    RolloutEvent.RESUME.value: resume_rollout,
    RolloutEvent.ABORT.value: abort_rollout,
    RolloutEvent.ROLL_BACK.value: roll_back_rollout,
    RolloutEvent.FAILOVER.value: failover_rollout,
}


# ---- faults on the embedded twin, to watch gates, canaries and the breaker act
TWIN_FAULTS = ("error_spike", "latency_spike", "plugin_restart_failure", "metrics_down")
EVERY_NODE = "(every node)"


def _twin_fault(kind: str, node: str | None, duration_s: float, error_rate: float) -> Any:
    from core.sim import faults

    if kind == "metrics_down":
        return faults.metrics_down(duration_s=duration_s)
    if not node:
        raise ValidationError("node", f"{kind} needs a node")
    if kind == "error_spike":
        return faults.error_spike(node, rate=error_rate, duration_s=duration_s)
    if kind == "latency_spike":
        return faults.latency_spike(node, factor=4.0, duration_s=duration_s)
    return faults.plugin_restart_failure(node, duration_s=duration_s)


@action("simulate-fault", role=Role.OPERATOR, object_type="node", object_arg="node")
def simulate_fault(actor: Actor, kind: str, node: str | None = None, *, minutes: float,
                   error_rate: float = 0.25, reason: str = "") -> str:
    """Embedded mode only: start a fault on the twin (audited); returns the fault's id."""
    twin = services.runtime().twin
    if twin is None:
        raise ValidationError("cluster", "faults can only be simulated on the embedded twin")
    if kind not in TWIN_FAULTS:
        raise ValidationError("kind", f"expected one of {', '.join(TWIN_FAULTS)}")
    if not 0 < minutes <= 240:
        raise ValidationError("minutes", "must be within (0, 240]")
    if not 0 < error_rate <= 1:
        raise ValidationError("error_rate", "must be within (0, 1]")
    targets = ([n.name for n in twin.nodes()] if node == EVERY_NODE and kind != "metrics_down"
               else [node])
    fault_id = ",".join(twin.inject(_twin_fault(kind, n, minutes * 60, error_rate))
                        for n in targets)
    services.forget_nodes_read()  # the pages see the fault's layout at once
    with services.store_call(), services.runtime().factory.begin() as s:
        audit.record_audit(s, actor=actor.name, action="simulate-fault", object_type="node",
                           object_id=node or "fleet", reason=reason or f"{kind} {minutes:g} min",
                           now=services.now(), details=audit_details(
                               actor, fault=fault_id, kind=kind, minutes=minutes,
                               error_rate=error_rate if kind == "error_spike" else None))
    return fault_id

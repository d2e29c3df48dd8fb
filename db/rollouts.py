"""Rollout plans in the store: create, read, act on (people and the controller), breaker.

A plan is a ``rollout_plans`` row (state, strategy, gate results, predicted
impact), its ``RolloutPlan`` in ``rollout_specs``, its durable steps in
``rollout_steps`` (expanded by ``core.rollout.strategies`` when the plan is
created; rollback steps appended when it rolls back) and the approvals in
``rollout_approvals``. The circuit breaker is the control flag
``rollout.breaker``.

Every transition, a person's or the controller's, is one conditional
``UPDATE … WHERE status = <expected>`` plus its audit entry (with what the
person was shown) in the caller's transaction: of two actors the second gets
``PlanConflict`` instead of acting on a state that moved. The events a person
may send are checked against ``core.rollout.machine``; the role check is the
caller's (``app`` services).

Webhook messages (``db.outbox``) are queued in the transitions' transactions: a
canary waiting for promotion (without auto-promote), a rollout that failed and rolls
back, a rollback that failed, a plan rolled back, and the circuit breaker opening. The
message that a new plan waits for approval is its creator's (``app.mps_services``,
with who created it and the gates it was shown), in the same transaction as
``create_plan``.

``SqlRolloutStore`` is the controller's ``core.ports.RolloutStore`` (one
transaction per call).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.errors import ValidationError
from core.model import PlacementRequest
from core.ports import ActiveRollout, RolloutConflict, RolloutStepRecord
from core.rollout import machine
from core.rollout.breaker import Breaker, BreakerState
from core.rollout.plan import RolloutPlan
from core.rollout.strategies import StepSpec, expand
from core.states import FlagKey, RequestState, RolloutState, StepState
from db import audit, flags, outbox, queue
from db.models import (
    GpuReservationRow,
    PlacementRequestRow,
    RolloutApprovalRow,
    RolloutPlanRow,
    RolloutSpecRow,
    RolloutStepRow,
)

OBJECT_TYPE = "rollout_plan"
NOTIFY_TYPE = "rollout"  # the outbox's name for the Rollouts page's objects
ACTIVE_STATES = tuple(s.value for s in machine.ACTIVE)
_APPROVAL_KIND = {machine.RolloutEvent.APPROVE: "start", machine.RolloutEvent.PROMOTE: "promote"}


class PlanConflict(RolloutConflict):
    """The plan is not in the state the action expected (someone acted first)."""


@dataclass(frozen=True, slots=True)
class StepView:
    seq: int
    spec: StepSpec
    status: str
    details: dict[str, Any]
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def label(self) -> str:
        return self.spec.label


@dataclass(frozen=True, slots=True)
class ApprovalView:
    kind: str
    approver: str
    reason: str
    at: datetime


@dataclass(frozen=True, slots=True)
class PlanView:
    """One plan as the console shows it."""

    id: int
    state: RolloutState
    plan: RolloutPlan
    steps: tuple[StepView, ...]
    approvals: tuple[ApprovalView, ...]
    gate_results: dict[str, Any]
    predicted_impact: dict[str, Any]
    config_diff: dict[str, Any]
    created_by: str
    created_at: datetime
    updated_at: datetime
    breaker: Breaker

    @property
    def actions(self) -> tuple[str, ...]:
        """The buttons a person may press now (``RolloutEvent`` values)."""
        return tuple(e.value for e in machine.human_actions(self.state))

    @property
    def progress(self) -> tuple[int, int]:
        """(steps finished, steps) of the phase that runs (forward, or the rollback)."""
        rolling_back = any(s.spec.rollback for s in self.steps)
        phase = [s for s in self.steps if s.spec.rollback == rolling_back]
        done = sum(1 for s in phase if s.status in (StepState.SUCCEEDED, StepState.SKIPPED))
        return done, len(phase)


def _reason(reason: str) -> str:
    text = (reason or "").strip()
    if not text:
        raise ValidationError("reason", "is required: say why, for the audit trail")
    return text


def get_breaker(s: Session) -> Breaker:
    flag = flags.get_flag(s, FlagKey.ROLLOUT_BREAKER)
    return Breaker.from_json(None if flag is None else flag.value)


def set_breaker(s: Session, breaker: Mapping[str, Any], *, actor: str, now: datetime) -> None:
    flags.set_flag(s, key=FlagKey.ROLLOUT_BREAKER, value=breaker, actor=actor, now=now)


def _step_row(plan_id: int, seq: int, spec: StepSpec) -> RolloutStepRow:
    return RolloutStepRow(plan_id=plan_id, seq=seq, node=spec.node, action=spec.action.value,
                          status=StepState.PENDING.value,
                          details={"spec": spec.to_json(), "run": {}})


def create_plan(s: Session, *, plan: RolloutPlan, actor: str, reason: str, now: datetime,
                gate_report_json: Mapping[str, Any] | None = None,
                shown: Mapping[str, Any] | None = None,
                config_diff: Mapping[str, Any] | None = None,
                predicted_impact: Mapping[str, Any] | None = None) -> int:
    """Store ``plan`` (already validated: ``core.rollout.plan.validate_plan``) awaiting
    approval, with its expanded steps, audited; returns its id."""
    why = _reason(reason)
    impact = dict(predicted_impact or {})
    impact.setdefault("disruption", plan.predicted_disruption)
    impact.setdefault("free_capacity", plan.free_capacity)
    row = RolloutPlanRow(
        strategy=plan.strategy.value, update_type=plan.update_type,
        status=RolloutState.AWAITING_APPROVAL.value, nodes=list(plan.nodes),
        config_diff=dict(config_diff or {c.node: {"from": c.from_config, "to": c.to_config}
                                         for c in plan.changes}),
        gate_results=dict(gate_report_json or {}), predicted_impact=impact,
        auto_promote=plan.auto_promote, created_by=actor, created_at=now, updated_at=now)
    s.add(row)
    s.flush()
    s.add(RolloutSpecRow(plan_id=row.id, spec=plan.to_json()))
    for seq, spec in enumerate(expand(plan)):
        s.add(_step_row(row.id, seq, spec))
    audit.record_audit(s, actor=actor, action="create-rollout-plan", object_type=OBJECT_TYPE,
                       object_id=str(row.id), reason=why, now=now,
                       details={"shown": dict(shown or {}), "plan": plan.to_json(),
                                "gates": dict(gate_report_json or {})})
    s.flush()
    return int(row.id)


def _steps(s: Session, plan_id: int) -> list[RolloutStepRow]:
    R = RolloutStepRow
    return list(s.scalars(select(R).where(R.plan_id == plan_id).order_by(R.seq)))


def _view(s: Session, row: RolloutPlanRow, breaker: Breaker) -> PlanView:
    spec = s.get(RolloutSpecRow, row.id)
    if spec is None:
        raise KeyError(f"rollout plan {row.id} has no spec")
    A = RolloutApprovalRow
    approvals = tuple(ApprovalView(a.kind, a.approver, a.reason, a.created_at) for a in
                      s.scalars(select(A).where(A.plan_id == row.id).order_by(A.id)))
    steps = tuple(StepView(seq=r.seq, spec=StepSpec.from_json(r.details["spec"]),
                           status=r.status, details=dict(r.details.get("run") or {}),
                           started_at=r.started_at, finished_at=r.finished_at)
                  for r in _steps(s, row.id))
    return PlanView(id=int(row.id), state=RolloutState(row.status),
                    plan=RolloutPlan.from_json(spec.spec), steps=steps, approvals=approvals,
                    gate_results=dict(row.gate_results), predicted_impact=dict(
                        row.predicted_impact), config_diff=dict(row.config_diff),
                    created_by=row.created_by, created_at=row.created_at,
                    updated_at=row.updated_at, breaker=breaker)


def get_plan(s: Session, plan_id: int) -> PlanView:
    row = s.get(RolloutPlanRow, plan_id)
    if row is None:
        raise KeyError(f"no rollout plan {plan_id}")
    return _view(s, row, get_breaker(s))


def list_plans(s: Session, *, limit: int = 50) -> list[PlanView]:
    """The newest plans first."""
    P = RolloutPlanRow
    breaker = get_breaker(s)
    return [_view(s, row, breaker)
            for row in s.scalars(select(P).order_by(P.id.desc()).limit(limit))]


def transition(s: Session, *, plan_id: int, expected: str, event: str, actor: str,
               reason: str, now: datetime, details: Mapping[str, Any] | None = None,
               breaker: Mapping[str, Any] | None = None) -> RolloutState:
    """``event`` on a plan in state ``expected``: the conditional UPDATE, the audit entry and
    (``breaker``) the new breaker value, in the caller's transaction."""
    ev = machine.RolloutEvent(event)
    nxt = machine.transition(expected, ev)
    P = RolloutPlanRow
    hit = s.execute(update(P).where(P.id == plan_id, P.status == str(expected))
                    .values(status=nxt.value, updated_at=now)
                    .execution_options(synchronize_session=False)).rowcount
    if hit != 1:
        status = s.scalar(select(P.status).where(P.id == plan_id))
        if status is None:
            raise KeyError(f"no rollout plan {plan_id}")
        raise PlanConflict(f"plan {plan_id} is {status}, not {expected}; it cannot "
                           f"{ev.value.replace('_', ' ')} (reload: someone may have acted)")
    kind = _APPROVAL_KIND.get(ev)
    if kind is not None:
        s.add(RolloutApprovalRow(plan_id=plan_id, kind=kind, approver=actor, reason=reason,
                                 created_at=now))
    if ev is machine.RolloutEvent.PROMOTE:
        _skip_watching(s, plan_id, actor=actor, now=now)
    if breaker is not None:
        before = get_breaker(s)
        set_breaker(s, breaker, actor=actor, now=now)
        _notify_breaker(s, before=before, after=Breaker.from_json(breaker), now=now)
    _notify_state(s, plan_id=plan_id, event=ev, state=nxt, reason=reason, now=now)
    audit.record_audit(s, actor=actor, action=f"rollout-{ev.value.replace('_', '-')}",
                       object_type=OBJECT_TYPE, object_id=str(plan_id), reason=reason,
                       now=now, details={"from": str(expected), "to": nxt.value,
                                         **dict(details or {})})
    return nxt


def _notify_state(s: Session, *, plan_id: int, event: machine.RolloutEvent,
                  state: RolloutState, reason: str, now: datetime) -> None:
    """The webhook messages SPEC §4.5 asks for, queued in the transition's transaction."""
    if state is RolloutState.AWAITING_PROMOTION:
        if not s.scalar(select(RolloutPlanRow.auto_promote).where(RolloutPlanRow.id == plan_id)):
            outbox.notify_approval_waiting(s, object_type=NOTIFY_TYPE, object_id=plan_id,
                                           summary=f"rollout plan {plan_id}: the canary "
                                                   f"passed; promotion needs an approver",
                                           now=now, stage="promote")
    elif state is RolloutState.ROLLING_BACK and event in (machine.RolloutEvent.FAIL,
                                                           machine.RolloutEvent.ANALYSIS_FAILED):
        outbox.notify_rollout_failed(s, plan_id=plan_id, reason=reason, now=now,
                                     fields=(("Then", "rolling back automatically"),))
    elif state is RolloutState.FAILED:
        outbox.notify_rollout_failed(s, plan_id=f"{plan_id}-rollback", reason=reason,
                                     now=now, fields=(("Needs", "a person: the rollback "
                                                                "failed"),))
    elif state is RolloutState.ROLLED_BACK:
        outbox.notify_rolled_back(s, plan_id=plan_id, reason=reason, now=now)


def _notify_breaker(s: Session, *, before: Breaker, after: Breaker, now: datetime) -> None:
    if after.state is BreakerState.OPEN and after.opened_at is not None and \
            before.opened_at != after.opened_at:
        opened = utc(after.opened_at)
        outbox.notify_breaker_opened(s, opened_at=opened, failures=after.consecutive_failures,
                                     reason=after.last_failure, now=now,
                                     cooldown_until=opened + timedelta(
                                         seconds=after.cooldown_s))


def _skip_watching(s: Session, plan_id: int, *, actor: str, now: datetime) -> None:
    """Promotion ends the watching steps at the cursor (an analysis a person overrode, the
    wait for promotion)."""
    for r in _steps(s, plan_id):
        if r.status in (StepState.SUCCEEDED, StepState.SKIPPED):
            continue
        spec = StepSpec.from_json(r.details["spec"])
        if spec.rollback or spec.action.value not in ("analyze", "await-promotion"):
            break
        r.status = StepState.SUCCEEDED.value if spec.action.value == "await-promotion" \
            else StepState.SKIPPED.value
        r.details = {**r.details, "run": {**(r.details.get("run") or {}),
                                          "promoted_by": actor}}
        r.finished_at = now


def apply_event(s: Session, *, plan_id: int, event: str, actor: str, reason: str,
                now: datetime, shown: Mapping[str, Any] | None = None,
                details: Mapping[str, Any] | None = None) -> PlanView:
    """A person's action on a plan (approve, promote, pause, resume, abort, roll back, fail
    over), audited with what they were shown. ``TransitionRefused`` when the plan's state
    does not allow it; ``PlanConflict`` when the state moved since it was read."""
    why = _reason(reason)
    ev = machine.RolloutEvent(event)
    if ev not in machine.HUMAN_EVENTS:
        raise ValidationError("event", f"{ev.value} is the controller's, not a person's")
    row = s.get(RolloutPlanRow, plan_id)
    if row is None:
        raise KeyError(f"no rollout plan {plan_id}")
    transition(s, plan_id=plan_id, expected=row.status, event=ev.value, actor=actor,
               reason=why, now=now, details={"shown": dict(shown or {}), **dict(details or {})})
    s.expire(row)
    return get_plan(s, plan_id)


# ------------------------------------------------------------------------------------------
# The controller's port
# ------------------------------------------------------------------------------------------
def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _epoch(at: datetime | None) -> float | None:
    return None if at is None else at.timestamp()


class SqlRolloutStore:
    """``core.ports.RolloutStore`` over a session factory (one transaction per call)."""

    def __init__(self, factory: sessionmaker[Session], *, actor: str = "controller") -> None:
        self.factory = factory
        self.actor = actor

    def _active(self, s: Session, row: RolloutPlanRow) -> ActiveRollout:
        spec = s.get(RolloutSpecRow, row.id)
        if spec is None:
            raise KeyError(f"rollout plan {row.id} has no spec")
        steps = tuple(RolloutStepRecord(
            seq=r.seq, spec=StepSpec.from_json(r.details["spec"]), status=r.status,
            details=dict(r.details.get("run") or {}), started_at=_epoch(r.started_at),
            finished_at=_epoch(r.finished_at)) for r in _steps(s, row.id))
        return ActiveRollout(plan_id=int(row.id), state=row.status,
                             plan=RolloutPlan.from_json(spec.spec), steps=steps)

    def active_rollouts(self) -> list[ActiveRollout]:
        P = RolloutPlanRow
        with self.factory() as s:
            rows = s.scalars(select(P).where(P.status.in_(ACTIVE_STATES)).order_by(P.id))
            return [self._active(s, row) for row in rows]

    def rollout(self, plan_id: int) -> ActiveRollout:
        with self.factory() as s:
            row = s.get(RolloutPlanRow, plan_id)
            if row is None:
                raise KeyError(f"no rollout plan {plan_id}")
            return self._active(s, row)

    def _step(self, s: Session, plan_id: int, seq: int) -> RolloutStepRow:
        R = RolloutStepRow
        row = s.scalars(select(R).where(R.plan_id == plan_id, R.seq == seq)).one()
        return row

    def step_started(self, *, plan_id: int, seq: int, details: Mapping[str, Any],
                     now: float) -> None:
        with self.factory.begin() as s:
            row = self._step(s, plan_id, seq)
            row.status = StepState.RUNNING.value
            row.details = {**row.details, "run": dict(details)}
            row.started_at = utc(now)

    def step_progress(self, *, plan_id: int, seq: int, details: Mapping[str, Any]) -> None:
        with self.factory.begin() as s:
            row = self._step(s, plan_id, seq)
            row.details = {**row.details, "run": dict(details)}

    def step_finished(self, *, plan_id: int, seq: int, status: str,
                      details: Mapping[str, Any], now: float) -> None:
        with self.factory.begin() as s:
            row = self._step(s, plan_id, seq)
            row.status = StepState(status).value
            row.details = {**row.details, "run": dict(details)}
            row.finished_at = utc(now) if status != StepState.PENDING else None

    def add_rollback_steps(self, *, plan_id: int, specs: Sequence[StepSpec],
                           now: float) -> bool:
        with self.factory.begin() as s:
            rows = _steps(s, plan_id)
            if any(StepSpec.from_json(r.details["spec"]).rollback for r in rows):
                return False
            for r in rows:
                if r.status == StepState.PENDING:
                    r.status = StepState.SKIPPED.value
                    r.finished_at = utc(now)
            start = (rows[-1].seq + 1) if rows else 0
            for i, spec in enumerate(specs):
                s.add(_step_row(plan_id, start + i, spec))
            audit.record_audit(s, actor=self.actor, action="rollout-rollback-planned",
                               object_type=OBJECT_TYPE, object_id=str(plan_id),
                               reason=f"{len(specs)} rollback step(s)", now=utc(now),
                               details={"steps": [sp.label for sp in specs]})
            return True

    def transition(self, *, plan_id: int, expected: str, event: str, actor: str,
                   reason: str, now: float, details: Mapping[str, Any] | None = None,
                   breaker: Mapping[str, Any] | None = None) -> str:
        with self.factory.begin() as s:
            return transition(s, plan_id=plan_id, expected=expected, event=event, actor=actor,
                              reason=reason, now=utc(now), details=details,
                              breaker=breaker).value

    def breaker(self) -> Mapping[str, Any] | None:
        with self.factory() as s:
            flag = flags.get_flag(s, FlagKey.ROLLOUT_BREAKER)
            return None if flag is None else flag.value

    def record_postponement(self, *, plan_id: int, gates: Mapping[str, Any], reason: str,
                            now: float) -> None:
        with self.factory.begin() as s:
            row = s.get(RolloutPlanRow, plan_id)
            if row is not None:
                row.gate_results = dict(gates)
            audit.record_audit(s, actor=self.actor, action="rollout-postponed",
                               object_type=OBJECT_TYPE, object_id=str(plan_id),
                               reason=reason, now=utc(now), details={"gates": dict(gates)})

    # --- the placement queue ------------------------------------------------------------
    def requests(self, request_ids: Sequence[str]
                 ) -> dict[str, tuple[str, PlacementRequest]]:
        if not request_ids:
            return {}
        R = PlacementRequestRow
        with self.factory() as s:
            rows = s.execute(select(R.request_id, R.status, R.payload)
                             .where(R.request_id.in_(list(request_ids)))).all()
            return {rid: (status, PlacementRequest.parse(payload))
                    for rid, status, payload in rows}

    def enqueue_requests(self, requests: Sequence[PlacementRequest], *, now: float) -> None:
        if not requests:
            return
        with self.factory.begin() as s:
            queue.enqueue_many(s, requests, now=utc(now), source="rollout")

    def record_bound(self, request: PlacementRequest, *, now: float) -> None:
        R = PlacementRequestRow
        with self.factory.begin() as s:
            queue.enqueue(s, request, now=utc(now), source="rollout")
            s.execute(update(R).where(R.request_id == request.request_id,
                                      R.status == RequestState.QUEUED)
                      .values(status=RequestState.BOUND, reason="bound by a rollout",
                              updated_at=utc(now)))

    def retire_requests(self, request_ids: Sequence[str], *, reason: str, now: float) -> int:
        if not request_ids:
            return 0
        R = PlacementRequestRow
        with self.factory.begin() as s:
            n = queue.mark_removed(s, request_ids=list(request_ids), reason=reason,
                                   now=utc(now))
            n += int(s.execute(update(R).where(R.request_id.in_(list(request_ids)),
                                               R.status == RequestState.QUEUED)
                               .values(status=RequestState.REMOVED, reason=reason,
                                       updated_at=utc(now))).rowcount or 0)
            return n

    def requeue_requests(self, request_ids: Sequence[str], *, reason: str, now: float) -> int:
        if not request_ids:
            return 0
        R = PlacementRequestRow
        ids = list(request_ids)
        with self.factory.begin() as s:
            n = int(s.execute(update(R).where(R.request_id.in_(ids), R.status.in_(
                                  (RequestState.BOUND, RequestState.FAILED)))
                              .values(status=RequestState.QUEUED, reason=reason, attempts=0,
                                      available_at=utc(now),
                                      updated_at=utc(now))).rowcount or 0)
            s.execute(delete(GpuReservationRow).where(GpuReservationRow.owner.in_(ids)))
            return n

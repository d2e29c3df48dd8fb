"""The rollout step: the leader advances each active plan by durable steps (SPEC §4).

Each run, for every plan the store says is active (oldest first):

- **approved**: the circuit breaker must allow a start and every gate must pass
  (``RolloutGates``); otherwise the plan waits and the postponement is audited
  (once per change of the failed gates, then at most every ``postpone_log_s``).
  Then ``start``.
- **running / analyzing / rolling back**: run the first unfinished step: write it
  RUNNING (with what it is about to do) before, SUCCEEDED or FAILED after
  (``core.controller.rollout_actions``); a waiting step stays RUNNING and is
  polled at the next run. Before each node's first forward step the gates are
  checked again (a failure postpones, the node stays untouched). A failed step
  rolls the plan back (``fail``) and counts in the breaker; a failed canary
  analysis likewise; an inconclusive check pauses the plan for a person. Once
  every step is done the plan completes (the breaker closes) or, rolling back,
  is rolled back.

A controller killed anywhere resumes from the store: the step written RUNNING
runs again (every action is idempotent), and a plan that was rolling back keeps
rolling back. A rollback step that fails is retried (``rollback_retry_s``) up to
``rollback_attempts`` times, then the plan is ``failed`` and a person is needed.

A drain waits at most ``rollout_actions.DRAIN_SLICE_S`` per run (a refusal by a
disruption budget is retried at the next run, after placement served the queue);
a device-plugin restart waits inside the port for the plugin (the twin's
``device_plugin_restart_s``, 20 s by default), during which the loop's lease is not
renewed: keep the lease TTL above it (between steps the loop's heartbeat renews it).

Invariants: every write is one store transaction; transitions are conditional on
the state read, so a person acting at the same time wins or loses cleanly
(``RolloutConflict`` ends this plan's turn); at most ``steps_per_run`` steps
run per plan per run, so the loop keeps renewing its lease.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from core.controller.rollout_actions import Actions, Context, Outcome, Ports, Result
from core.ports import ActiveRollout, Clock, RolloutConflict, RolloutStepRecord
from core.rollout.breaker import COOLDOWN_S, FAILURES_TO_OPEN, Breaker
from core.rollout.machine import RolloutEvent as E
from core.rollout.strategies import Action, StepSpec, rollback_steps
from core.states import RolloutState as S
from core.states import StepState

log = logging.getLogger(__name__)
ACTOR = "controller"
_FINISHED = (StepState.SUCCEEDED.value, StepState.SKIPPED.value, StepState.ROLLED_BACK.value)


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    interval_s: float = 5.0
    steps_per_run: int = 20
    rollback_attempts: int = 10
    rollback_retry_s: float = 60.0
    postpone_log_s: float = 300.0
    breaker_failures: int = FAILURES_TO_OPEN  # [rollouts.breaker] failures
    breaker_cooldown_s: float = COOLDOWN_S  # [rollouts.breaker] cooldown_s


class RolloutEngine:
    """Advances plans (see the module docstring); ``gates`` is ``RolloutGates``."""

    def __init__(self, *, ports: Ports, gates: Any, clock: Clock,
                 config: RolloutConfig | None = None,
                 on_breaker_open: Callable[[Breaker], None] | None = None) -> None:
        self.ports = ports
        self.store = ports.store
        self.gates = gates
        self.clock = clock
        self.config = config or RolloutConfig()
        self.actions = Actions(ports)
        self.on_breaker_open = on_breaker_open
        self._postponed: dict[int, tuple[tuple[str, ...], float]] = {}
        self._last_report: dict[str, Any] = {}
        self._retry_at: dict[tuple[int, int], float] = {}

    # --- the breaker --------------------------------------------------------------------
    def breaker(self) -> Breaker:
        """The stored breaker, under this controller's settings' threshold and cooldown."""
        return replace(Breaker.from_json(self.store.breaker()),
                       threshold=self.config.breaker_failures,
                       cooldown_s=self.config.breaker_cooldown_s)

    def _move(self, r: ActiveRollout, state: str, event: E, *, reason: str,
              details: Mapping[str, Any] | None = None, breaker: Breaker | None = None) -> str:
        new = self.store.transition(plan_id=r.plan_id, expected=state, event=event.value,
                                    actor=ACTOR, reason=reason, now=self.clock.now(),
                                    details=details,
                                    breaker=None if breaker is None else breaker.to_json())
        if breaker is not None and breaker.state == "open" and self.on_breaker_open:
            self.on_breaker_open(breaker)
        return new

    # --- one pass -----------------------------------------------------------------------
    def run_once(self, *, heartbeat: Callable[[], None] | None = None) -> int:
        """Advance every active plan; returns the number of steps that ran. ``heartbeat``
        (the loop's: renews the lease, may raise ``LostLeadership``) runs between steps."""
        ran = 0
        for r in self.store.active_rollouts():
            try:
                ran += self.advance(r, heartbeat=heartbeat)
            except RolloutConflict as exc:  # a person acted meanwhile: next run reads it
                log.info("rollout %d: %s", r.plan_id, exc)
        return ran

    def advance(self, r: ActiveRollout, *, heartbeat: Callable[[], None] | None = None) -> int:
        ran = 0
        for i in range(self.config.steps_per_run):
            if i and heartbeat is not None:
                heartbeat()
            if r.state == S.APPROVED:
                if not self._start(r):
                    return ran
            elif r.state in (S.RUNNING, S.ANALYZING, S.ROLLING_BACK):
                if not self._step(r):
                    return ran + 1
                ran += 1
            else:
                return ran
            r = self.store.rollout(r.plan_id)
        return ran

    def _postpone(self, r: ActiveRollout, *, failed: tuple[str, ...], reason: str,
                  gates: Mapping[str, Any]) -> None:
        now = self.clock.now()
        last = self._postponed.get(r.plan_id)
        if last is not None and last[0] == failed and now - last[1] < self.config.postpone_log_s:
            return
        self._postponed[r.plan_id] = (failed, now)
        self.store.record_postponement(plan_id=r.plan_id, gates=gates, reason=reason, now=now)

    def _gates_pass(self, r: ActiveRollout, node: str | None) -> bool:
        report = self.gates.check(plan=r.plan, now=self.clock.now(), node=node)
        self._last_report = {**report.to_json(), "failed": list(report.failed)}
        if report.passed:
            self._postponed.pop(r.plan_id, None)
            return True
        where = f" before {node}" if node else ""
        # The report as the gates serialize it (``GateReport.from_json`` reads it back),
        # with the failed names beside it for the audit trail.
        self._postpone(r, failed=tuple(report.failed),
                       gates={**report.to_json(), "failed": list(report.failed)},
                       reason=f"postponed{where}: gates failed: {', '.join(report.failed)}")
        return False

    def _start(self, r: ActiveRollout) -> bool:
        now = self.clock.now()
        breaker = self.breaker()
        ok, why = breaker.may_start(r.plan_id, now)
        if not ok:
            self._postpone(r, failed=("circuit_breaker",), gates={"breaker": breaker.to_json()},
                           reason=f"postponed: {why}")
            return False
        if not self._gates_pass(r, None):
            return False
        self._move(r, r.state, E.START, reason="gates passed; the plan starts",
                   details={"gates": self._last_report},
                   breaker=breaker.started(r.plan_id, now))
        return True

    # --- steps --------------------------------------------------------------------------
    def _cursor(self, r: ActiveRollout) -> RolloutStepRecord | None:
        rolling_back = r.state == S.ROLLING_BACK
        for rec in r.steps:
            spec: StepSpec = rec.spec
            if spec.rollback == rolling_back and rec.status not in _FINISHED:
                return rec
        return None

    def _step(self, r: ActiveRollout) -> bool:
        """Run one step; False when the plan waits (nothing more to do in this run)."""
        now = self.clock.now()
        if r.state == S.ROLLING_BACK and not any(rec.spec.rollback for rec in r.steps):
            if not self._plan_rollback(r):  # nothing was touched: nothing to restore
                self._finish(self.store.rollout(r.plan_id))
                return False
            return True
        rec = self._cursor(r)
        if rec is None:
            self._finish(r)
            return False
        spec: StepSpec = rec.spec
        if rec.status == StepState.PENDING and not spec.rollback and \
                spec.action is Action.CORDON and not self._gates_pass(r, spec.node):
            return False
        if self._retry_at.get((r.plan_id, rec.seq), now) > now:
            return False
        if spec.action is Action.ANALYZE and r.state == S.RUNNING:
            self._move(r, r.state, E.ANALYZE, reason=f"canary analysis of "
                       f"{', '.join(spec.params['nodes'])} starts")
            r = self.store.rollout(r.plan_id)
        if rec.status != StepState.RUNNING:
            details = self.actions.begin(Context(r.plan_id, r.plan, rec, r.steps, now))
            self.store.step_started(plan_id=r.plan_id, seq=rec.seq, details=details, now=now)
            rec = RolloutStepRecord(seq=rec.seq, spec=spec, status=StepState.RUNNING.value,
                                    details=details, started_at=now)
        out = self.actions.run(Context(r.plan_id, r.plan, rec, r.steps, now))
        return self._after(r, rec, out)

    def _after(self, r: ActiveRollout, rec: RolloutStepRecord, out: Outcome) -> bool:
        now = self.clock.now()
        spec: StepSpec = rec.spec
        pid, seq = r.plan_id, rec.seq
        if out.result is Result.WAIT:
            if dict(out.details) != dict(rec.details):
                self.store.step_progress(plan_id=pid, seq=seq, details=out.details)
            return False
        if out.result is Result.DONE:
            self.store.step_finished(plan_id=pid, seq=seq, status=StepState.SUCCEEDED.value,
                                     details=out.details, now=now)
            self._retry_at.pop((pid, seq), None)
            if spec.action is Action.ANALYZE:
                self._analysis_passed(r, out)
                return False
            return True
        if out.result is Result.INCONCLUSIVE:
            self.store.step_finished(plan_id=pid, seq=seq, status=StepState.PENDING.value,
                                     details=out.details, now=now)
            event = E.ANALYSIS_INCONCLUSIVE if r.state == S.ANALYZING else E.PAUSE
            self._move(r, r.state, event, reason=f"{spec.label}: {out.reason}",
                       details={"judgement": out.details.get("judgement")})
            return False
        # failed
        if spec.rollback:
            attempts = int(rec.details.get("attempts", 0)) + 1
            if attempts < self.config.rollback_attempts:
                self.store.step_progress(plan_id=pid, seq=seq, details={
                    **out.details, "attempts": attempts, "last_error": out.reason})
                self._retry_at[(pid, seq)] = now + self.config.rollback_retry_s
                return False
            self.store.step_finished(plan_id=pid, seq=seq, status=StepState.FAILED.value,
                                     details={**out.details, "error": out.reason}, now=now)
            self._move(r, r.state, E.FAIL, reason=f"rollback failed: {out.reason}",
                       breaker=self.breaker().failed(now, reason=out.reason))
            return False
        self.store.step_finished(plan_id=pid, seq=seq, status=StepState.FAILED.value,
                                 details={**out.details, "error": out.reason}, now=now)
        event = E.ANALYSIS_FAILED if r.state == S.ANALYZING else E.FAIL
        self._move(r, r.state, event, reason=f"{spec.label} failed: {out.reason}; rolling back",
                   details={"step": seq, "error": out.reason},
                   breaker=self.breaker().failed(now, reason=f"plan {pid}: {out.reason}"))
        return True

    def _analysis_passed(self, r: ActiveRollout, out: Outcome) -> None:
        r = self.store.rollout(r.plan_id)
        judgement = out.details.get("judgement")
        state = self._move(r, r.state, E.ANALYSIS_PASSED, reason="canary analysis passed",
                           details={"judgement": judgement})
        rest = any(rec.spec.action is Action.AWAIT_PROMOTION for rec in r.steps)
        if r.plan.auto_promote or not rest:
            self._move(r, state, E.PROMOTE, reason="auto-promote" if rest else
                       "canary analysis passed; no other node to promote to")

    def _plan_rollback(self, r: ActiveRollout) -> int:
        """Append the rollback steps; how many there are."""
        touched: list[str] = []
        shifted = False
        for rec in r.steps:
            spec: StepSpec = rec.spec
            if rec.status == StepState.PENDING and not rec.started_at:
                continue
            if spec.action is Action.SHIFT:
                shifted = True
            if spec.node and spec.node in r.plan.nodes and spec.node not in touched:
                touched.append(spec.node)
        specs = rollback_steps(r.plan, touched=touched, shifted=shifted)
        self.store.add_rollback_steps(plan_id=r.plan_id, specs=specs, now=self.clock.now())
        return len(specs)

    def _finish(self, r: ActiveRollout) -> None:
        now = self.clock.now()
        if r.state == S.ROLLING_BACK:
            self._move(r, r.state, E.ROLLBACK_DONE, reason="every touched node restored",
                       breaker=self.breaker().released(r.plan_id))
        elif r.state == S.RUNNING:
            self._move(r, r.state, E.COMPLETE, reason="every step succeeded",
                       breaker=self.breaker().succeeded(now))


class RolloutStep:
    """The loop's entry (``core.controller.loop.Step``): one pass every ``interval_s``."""

    name = "rollout"
    leader_only = True
    runs_in_heartbeat = False

    def __init__(self, engine: RolloutEngine, *,
                 observe: Callable[[Breaker], None] | None = None) -> None:
        self.engine = engine
        self.observe = observe  # e.g. the controller's breaker gauge
        self.heartbeat: Callable[[], None] | None = None  # the loop's, set by bootstrap
        self._next: float | None = None
        self.last_ran = 0

    def due(self, now: float) -> bool:
        return self._next is None or now >= self._next

    def run(self, *, now: float, leading: bool) -> None:
        self._next = now + self.engine.config.interval_s
        self.last_ran = self.engine.run_once(heartbeat=self.heartbeat)
        if self.observe is not None:
            self.observe(self.engine.breaker().current(self.engine.clock.now()))

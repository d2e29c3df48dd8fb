"""The rollout plan's state machine as data: states, events, who may send them, and why not.

Why: a plan of MPS configuration changes lives for hours, is acted on by people
(approve, promote, pause, resume, abort, roll back, fail over) and by the
controller (start, analysis results, completion, failure), possibly at the same
time from different processes. The one table below is what both obey; the store
(``db.rollouts``) applies a transition as a conditional UPDATE on the expected
state, so of two actors the second is refused instead of overwriting.

Invariants:
- ``transition(state, event)`` is total over the table: an allowed pair gives
  exactly one next state, every other pair raises ``TransitionRefused`` with a
  reason a person can read (never a silent no-op);
- terminal states (succeeded is not terminal: it may still be rolled back)
  accept no event;
- a started plan is never "aborted" in place: abort, fail and roll back of a
  plan that touched nodes go through ``rolling-back``, so the controller restores
  every node before the plan rests (``rolled-back`` or, if restoring itself
  failed, ``failed``).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from core.states import RolloutState

S = RolloutState


class RolloutEvent(StrEnum):
    # Sent by a person (through an action that checks the approver role).
    SUBMIT = "submit"
    APPROVE = "approve"
    PROMOTE = "promote"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    ROLL_BACK = "roll_back"
    FAILOVER = "failover"
    # Sent by the controller.
    START = "start"
    STEP_DONE = "step_done"
    ANALYZE = "analyze"
    ANALYSIS_PASSED = "analysis_passed"
    ANALYSIS_FAILED = "analysis_failed"
    ANALYSIS_INCONCLUSIVE = "analysis_inconclusive"
    COMPLETE = "complete"
    FAIL = "fail"
    ROLLBACK_DONE = "rollback_done"


E = RolloutEvent

HUMAN_EVENTS = frozenset({E.SUBMIT, E.APPROVE, E.PROMOTE, E.PAUSE, E.RESUME, E.ABORT,
                          E.ROLL_BACK, E.FAILOVER})
CONTROLLER_EVENTS = frozenset(E) - HUMAN_EVENTS
# The controller may also promote (auto-promote) and pause (an inconclusive check).
CONTROLLER_MAY_SEND = CONTROLLER_EVENTS | {E.PROMOTE, E.PAUSE}

TERMINAL = frozenset({S.FAILED, S.ABORTED, S.ROLLED_BACK})
# States in which the controller has work to do.
ACTIVE = frozenset({S.APPROVED, S.RUNNING, S.ANALYZING, S.ROLLING_BACK})
# States in which nodes may have been touched (a stop must restore them).
STARTED = frozenset({S.RUNNING, S.ANALYZING, S.PAUSED, S.AWAITING_PROMOTION})

_TABLE: Mapping[tuple[RolloutState, RolloutEvent], RolloutState] = MappingProxyType({
    (S.DRAFT, E.SUBMIT): S.AWAITING_APPROVAL,
    (S.DRAFT, E.ABORT): S.ABORTED,
    (S.AWAITING_APPROVAL, E.APPROVE): S.APPROVED,
    (S.AWAITING_APPROVAL, E.ABORT): S.ABORTED,
    (S.APPROVED, E.START): S.RUNNING,
    (S.APPROVED, E.ABORT): S.ABORTED,
    (S.APPROVED, E.PAUSE): S.PAUSED,
    (S.RUNNING, E.STEP_DONE): S.RUNNING,
    (S.RUNNING, E.ANALYZE): S.ANALYZING,
    (S.RUNNING, E.COMPLETE): S.SUCCEEDED,
    (S.RUNNING, E.PAUSE): S.PAUSED,
    (S.ANALYZING, E.STEP_DONE): S.ANALYZING,
    (S.ANALYZING, E.ANALYSIS_PASSED): S.AWAITING_PROMOTION,
    (S.ANALYZING, E.ANALYSIS_FAILED): S.ROLLING_BACK,
    (S.ANALYZING, E.ANALYSIS_INCONCLUSIVE): S.PAUSED,
    (S.ANALYZING, E.PAUSE): S.PAUSED,
    (S.AWAITING_PROMOTION, E.PROMOTE): S.RUNNING,
    (S.PAUSED, E.RESUME): S.RUNNING,
    (S.PAUSED, E.PROMOTE): S.RUNNING,
    (S.ROLLING_BACK, E.ROLLBACK_DONE): S.ROLLED_BACK,
    (S.ROLLING_BACK, E.FAIL): S.FAILED,
    (S.ROLLING_BACK, E.STEP_DONE): S.ROLLING_BACK,
    **{(state, E.FAIL): S.ROLLING_BACK for state in (S.RUNNING, S.ANALYZING)},
    **{(state, event): S.ROLLING_BACK
       for state in STARTED | {S.SUCCEEDED}
       for event in (E.ROLL_BACK, E.FAILOVER)},
    **{(state, E.ABORT): S.ROLLING_BACK for state in STARTED},
})

# Why an event is refused, by event, when the table has no entry (read by people).
_NEEDS: Mapping[RolloutEvent, str] = MappingProxyType({
    E.SUBMIT: "only a draft can be submitted",
    E.APPROVE: "only a plan awaiting approval can be approved",
    E.PROMOTE: "only a plan awaiting promotion (or paused) can be promoted",
    E.PAUSE: "only an approved, running or analyzing plan can be paused",
    E.RESUME: "only a paused plan can be resumed",
    E.ABORT: "a finished plan cannot be aborted",
    E.ROLL_BACK: "only a started or succeeded plan can be rolled back",
    E.FAILOVER: "only a started or succeeded plan can fail over",
    E.START: "only an approved plan can start",
    E.STEP_DONE: "steps run only while the plan runs, analyzes or rolls back",
    E.ANALYZE: "analysis starts only while the plan runs",
    E.ANALYSIS_PASSED: "no analysis is running",
    E.ANALYSIS_FAILED: "no analysis is running",
    E.ANALYSIS_INCONCLUSIVE: "no analysis is running",
    E.COMPLETE: "only a running plan can complete",
    E.FAIL: "only a running, analyzing or rolling-back plan can fail",
    E.ROLLBACK_DONE: "the plan is not rolling back",
})


class TransitionRefused(ValueError):
    """The event is not allowed in the plan's state; ``reason`` says why."""

    def __init__(self, state: RolloutState, event: RolloutEvent, reason: str) -> None:
        super().__init__(f"cannot {event.value.replace('_', ' ')} a plan that is "
                         f"{state.value}: {reason}")
        self.state = state
        self.event = event
        self.reason = reason


def transition(state: RolloutState | str, event: RolloutEvent | str) -> RolloutState:
    """The state after ``event``; ``TransitionRefused`` (with the reason) when not allowed."""
    st, ev = RolloutState(state), RolloutEvent(event)
    nxt = _TABLE.get((st, ev))
    if nxt is not None:
        return nxt
    if st in TERMINAL:
        raise TransitionRefused(st, ev, f"the plan is {st.value}, which is final")
    raise TransitionRefused(st, ev, _NEEDS[ev])


def allowed(state: RolloutState | str) -> tuple[RolloutEvent, ...]:
    """The events the table accepts in ``state`` (for the page's buttons), in enum order."""
    st = RolloutState(state)
    return tuple(ev for ev in RolloutEvent if (st, ev) in _TABLE)


def human_actions(state: RolloutState | str) -> tuple[RolloutEvent, ...]:
    """The buttons a person may press on a plan in ``state``."""
    return tuple(ev for ev in allowed(state) if ev in HUMAN_EVENTS)


def table() -> Mapping[tuple[RolloutState, RolloutEvent], RolloutState]:
    """The whole table (read-only), for tests and documentation."""
    return _TABLE

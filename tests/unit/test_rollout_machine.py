"""The rollout plan's transition table: every (state, event) pair, allowed or refused."""

from __future__ import annotations

import itertools

import pytest

from core.rollout.machine import (
    HUMAN_EVENTS,
    RolloutEvent,
    TransitionRefused,
    human_actions,
    table,
    transition,
)
from core.states import RolloutState

S, E = RolloutState, RolloutEvent
STARTED = (S.RUNNING, S.ANALYZING, S.PAUSED, S.AWAITING_PROMOTION)

# Written out by hand from SPEC §4 (not derived from the table under test).
EXPECTED: dict[tuple[RolloutState, RolloutEvent], RolloutState] = {
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
    (S.RUNNING, E.FAIL): S.ROLLING_BACK,
    (S.ANALYZING, E.STEP_DONE): S.ANALYZING,
    (S.ANALYZING, E.ANALYSIS_PASSED): S.AWAITING_PROMOTION,
    (S.ANALYZING, E.ANALYSIS_FAILED): S.ROLLING_BACK,
    (S.ANALYZING, E.ANALYSIS_INCONCLUSIVE): S.PAUSED,
    (S.ANALYZING, E.PAUSE): S.PAUSED,
    (S.ANALYZING, E.FAIL): S.ROLLING_BACK,
    (S.AWAITING_PROMOTION, E.PROMOTE): S.RUNNING,
    (S.PAUSED, E.RESUME): S.RUNNING,
    (S.PAUSED, E.PROMOTE): S.RUNNING,
    (S.ROLLING_BACK, E.ROLLBACK_DONE): S.ROLLED_BACK,
    (S.ROLLING_BACK, E.FAIL): S.FAILED,
    (S.ROLLING_BACK, E.STEP_DONE): S.ROLLING_BACK,
    **{(st, E.ABORT): S.ROLLING_BACK for st in STARTED},
    **{(st, ev): S.ROLLING_BACK for st in (*STARTED, S.SUCCEEDED)
       for ev in (E.ROLL_BACK, E.FAILOVER)},
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(S, E)),
                         ids=lambda v: str(v.value))
def test_every_pair_is_allowed_exactly_as_specified_or_refused_with_a_reason(
        state: RolloutState, event: RolloutEvent) -> None:
    want = EXPECTED.get((state, event))
    if want is not None:
        assert transition(state, event) is want
        assert transition(state.value, event.value) is want  # stored strings work too
        return
    with pytest.raises(TransitionRefused) as refused:
        transition(state, event)
    assert refused.value.reason
    assert state.value in str(refused.value)
    assert refused.value.state is state and refused.value.event is event


def test_the_table_has_nothing_the_spec_does_not() -> None:
    assert dict(table()) == EXPECTED


def test_final_states_accept_nothing_and_say_so() -> None:
    for state in (S.FAILED, S.ABORTED, S.ROLLED_BACK):
        assert human_actions(state) == ()
        with pytest.raises(TransitionRefused, match="final"):
            transition(state, E.RESUME)


def test_a_started_plan_is_never_aborted_in_place() -> None:
    for state in STARTED:
        assert transition(state, E.ABORT) is S.ROLLING_BACK


def test_buttons_are_only_human_events() -> None:
    assert set(human_actions(S.AWAITING_APPROVAL)) == {E.APPROVE, E.ABORT}
    assert set(human_actions(S.AWAITING_PROMOTION)) == {E.PROMOTE, E.ABORT, E.ROLL_BACK,
                                                        E.FAILOVER}
    for state in S:
        assert set(human_actions(state)) <= HUMAN_EVENTS


def test_unknown_values_are_refused_as_bad_input() -> None:
    with pytest.raises(ValueError):
        transition("exploded", E.APPROVE)
    with pytest.raises(ValueError):
        transition(S.RUNNING, "detonate")

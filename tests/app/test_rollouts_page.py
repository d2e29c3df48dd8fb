"""AppTest: the Rollouts page shows plans with their gates, progress and breaker; an
approver's action is confirmed, reasoned, checked on the server and audited with what
was shown; a viewer's is disabled and, forged, refused."""

from __future__ import annotations

import pytest

from app import mps_services, rollout_services, services
from core.auth import LOCAL_APPROVER, Actor, Forbidden, Role
from core.states import RolloutState
from db import audit
from tests.app.conftest import open_page


def a_plan() -> int:
    return mps_services.create_rollout_plan(LOCAL_APPROVER, nodes=["a100-0"],
                                            strategy="rolling",
                                            update_type="routine_optimization",
                                            reason="pack a100-0 as the planner says")


def test_the_page_without_plans_says_where_to_make_one() -> None:
    at = open_page("rollouts")
    assert any("No rollout plan yet" in i.value for i in at.info)
    assert any("Circuit breaker closed" in s.value for s in at.success)


def test_a_plan_shows_its_gates_progress_and_diff() -> None:
    open_page()
    plan_id = a_plan()
    at = open_page("rollouts")
    assert not at.exception
    states = next(d.value for d in at.dataframe if "strategy" in d.value.columns)
    assert list(states["plan"]) == [plan_id]
    gate_tables = [d.value for d in at.dataframe if "threshold" in d.value.columns]
    assert len(gate_tables) == 2  # at creation, and now
    assert any("mps-2" in c.value for c in at.code)
    assert any(m.label == "State" and m.value == "awaiting-approval" for m in at.metric)


def test_approving_needs_confirmation_and_a_reason_and_is_audited_with_what_was_shown() -> None:
    open_page()
    plan_id = a_plan()
    at = open_page("rollouts")
    at.radio(key="rollouts.event").set_value("approve")
    at.text_area(key="rollouts.reason").set_value("gates reviewed")
    at.button(key="FormSubmitter:rollouts.act-Apply").click()
    at.run()
    assert any("confirmation" in e.value for e in at.error)
    assert rollout_services.plan(plan_id).state is RolloutState.AWAITING_APPROVAL

    at.radio(key="rollouts.event").set_value("approve")
    at.text_area(key="rollouts.reason").set_value("gates reviewed")
    at.checkbox(key="rollouts.confirm").check()
    at.button(key="FormSubmitter:rollouts.act-Apply").click()
    at.run()
    assert not at.exception
    view = rollout_services.plan(plan_id)
    assert view.state is RolloutState.APPROVED
    assert [(a.kind, a.approver) for a in view.approvals] == [("start", "local-approver")]
    with services.runtime().factory() as s:
        (entry,) = audit.list_audit(s, action="rollout-approve")
    assert entry.reason == "gates reviewed" and entry.details["role"] == "approver"
    assert entry.details["shown"]["plan_state"] == "awaiting-approval"
    assert "gates" in entry.details["shown"]["gates_now"]


def test_every_rollout_action_refuses_an_operator_and_changes_nothing() -> None:
    open_page()
    plan_id = a_plan()
    operator = Actor("olga", Role.OPERATOR, "test")
    for act in rollout_services.BY_EVENT.values():
        with pytest.raises(Forbidden):
            act(operator, plan_id, reason="not mine")
    assert rollout_services.plan(plan_id).state is RolloutState.AWAITING_APPROVAL

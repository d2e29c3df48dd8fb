"""The rollout engine on the twin with the real store: plans, people's actions, faults,
and a controller killed at every step boundary (``bench.rollout_world``).

The fleet: six single-A100 nodes on ``mps-4`` running seven replicas of four models,
placed through the real queue and placement worker, serving constant traffic. Plans
change nodes to ``mps-2``. After every run: no node cordoned, every node on the config
the plan chose, every request bound or retired, every model back to its replicas.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from app.bootstrap import build_controller, build_monitor
from bench.rollout_world import (
    World,
    build_world,
    expected_replicas,
    make_plan,
    occupied_nodes,
)
from core.controller.rollout_gates import SpecGates
from core.rollout.breaker import BreakerState
from core.rollout.machine import TransitionRefused
from core.rollout.plan import Strategy
from core.settings import Settings
from core.sim import faults
from core.sim.traffic import constant_traffic
from core.states import RolloutState
from db import audit, outbox, rollouts
from db.engine import make_engine, session_factory
from db.rollouts import PlanConflict
from tests.db.conftest import Store, fresh_database

SQLITE = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
S = RolloutState


def world(store: Store, settings: Settings, **kw: object) -> World:
    return build_world(settings=settings, factory=store.factory, **kw)  # type: ignore[arg-type]


def outbox_kinds(store: Store) -> list[str]:
    with store.factory() as s:
        return sorted(e.kind for e in outbox.list_outbox(s, limit=1000))


def audits(store: Store, action: str) -> list[audit.AuditEvent]:
    with store.factory() as s:
        return audit.list_audit(s, action=action, limit=1000)


def test_people_act_on_plans_through_the_table_audited_with_what_they_saw(
        store: Store, settings: Settings) -> None:
    w = world(store, settings, warmup_ticks=1)
    plan = make_plan(w, Strategy.CANARY, nodes=["a100-0", "a100-1"], auto_promote=False)
    pid = w.create(plan, approve=False)
    with store.factory.begin() as s:
        view = rollouts.get_plan(s, pid)
        assert view.state is S.AWAITING_APPROVAL and view.plan == plan
        assert set(view.actions) == {"approve", "abort"}
        assert view.progress == (0, len(view.steps)) and view.steps[0].label == "cordon a100-0"
        with pytest.raises(TransitionRefused, match="only a paused plan"):
            rollouts.apply_event(s, plan_id=pid, event="resume", actor="bob", reason="go",
                                 now=w.now)
    with store.factory.begin() as s, pytest.raises(ValueError, match="reason"):
        rollouts.apply_event(s, plan_id=pid, event="approve", actor="bob", reason=" ",
                             now=w.now)
    with store.factory.begin() as s, pytest.raises(ValueError, match="controller"):
        rollouts.apply_event(s, plan_id=pid, event="complete", actor="bob", reason="done",
                             now=w.now)
    shown = {"gates": {"qps": 12.0, "threshold": 50}, "disruption": 0.1}
    with store.factory.begin() as s:
        approved = rollouts.apply_event(s, plan_id=pid, event="approve", actor="alice",
                                        reason="window is quiet", now=w.now, shown=shown)
    assert approved.state is S.APPROVED
    assert [(a.kind, a.approver) for a in approved.approvals] == [("start", "alice")]
    (entry,) = audits(store, "rollout-approve")
    assert entry.actor == "alice" and entry.reason == "window is quiet"
    assert entry.details["shown"] == shown and entry.details["to"] == "approved"
    # Someone else acted first: the stale transition is refused, nothing is written.
    with store.factory.begin() as s, pytest.raises(PlanConflict, match="approved"):
        rollouts.transition(s, plan_id=pid, expected="awaiting-approval", event="approve",
                            actor="carol", reason="me too", now=w.now)
    with store.factory() as s:
        assert rollouts.list_plans(s, limit=5)[0].id == pid
        assert rollouts.get_plan(s, pid).breaker.state is BreakerState.CLOSED


@SQLITE
@pytest.mark.parametrize("strategy", list(Strategy))
def test_a_controller_killed_at_every_step_boundary_resumes_and_leaves_nothing_broken(
        store: Store, settings: Settings, strategy: Strategy) -> None:
    w = world(store, settings, kill_every=True)
    count = 2 if strategy is Strategy.CANARY else 1
    plan = make_plan(w, strategy, nodes=occupied_nodes(w)[:count], window_s=120.0)
    pid = w.create(plan)
    assert w.settle(pid) is S.SUCCEEDED
    ran = [s for s in w.rollout(pid).steps if "promoted_by" not in s.details]
    assert w.kills == 2 * len(ran)  # each step died once after RUNNING, once before DONE
    assert w.check(plan, pid, expect_replicas=expected_replicas()) == []


@SQLITE
def test_a_kill_at_any_single_boundary_of_a_rolling_update_resumes(
        store: Store, settings: Settings, request: pytest.FixtureRequest,
        tmp_path: Path) -> None:
    probe = world(store, settings)
    plan = make_plan(probe, Strategy.ROLLING, nodes=occupied_nodes(probe)[:1])
    pid = probe.create(plan)
    assert probe.settle(pid) is S.SUCCEEDED
    boundaries = probe.store.boundaries
    assert boundaries == 2 * len(probe.rollout(pid).steps)
    # One fresh store and twin per boundary (bench.rollout_faults does every strategy).
    for kill_at in range(0, boundaries, 5):  # both kinds of boundary, spread over the steps
        with fresh_database(request, backend="sqlite", directory=tmp_path) as url:
            engine = make_engine(url)
            try:
                w = build_world(settings=settings, factory=session_factory(engine),
                                kill_at=kill_at)
                again = make_plan(w, Strategy.ROLLING, nodes=occupied_nodes(w)[:1])
                pid = w.create(again)
                assert w.settle(pid) is S.SUCCEEDED, kill_at
                assert w.kills == 1
                assert w.check(again, pid, expect_replicas=expected_replicas()) == []
            finally:
                engine.dispose()


@SQLITE
@pytest.mark.parametrize("seed", range(3))
def test_a_failing_canary_is_rolled_back_automatically(store: Store, settings: Settings,
                                                       seed: int) -> None:
    w = world(store, settings, seed=seed, traffic=constant_traffic(20.0, seed=seed))
    nodes = occupied_nodes(w)
    canary = nodes[seed % 2]
    others = [n for n in nodes if n != canary][:1]
    plan = make_plan(w, Strategy.CANARY, nodes=[canary, *others], window_s=600.0,
                     auto_promote=True)
    w.twin.inject(faults.error_spike(canary, rate=0.4))
    pid = w.create(plan)
    assert w.settle(pid) is S.ROLLED_BACK
    w.twin.clear_faults()
    r = w.rollout(pid)
    analysis = next(s for s in r.steps if s.spec.action.value == "analyze")
    assert analysis.status == "failed" and "error rate" in analysis.details["error"]
    assert all(s.status == "skipped" for s in r.steps if s.spec.node in others
               and not s.spec.rollback)  # the rest never changed
    assert w.check(plan, pid, expect_replicas=expected_replicas()) == []
    assert w.engine.breaker().consecutive_failures == 1
    assert [e.details["to"] for e in audits(store, "rollout-analysis-failed")] == \
        ["rolling-back"]
    assert outbox_kinds(store) == ["rolled-back", "rollout-failed"]


@SQLITE
def test_three_failed_device_plugin_restarts_open_the_breaker(store: Store,
                                                              settings: Settings) -> None:
    w = world(store, settings)
    for attempt in range(3):
        node = occupied_nodes(w)[0]
        w.twin.inject(faults.plugin_restart_failure(node, duration_s=240.0))
        plan = make_plan(w, Strategy.ROLLING, nodes=[node])
        pid = w.create(plan)
        assert w.settle(pid) is S.ROLLED_BACK, attempt
        restart = next(s for s in w.rollout(pid).steps if s.spec.action.value ==
                       "restart-plugin" and not s.spec.rollback)
        assert restart.status == "failed" and "plugin_restart_failure" in \
            restart.details["error"]
        assert w.check(plan, pid, expect_replicas=expected_replicas()) == []
    breaker = w.engine.breaker()
    assert breaker.state is BreakerState.OPEN and breaker.consecutive_failures == 3
    assert outbox_kinds(store).count("breaker-opened") == 1
    blocked = w.create(make_plan(w, Strategy.ROLLING, nodes=[occupied_nodes(w)[0]]))
    for _ in range(5):
        w.tick()
    assert w.state(blocked) is S.APPROVED
    (postponed,) = [e for e in audits(store, "rollout-postponed")
                    if e.object_id == str(blocked)]
    assert "circuit breaker open" in postponed.reason
    w.clock.advance(3600.0)  # cooldown: half-open, one trial, its success closes it
    assert w.settle(blocked) is S.SUCCEEDED
    assert w.engine.breaker().state is BreakerState.CLOSED


@SQLITE
def test_metrics_down_makes_the_gates_fail_closed_and_the_plan_wait(
        store: Store, settings: Settings) -> None:
    w = world(store, settings)
    fault = w.twin.inject(faults.metrics_down())
    plan = make_plan(w, Strategy.ROLLING, nodes=[occupied_nodes(w)[0]])
    pid = w.create(plan)
    for _ in range(10):
        w.tick()
    assert w.state(pid) is S.APPROVED
    (postponed,) = [e for e in audits(store, "rollout-postponed") if e.object_id == str(pid)]
    assert postponed.details["gates"]["failed"] == ["metrics-source"]
    (check,) = [c for c in postponed.details["gates"]["checks"] if not c["passed"]]
    assert "fails closed" in check["reason"]
    with store.factory() as s:
        assert rollouts.get_plan(s, pid).gate_results["failed"] == ["metrics-source"]
    # SPEC §4.2's full gates over the same ports fail closed the same way, saying why.
    spec = SpecGates(metrics=w.twin, cluster=w.twin, settings=settings, firing=lambda: (),
                     qps_points=lambda since, until: [])
    report = spec.check(plan=plan, now=w.clock.now())
    assert not report.passed and "metrics-source" in report.failed
    assert report.check("error-rate").reason.startswith("unknown")
    w.twin.clear_fault(fault)
    assert w.settle(pid) is S.SUCCEEDED


@SQLITE
def test_a_canary_without_traffic_pauses_for_a_person_who_may_promote(
        store: Store, settings: Settings) -> None:
    w = world(store, settings, traffic=constant_traffic(0.0))
    nodes = occupied_nodes(w)[:2]
    plan = make_plan(w, Strategy.CANARY, nodes=nodes, window_s=120.0, auto_promote=False)
    pid = w.create(plan)
    assert w.settle(pid) is S.PAUSED
    (entry,) = audits(store, "rollout-analysis-inconclusive")
    assert "unknown" in entry.reason
    with store.factory.begin() as s:
        rollouts.apply_event(s, plan_id=pid, event="promote", actor="alice",
                             reason="no traffic at night; the canary node is healthy",
                             now=w.now, shown={"analysis": "inconclusive"})
    assert w.settle(pid) is S.SUCCEEDED
    assert w.check(plan, pid, expect_replicas=expected_replicas()) == []


@SQLITE
def test_promotion_waits_for_an_approver_unless_auto_promote(store: Store,
                                                            settings: Settings) -> None:
    w = world(store, settings)
    nodes = occupied_nodes(w)[:2]
    plan = make_plan(w, Strategy.CANARY, nodes=nodes, window_s=120.0, auto_promote=False)
    pid = w.create(plan)
    assert w.settle(pid) is S.AWAITING_PROMOTION
    assert outbox_kinds(store) == ["approval-waiting"]  # the promotion (start: the creator's)
    with store.factory.begin() as s:
        view = rollouts.apply_event(s, plan_id=pid, event="promote", actor="alice",
                                    reason="canary healthy", now=w.now)
    assert [a.kind for a in view.approvals] == ["start", "promote"]
    assert w.settle(pid) is S.SUCCEEDED
    assert w.check(plan, pid, expect_replicas=expected_replicas()) == []


@SQLITE
def test_an_approver_rolls_back_a_blue_green_shift_at_once(store: Store,
                                                           settings: Settings) -> None:
    w = world(store, settings)
    plan = make_plan(w, Strategy.BLUE_GREEN, nodes=occupied_nodes(w)[:1], window_s=120.0)
    pid = w.create(plan)
    for _ in range(400):
        w.tick()
        steps = w.rollout(pid).steps
        if any(s.spec.action.value == "shift" and s.status == "succeeded" for s in steps):
            break
    with store.factory.begin() as s:
        rollouts.apply_event(s, plan_id=pid, event="failover", actor="alice",
                             reason="green looks wrong", now=w.now)
    assert w.settle(pid) is S.ROLLED_BACK
    rollback = [s for s in w.rollout(pid).steps if s.spec.rollback]
    assert rollback[0].spec.action.value == "unshift" and rollback[0].status == "succeeded"
    assert w.check(plan, pid, expect_replicas=expected_replicas()) == []
    assert w.engine.breaker().consecutive_failures == 0  # a person's rollback is no failure


@SQLITE
def test_the_controller_runs_the_rollout_step_with_every_gate_and_exports_the_breaker(
        store: Store, settings: Settings) -> None:
    w = world(store, settings, warmup_ticks=35)
    monitor = build_monitor(metrics=w.twin, factory=store.factory, interval_s=30.0,
                            cluster=w.twin, catalog=settings.catalog)
    loop = build_controller(factory=store.factory, cluster=w.twin, clock=w.clock,
                            settings=settings, identity="ctrl-1", monitor=monitor,
                            autoscale=False, feedback=False)
    assert "rollout" in [s.name for s in loop.steps]
    pid = w.create(make_plan(w, Strategy.ROLLING, nodes=[occupied_nodes(w)[0]]))
    for _ in range(3):
        loop.step()
        w.clock.advance(10.0)
    # 08:00 UTC is outside routine_optimization's windows: the real gates postpone it.
    assert w.state(pid) is S.APPROVED
    (postponed,) = [e for e in audits(store, "rollout-postponed") if e.object_id == str(pid)]
    assert "time-window" in postponed.details["gates"]["failed"]
    scrape = generate_latest(loop.metrics.registry).decode()
    assert 'gsc_rollout_breaker_state{state="closed"} 1.0' in scrape
    # emergency_fix may run at any hour, and is held to its own max QPS rather than the
    # QPS-aware gate (band, fast rise, 15-minute peak: shown as not applied), so it does
    # not wait for 15 minutes of QPS history; it runs through every other gate.
    urgent = replace(make_plan(w, Strategy.ROLLING, nodes=[occupied_nodes(w)[0]]),
                     update_type="emergency_fix")
    uid = w.create(urgent)
    for _ in range(300):
        loop.step()
        w.clock.advance(10.0)
        if w.state(uid) is S.SUCCEEDED:
            break
    assert w.state(uid) is S.SUCCEEDED
    waited = [e for e in audits(store, "rollout-postponed") if e.object_id == str(uid)]
    assert all("qps-peak-15m" not in e.details["gates"]["failed"] for e in waited)
    assert w.check(urgent, uid, expect_replicas=expected_replicas()) == []


@SQLITE
def test_a_paused_plan_aborted_before_touching_anything_rests_rolled_back(
        store: Store, settings: Settings) -> None:
    w = world(store, settings, warmup_ticks=1)
    pid = w.create(make_plan(w, Strategy.ROLLING, nodes=["a100-0"]))
    with store.factory.begin() as s:
        rollouts.apply_event(s, plan_id=pid, event="pause", actor="alice", reason="wait",
                             now=w.now)
    w.tick()
    assert w.state(pid) is S.PAUSED  # the controller leaves a paused plan alone
    with store.factory.begin() as s:
        rollouts.apply_event(s, plan_id=pid, event="abort", actor="alice",
                             reason="not today", now=w.now)
    w.tick()
    assert w.state(pid) is S.ROLLED_BACK
    assert all(st.status == "skipped" for st in w.rollout(pid).steps)
    assert all(n.schedulable for n in w.twin.nodes())

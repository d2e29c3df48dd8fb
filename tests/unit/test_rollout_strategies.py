"""Plans, their validation, the step lists each strategy expands to, the breaker and the
canary analysis (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from core.errors import ValidationError
from core.rollout import analysis
from core.rollout.breaker import Breaker, BreakerState
from core.rollout.plan import NodeChange, RolloutPlan, Strategy, canary_count, validate_plan
from core.rollout.strategies import Action, StepSpec, expand, rollback_steps
from core.settings import Settings

A = Action


@dataclass(frozen=True)
class Limits:
    name: str = "routine_optimization"
    max_disruption: float = 0.10
    min_free_capacity: float = 0.30


def plan(strategy: Strategy, nodes: int = 3, **kw: object) -> RolloutPlan:
    changes = tuple(NodeChange(f"n{i}", "mps-4", "mps-2", 1) for i in range(nodes))
    return RolloutPlan(strategy=strategy, update_type="routine_optimization", changes=changes,
                       **kw)  # type: ignore[arg-type]


PER_NODE = [A.CORDON, A.MIGRATE, A.DRAIN, A.SET_CONFIG, A.RESTART, A.WAIT_ADVERTISED,
            A.UNCORDON, A.RETURN]


def actions(steps: tuple[StepSpec, ...], node: str | None = None) -> list[Action]:
    return [s.action for s in steps if node is None or s.node == node]


def test_rolling_changes_one_node_after_the_other_cordon_to_return() -> None:
    steps = expand(plan(Strategy.ROLLING))
    assert actions(steps) == PER_NODE * 3
    assert [s.node for s in steps] == [n for n in ("n0", "n1", "n2") for _ in PER_NODE]
    restart = next(s for s in steps if s.action is A.RESTART)
    assert restart.params["expected_gpus"] == 2 and restart.params["config"] == "mps-2"


def test_rolling_without_migration_drains_then_waits_for_its_pods_to_come_back() -> None:
    steps = expand(plan(Strategy.ROLLING, nodes=1, migrate=False))
    assert actions(steps) == [A.CORDON, A.DRAIN, A.SET_CONFIG, A.RESTART, A.WAIT_ADVERTISED,
                              A.UNCORDON, A.RETURN]


def test_canary_analyzes_the_canary_then_awaits_promotion_then_the_rest() -> None:
    p = plan(Strategy.CANARY, nodes=3).with_canaries(gpu_nodes=12)
    assert p.canary_nodes == ("n0", "n1")  # 10 % of 12 GPU nodes, rounded up
    steps = expand(p)
    kinds = actions(steps)
    analyze = kinds.index(A.ANALYZE)
    assert kinds[:analyze] == PER_NODE * 2
    assert kinds[analyze + 1] is A.AWAIT_PROMOTION
    assert kinds[analyze + 2:] == PER_NODE
    assert steps[analyze].params["nodes"] == ["n0", "n1"]
    assert steps[analyze].params["window_s"] == 3600.0


@pytest.mark.parametrize(("gpu_nodes", "count"), [(1, 1), (5, 1), (10, 1), (11, 2), (30, 3)])
def test_canary_is_ten_percent_of_gpu_nodes_at_least_one(gpu_nodes: int, count: int) -> None:
    assert canary_count(gpu_nodes) == count


def test_blue_green_prepares_green_empty_then_shifts_10_50_100() -> None:
    steps = expand(plan(Strategy.BLUE_GREEN, nodes=2))
    kinds = actions(steps)
    prep = [A.CORDON, A.MIGRATE, A.DRAIN, A.SET_CONFIG, A.RESTART, A.WAIT_ADVERTISED]
    assert kinds == prep * 2 + [A.UNCORDON, A.UNCORDON, A.SHIFT, A.SHIFT, A.SHIFT]
    assert [s.params["percent"] for s in steps if s.action is A.SHIFT] == [10, 50, 100]


def test_emergency_evacuates_applies_then_validates() -> None:
    steps = expand(plan(Strategy.EMERGENCY, nodes=2))
    node = [A.CORDON, A.EVACUATE, A.DRAIN, A.SET_CONFIG, A.RESTART, A.WAIT_ADVERTISED,
            A.UNCORDON, A.RETURN]
    assert actions(steps) == node * 2 + [A.VALIDATE]


@pytest.mark.parametrize("strategy", list(Strategy))
def test_every_cordon_is_followed_by_an_uncordon_forward_and_in_rollback(
        strategy: Strategy) -> None:
    p = plan(strategy, nodes=3)
    forward = expand(p)
    back = rollback_steps(p, touched=["n0", "n1"], shifted=strategy is Strategy.BLUE_GREEN)
    for steps in (forward, back):
        for s in steps:
            if s.action is A.CORDON:
                later = steps[steps.index(s) + 1:]
                assert any(x.action is A.UNCORDON and x.node == s.node for x in later)


def test_rollback_restores_touched_nodes_newest_first_to_their_from_config() -> None:
    p = plan(Strategy.BLUE_GREEN, nodes=3)
    back = rollback_steps(p, touched=["n0", "n1", "n0"], shifted=True)
    assert back[0].action is A.UNSHIFT
    assert [s.node for s in back if s.action is A.CORDON] == ["n1", "n0"]
    assert all(s.rollback for s in back)
    restart = [s for s in back if s.action is A.RESTART]
    assert {s.params["config"] for s in restart} == {"mps-4"}
    assert {s.params["expected_gpus"] for s in restart} == {4}
    assert all(s.node != "n2" for s in back)


def test_steps_round_trip_through_json() -> None:
    for s in expand(plan(Strategy.CANARY)) + rollback_steps(plan(Strategy.ROLLING),
                                                            touched=["n0"]):
        assert StepSpec.from_json(s.to_json()) == s


def test_plan_round_trips_and_refuses_bad_fields_by_name() -> None:
    p = plan(Strategy.CANARY, canary_nodes=("n1",), auto_promote=True)
    assert RolloutPlan.from_json(p.to_json()) == p
    with pytest.raises(ValidationError) as e:
        NodeChange("n0", "mps-4", "mps-4", 1)
    assert e.value.field == "changes.n0.to_config"
    with pytest.raises(ValidationError) as e:
        NodeChange("n0", "mps-4", "mps-banana", 1)
    assert e.value.field == "changes.n0.to_config"
    with pytest.raises(ValidationError) as e:
        plan(Strategy.ROLLING, canary_nodes=("n0",))
    assert e.value.field == "canary_nodes"
    with pytest.raises(ValidationError) as e:
        plan(Strategy.BLUE_GREEN, blue_nodes=("n0",))
    assert e.value.field == "blue_nodes"
    with pytest.raises(ValidationError) as e:
        plan(Strategy.ROLLING, shift_steps=(50, 10, 100))
    assert e.value.field == "shift_steps"


def test_validation_refuses_too_much_disruption_or_too_little_capacity_with_why() -> None:
    limits = Limits()
    ok = plan(Strategy.ROLLING, predicted_disruption=0.10, free_capacity=0.30)
    assert validate_plan(ok, limits=limits) is ok
    with pytest.raises(ValidationError, match="at most 10%") as e:
        validate_plan(plan(Strategy.ROLLING, predicted_disruption=0.2), limits=limits)
    assert e.value.field == "predicted_disruption"
    with pytest.raises(ValidationError, match="at least 30%") as e:
        validate_plan(plan(Strategy.ROLLING, free_capacity=0.2), limits=limits)
    assert e.value.field == "free_capacity"
    generous = Limits(name="emergency_fix", max_disruption=0.5, min_free_capacity=0.1)
    emergency = RolloutPlan(strategy=Strategy.EMERGENCY, update_type="emergency_fix",
                            changes=ok.changes, predicted_disruption=0.4)
    with pytest.raises(ValidationError, match="30 %"):
        validate_plan(emergency, limits=generous)
    with pytest.raises(ValidationError) as e:
        validate_plan(ok, limits=limits, known_nodes=["n0"])
    assert e.value.field == "changes"
    with pytest.raises(ValidationError) as e:
        validate_plan(ok, limits=generous)
    assert e.value.field == "update_type"


def test_the_settings_update_types_are_the_limits_plans_are_validated_against(
        settings: Settings) -> None:
    routine = settings.rollouts.update_type("routine_optimization")
    ok = plan(Strategy.ROLLING, predicted_disruption=0.10, free_capacity=0.30)
    assert validate_plan(ok, limits=routine) is ok
    with pytest.raises(ValidationError) as e:
        validate_plan(plan(Strategy.ROLLING, predicted_disruption=0.11), limits=routine)
    assert e.value.field == "predicted_disruption"


def test_breaker_opens_after_three_failures_half_opens_after_an_hour_one_trial() -> None:
    b = Breaker()
    for i in range(2):
        b = b.failed(100.0 + i, reason="restart failed")
        assert b.state is BreakerState.CLOSED and b.may_start(1, 100.0)[0]
    b = b.failed(102.0, reason="restart failed")
    assert b.state is BreakerState.OPEN
    ok, why = b.may_start(1, 103.0)
    assert not ok and "3 failed updates" in why and "restart failed" in why
    later = 102.0 + 3600.0
    assert b.current(later).state is BreakerState.HALF_OPEN
    trial = b.started(7, later)
    assert trial.may_start(7, later)[0] and not trial.may_start(8, later)[0]
    assert trial.failed(later + 1, reason="again").state is BreakerState.OPEN
    closed = trial.succeeded(later + 1)
    assert closed.state is BreakerState.CLOSED and closed.consecutive_failures == 0
    assert Breaker.from_json(trial.to_json()) == trial
    assert trial.released(7).may_start(8, later)[0]  # a stopped trial frees the slot
    assert trial.released(9) == trial
    assert Breaker.from_json(None) == Breaker()
    assert Breaker().failed(1.0, reason="x").succeeded(2.0).failed(3.0, reason="y") \
        .consecutive_failures == 1  # a success in between starts the count again


def h(qps: float, err: float | None, p99: float | None) -> analysis.Health:
    return analysis.Health(qps=qps, error_rate=err, p99_ms=p99)


def samples(err: float, p99: float, *, n: int, qps: float = 10.0) -> list[analysis.Sample]:
    return [analysis.Sample(at=100.0 + 10 * i, canary=h(qps, err, p99),
                            baseline=h(50.0, 0.0, 300.0)) for i in range(n)]


def test_analysis_passes_fails_or_is_inconclusive() -> None:
    t = analysis.Thresholds()
    judge = analysis.judge
    passed = judge(samples(0.01, 900, n=6), started_at=100, window_s=60, now=160, thresholds=t)
    assert passed.verdict is analysis.Verdict.PASSED
    errors = judge(samples(0.06, 900, n=3), started_at=100, window_s=600, now=130, thresholds=t)
    assert errors.verdict is analysis.Verdict.FAILED and "error rate" in errors.reason
    slow = judge(samples(0.0, 2500, n=3), started_at=100, window_s=600, now=130, thresholds=t)
    assert slow.verdict is analysis.Verdict.FAILED and "p99" in slow.reason
    running = judge(samples(0.0, 100, n=3), started_at=100, window_s=600, now=130,
                    thresholds=t)
    assert running.verdict is analysis.Verdict.RUNNING
    none = judge(samples(0.0, 100, n=6, qps=0.0), started_at=100, window_s=60, now=160,
                 thresholds=t)
    assert none.verdict is analysis.Verdict.INCONCLUSIVE and "unknown" in none.reason
    strict = analysis.Thresholds(max_error_rate=0.005)
    assert judge(samples(0.01, 900, n=6), started_at=100, window_s=60, now=160,
                 thresholds=strict).verdict is analysis.Verdict.FAILED


def test_no_traffic_is_unknown_not_healthy() -> None:
    assert analysis.combine([]) == analysis.NO_TRAFFIC
    assert analysis.combine([h(0.0, None, None)]).error_rate is None
    both = analysis.combine([h(10.0, 0.1, 100.0), h(30.0, 0.0, 200.0)])
    assert both.error_rate == pytest.approx(0.025) and both.p99_ms == pytest.approx(175.0)

"""Optimization feedback (SPEC §3.7): observations, calibration, bounded proposals."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import feedback as fb
from core.errors import ValidationError
from core.model import COMPONENTS, Gpu, MpsSlice, Node, SchedulerWeights, WorkloadClass
from core.settings import Settings
from core.sim.perf_model import PerfModel
from core.telemetry import DeploymentTelemetry, FleetTelemetry, FleetTotals, GpuTelemetry

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ACTIVE = SchedulerWeights()  # 0.30 / 0.25 / 0.20 / 0.15 / 0.10
EPS = 1e-9


def assert_within_bounds(active: SchedulerWeights, weights: SchedulerWeights,
                         max_step: float) -> None:
    values = weights.as_dict()
    assert all(0.0 <= v <= 1.0 for v in values.values()), values
    assert abs(math.fsum(values.values()) - 1.0) <= EPS, values
    assert fb.max_move(active, weights) <= max_step + EPS


def observation(*, gpu_type: str = "A100", wc: WorkloadClass = WorkloadClass.MEDIUM,
                tput: float | None = 1.0, latency: float | None = 1.0, pure: bool = True,
                qps: float = 10.0, owner: str = "r") -> fb.Observation:
    """A synthetic observation with the given actual/predicted ratios."""
    return fb.Observation(
        owner=owner, model="m", node="n", gpu_index=0, gpu_type=gpu_type, workload_class=wc,
        share_pct=50, co_runners=0, decision=True, weight_version=1, served_qps=qps,
        predicted_capacity_rps=20.0, actual_capacity_rps=None if tput is None else 20.0 * tput,
        predicted_latency_ms=400.0, actual_latency_ms=None if latency is None else 400.0 * latency,
        latency_pure=pure, cost_per_hour=Decimal("1.0"), power_cost_per_hour=Decimal("0.02"),
        cost_per_inference=Decimal("0.00002"), utilization_efficiency=0.5)


OBSERVATIONS = [observation(owner=f"r{i}") for i in range(5)]


def cheaper_when(component: str, *, base: float = 0.02, gain: float = 0.2,
                 sla: float = 0.99) -> fb.Evaluator:
    """A synthetic replay: cost falls as ``component``'s weight rises; SLA stays put."""
    def evaluate(w: SchedulerWeights) -> fb.CandidateScore:
        delta = w.as_dict()[component] - ACTIVE.as_dict()[component]
        return fb.CandidateScore(cost_per_1k=Decimal(str(round(base * (1 - gain * delta * 10),
                                                               10))),
                                 sla_attainment=sla)
    return evaluate


# ----------------------------------------------------------------------------- bounds
weights_strategy = st.lists(
    st.one_of(st.just(0.0), st.floats(0.0, 1.0, allow_nan=False)), min_size=5, max_size=5,
).filter(lambda xs: sum(xs) > 1e-3).map(
    lambda xs: SchedulerWeights.normalized(dict(zip(COMPONENTS, xs, strict=True))))


@settings(max_examples=150, deadline=None)
@given(active=weights_strategy, max_step=st.floats(0.001, 0.5),
       fractions=st.lists(st.floats(0.01, 1.0), min_size=1, max_size=3), data=st.data())
def test_candidates_and_proposals_never_leave_the_bounds(
        active: SchedulerWeights, max_step: float, fractions: list[float],
        data: st.DataObject) -> None:
    policy = fb.FeedbackPolicy(max_step=max_step, step_fractions=tuple(fractions),
                               min_observations=1)
    for cand in fb.candidates(active, policy):
        assert_within_bounds(active, cand.weights, max_step)

    def any_evaluator(_: SchedulerWeights) -> fb.CandidateScore:
        return fb.CandidateScore(
            cost_per_1k=data.draw(st.decimals(0, 1, places=6)),
            sla_attainment=data.draw(st.floats(0.0, 1.0)))

    result = fb.search(active, any_evaluator, policy=policy)
    for s in result.scored:
        assert_within_bounds(active, s.candidate.weights, max_step)
    proposal = fb.feedback_step(active=active, observations=OBSERVATIONS,
                                evaluate=any_evaluator, policy=policy, now=NOW)
    if proposal is not None:
        assert_within_bounds(active, proposal.weights, max_step)
        assert proposal.improvement >= policy.min_improvement
        assert proposal.expected.sla_attainment >= proposal.baseline.sla_attainment
        assert proposal.expected.cost_per_1k <= proposal.baseline.cost_per_1k * Decimal("0.98")
        json.dumps(proposal.evidence, allow_nan=False)


def test_candidates_from_a_corner_of_the_simplex_only_take_from_what_exists() -> None:
    corner = SchedulerWeights(efficiency=1.0, affinity=0.0, utilization=0.0, power=0.0, mps=0.0)
    cands = fb.candidates(corner, fb.FeedbackPolicy(max_step=0.05))
    assert len(cands) == 4  # efficiency gives 0.05 to each of the others
    for c in cands:
        assert_within_bounds(corner, c.weights, 0.05)
        assert c.weights.efficiency == pytest.approx(0.95)


def test_candidates_are_every_pairwise_move_and_deterministic() -> None:
    policy = fb.FeedbackPolicy(max_step=0.05, step_fractions=(1.0, 0.5))
    first, second = fb.candidates(ACTIVE, policy), fb.candidates(ACTIVE, policy)
    assert len(first) == 40  # 5 × 4 ordered pairs × 2 step sizes
    assert [c.weights for c in first] == [c.weights for c in second]
    assert max(c.max_move for c in first) == pytest.approx(0.05)


# ----------------------------------------------------------------------------- selection
def test_proposes_the_cheapest_move_with_evidence_when_it_clears_the_margin() -> None:
    proposal = fb.feedback_step(active=ACTIVE, observations=OBSERVATIONS,
                                evaluate=cheaper_when("mps"), now=NOW, active_version=3)
    assert proposal is not None
    assert proposal.weights.mps == pytest.approx(0.15)  # one full step towards mps
    assert fb.max_move(ACTIVE, proposal.weights) == pytest.approx(0.05)
    assert proposal.improvement == pytest.approx(0.1)
    assert "mps +0.050" in proposal.reason and "cost per 1k" in proposal.reason
    assert proposal.based_on_version == 3
    ev = proposal.evidence
    json.dumps(ev, allow_nan=False)
    assert ev["schema"] == fb.EVIDENCE_SCHEMA
    assert ev["based_on_version"] == 3
    assert ev["proposed"]["mps"] == pytest.approx(0.15)
    assert ev["change"]["mps"] == pytest.approx(0.05)
    baseline = [r for r in ev["candidates"] if r["baseline"]]
    chosen = [r for r in ev["candidates"] if r["chosen"]]
    assert len(baseline) == 1 and len(chosen) == 1
    assert chosen[0]["cost_per_1k"] < baseline[0]["cost_per_1k"]
    assert ev["summary"]["improvement"] == pytest.approx(0.1)
    assert ev["observations"]["count"] == 5 and len(ev["observations"]["points"]) == 5
    assert ev["calibration"][0]["gpu_type"] == "A100"


def test_second_round_joins_improving_moves_on_disjoint_components() -> None:
    def evaluate(w: SchedulerWeights) -> fb.CandidateScore:
        # Cheaper with more mps and more affinity; the two gains add up.
        gain = (w.mps - 0.10) + (w.affinity - 0.25)
        return fb.CandidateScore(cost_per_1k=Decimal(str(round(0.02 * (1 - 2 * gain), 10))),
                                 sla_attainment=0.99)

    result = fb.search(ACTIVE, evaluate, policy=fb.FeedbackPolicy())
    assert result.chosen is not None and result.chosen.round == 2
    assert result.chosen.candidate.weights.mps == pytest.approx(0.15)
    assert result.chosen.candidate.weights.affinity == pytest.approx(0.30)
    assert_within_bounds(ACTIVE, result.chosen.candidate.weights, 0.05)


def test_no_proposal_without_a_meaningful_improvement() -> None:
    def one_percent(w: SchedulerWeights) -> fb.CandidateScore:
        cost = Decimal("0.0200") if w == ACTIVE else Decimal("0.0198")
        return fb.CandidateScore(cost_per_1k=cost, sla_attainment=0.99)

    assert fb.feedback_step(active=ACTIVE, observations=OBSERVATIONS, evaluate=one_percent,
                            now=NOW) is None
    result = fb.search(ACTIVE, one_percent)
    assert result.chosen is None and "2.0%" in result.why_not


def test_no_proposal_when_sla_attainment_drops_even_if_much_cheaper() -> None:
    def cheaper_but_worse(w: SchedulerWeights) -> fb.CandidateScore:
        if w == ACTIVE:
            return fb.CandidateScore(cost_per_1k=Decimal("0.02"), sla_attainment=0.99)
        return fb.CandidateScore(cost_per_1k=Decimal("0.01"), sla_attainment=0.989)

    assert fb.feedback_step(active=ACTIVE, observations=OBSERVATIONS,
                            evaluate=cheaper_but_worse, now=NOW) is None


def test_no_proposal_from_too_few_observations_and_the_evaluator_is_not_even_run() -> None:
    calls: list[SchedulerWeights] = []

    def evaluate(w: SchedulerWeights) -> fb.CandidateScore:
        calls.append(w)
        return cheaper_when("mps")(w)

    blind = [observation(tput=None, latency=None)] * 10  # nothing to compare
    assert fb.feedback_step(active=ACTIVE, observations=OBSERVATIONS[:2] + blind,
                            evaluate=evaluate, now=NOW) is None
    assert calls == []


def test_the_same_inputs_give_the_same_proposal() -> None:
    a = fb.feedback_step(active=ACTIVE, observations=OBSERVATIONS,
                         evaluate=cheaper_when("power"), now=NOW)
    b = fb.feedback_step(active=ACTIVE, observations=OBSERVATIONS,
                         evaluate=cheaper_when("power"), now=NOW)
    assert a is not None and b is not None
    assert a.weights == b.weights and a.evidence == b.evidence


def test_candidate_scores_are_validated() -> None:
    with pytest.raises(ValidationError, match="sla_attainment"):
        fb.CandidateScore(cost_per_1k=Decimal("0.01"), sla_attainment=1.5)
    with pytest.raises(ValidationError, match="cost_per_1k"):
        fb.CandidateScore(cost_per_1k=float("nan"), sla_attainment=0.9)  # type: ignore[arg-type]
    assert fb.CandidateScore(cost_per_1k=0.5, sla_attainment=1).cost_per_1k == Decimal("0.5")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- calibration
def test_calibration_is_the_clipped_median_per_gpu_type_and_class() -> None:
    obs = [observation(tput=t, latency=lat)
           for t, lat in ((0.8, 1.2), (0.9, 1.3), (0.85, 9.0))]
    obs += [observation(gpu_type="H100", wc=WorkloadClass.LARGE, tput=1.1, latency=2.0,
                        pure=False)]
    obs += [observation(gpu_type="H100", wc=WorkloadClass.LARGE, tput=None, latency=None)]
    cal = fb.calibrate(obs, fb.FeedbackPolicy(min_key_observations=2))
    a100 = cal.entry("A100", WorkloadClass.MEDIUM)
    assert a100 is not None
    assert a100.throughput_ratio == pytest.approx(0.85) and a100.throughput_n == 3
    assert a100.latency_ratio == pytest.approx(1.3) and a100.latency_n == 3  # 9.0 clipped to 4
    h100 = cal.entry("H100", WorkloadClass.LARGE)
    assert h100 is not None
    assert h100.throughput_n == 1 and h100.latency_n == 0  # a mixed deployment's latency: out
    # Capacity 0.85 of predicted: times scale by 1/0.85; H100 has too few points to move.
    assert cal.time_scale("A100", WorkloadClass.MEDIUM) == pytest.approx(1 / 0.85)
    assert cal.time_scale("H100", WorkloadClass.LARGE) == 1.0
    assert cal.time_scale("A100", WorkloadClass.TINY) == 1.0
    rows = cal.as_rows()
    json.dumps(rows, allow_nan=False)
    assert [r["gpu_type"] for r in rows] == ["A100", "H100"]


def test_calibrated_model_serves_what_the_fleet_served(settings: Settings) -> None:
    perf = PerfModel.for_catalog(settings.catalog)
    cal = fb.calibrate([observation(tput=0.8)] * 3)
    tuned = fb.calibrated_perf_model(perf, cal)
    kwargs = {"share": 0.5, "prompt_tokens": 176, "output_tokens": 15}
    before = perf.max_throughput_rps(WorkloadClass.MEDIUM, "A100", **kwargs)
    after = tuned.max_throughput_rps(WorkloadClass.MEDIUM, "A100", **kwargs)
    assert after == pytest.approx(0.8 * before)
    untouched = (WorkloadClass.LARGE, "H100")
    assert tuned.params[untouched] == perf.params[untouched]


# ----------------------------------------------------------------------------- observations
def _fleet(settings: Settings, *, util_factor: float) -> tuple[list[Node], FleetTelemetry,
                                                               PerfModel, float]:
    """One A100 with two medium slices (one placed by the scheduler), measured at
    ``util_factor`` × the utilization the model predicts."""
    perf = PerfModel.for_catalog(settings.catalog)
    slices = (MpsSlice(owner="req-1", thread_pct=50, memory_mib=8192, model="mistral",
                       workload_class=WorkloadClass.MEDIUM),
              MpsSlice(owner="llama-0", thread_pct=50, memory_mib=8192, model="llama",
                       workload_class=WorkloadClass.MEDIUM))
    nodes = [Node(name="a100-0", gpus=(Gpu(index=0, gpu_type="A100", memory_total_mib=40960,
                                           slices=slices),))]
    work = perf.params_for(WorkloadClass.MEDIUM, "A100").work_s(176, 15, 0.5)
    m = perf.slowdown(1)
    predicted_util = 2 * 0.5 * (10.0 * m * work)
    tel = FleetTelemetry(
        timestamp=0.0,
        gpus=(GpuTelemetry(node="a100-0", gpu_index=0, gpu_type="A100", uuid="u",
                           utilization=predicted_util * util_factor, power_w=250.0,
                           memory_used_mib=16384, memory_total_mib=40960, energy_j=0.0,
                           qps_1m=20.0),),
        deployments=tuple(
            DeploymentTelemetry(model=name, namespace="inference", replicas=1, qps_1m=10.0,
                                qps_5m=10.0, qps_15m=10.0, qps_1h=10.0, success_rate=1.0,
                                p99_latency_ms=900.0, mean_latency_ms=lat, ttft_p50_ms=50.0,
                                queue_waiting=0, running=3, tokens_per_s=150.0)
            for name, lat in (("mistral", 600.0), ("llama", 500.0))),
        totals=FleetTotals(qps=20.0, power_w=250.0, tops_per_w=1.0))
    return nodes, tel, perf, predicted_util


def test_observe_compares_prediction_with_telemetry_per_replica(settings: Settings) -> None:
    nodes, tel, perf, _ = _fleet(settings, util_factor=1.25)
    placed = fb.PlacedReplica(request_id="req-1", model="mistral", namespace="inference",
                              node="a100-0", gpu_index=0, workload_class=WorkloadClass.MEDIUM,
                              share_pct=50, weight_version=4, decision_id=9,
                              latency_sla_ms=800.0)
    obs = fb.observe(replicas=[placed], nodes=nodes, telemetry=tel, perf=perf,
                     catalog=settings.catalog)
    assert [o.owner for o in obs] == ["req-1", "llama-0"]
    mine, other = obs
    assert mine.decision and mine.weight_version == 4 and mine.latency_sla_ms == 800.0
    assert not other.decision and other.weight_version is None
    assert mine.co_runners == 1 and mine.served_qps == pytest.approx(10.0)
    # The GPU works 25 % harder than predicted: capacity is 1/1.25 of predicted.
    assert mine.throughput_ratio == pytest.approx(0.8)
    assert mine.predicted_capacity_rps == pytest.approx(
        perf.max_throughput_rps(WorkloadClass.MEDIUM, "A100", share=0.5, prompt_tokens=176,
                                output_tokens=15, co_runners=1))
    predicted = perf.steady_state(WorkloadClass.MEDIUM, "A100", share=0.5, prompt_tokens=176,
                                  output_tokens=15, arrival_rps=10.0, co_runners=1)
    assert mine.predicted_latency_ms == pytest.approx(predicted.latency_s * 1000)
    assert mine.actual_latency_ms == 600.0
    # Cost: half the A100's hourly price + half its power at the electricity price.
    price = settings.catalog["A100"].price_per_gpu_hour
    power_cost = Decimal("125") / 1000 * settings.catalog.electricity_per_kwh
    assert mine.power_cost_per_hour == power_cost
    assert mine.cost_per_hour == price / 2 + power_cost
    assert mine.cost_per_inference == pytest.approx((price / 2 + power_cost) / 36000)
    assert 0 < mine.utilization_efficiency <= 1

    cal = fb.calibrate(obs)
    entry = cal.entry("A100", WorkloadClass.MEDIUM)
    assert entry is not None and entry.throughput_ratio == pytest.approx(0.8)
    summary = fb.outcome_summary(obs)
    json.dumps(summary, allow_nan=False)
    assert summary["served_qps"] == pytest.approx(20.0)
    assert summary["replicas"] == 2


def test_observe_leaves_out_unplaced_replicas_when_asked_and_idle_gpus_give_no_ratio(
        settings: Settings) -> None:
    nodes, tel, perf, _ = _fleet(settings, util_factor=1.0)
    only_decisions = fb.observe(replicas=[], nodes=nodes, telemetry=tel, perf=perf,
                                catalog=settings.catalog, include_unplaced=False)
    assert only_decisions == []
    idle = replace(tel, gpus=(replace(tel.gpus[0], utilization=0.0),))
    obs = fb.observe(replicas=[], nodes=nodes, telemetry=idle, perf=perf,
                     catalog=settings.catalog)
    assert all(o.throughput_ratio is None for o in obs)
    assert all(o.latency_ratio is not None for o in obs)
    missing = replace(tel, gpus=())  # the node's exporter did not answer
    assert fb.observe(replicas=[], nodes=nodes, telemetry=missing, perf=perf,
                      catalog=settings.catalog) == []


# ----------------------------------------------------------------------------- auto-apply
def test_auto_apply_only_when_on_small_and_against_the_current_weights() -> None:
    small = fb.shifted(ACTIVE, {"mps": 0.02, "power": -0.02}, max_step=0.05)
    large = fb.shifted(ACTIVE, {"mps": 0.05, "power": -0.05}, max_step=0.05)
    assert small is not None and large is not None
    off = fb.FeedbackPolicy()
    on = fb.FeedbackPolicy(auto_apply=True, auto_apply_max_step=0.02)
    assert not fb.within_auto_apply_bounds(ACTIVE, small.weights, policy=off)
    assert fb.within_auto_apply_bounds(ACTIVE, small.weights, policy=on)
    assert not fb.within_auto_apply_bounds(ACTIVE, large.weights, policy=on)
    floor = fb.FeedbackPolicy(auto_apply=True, auto_apply_max_step=0.05,
                              auto_apply_min_weight=0.12)
    assert "power would fall below 0.12" in fb.auto_apply_violations(ACTIVE, large.weights,
                                                                     policy=floor)
    proposal = fb.feedback_step(active=ACTIVE, observations=OBSERVATIONS,
                                evaluate=cheaper_when("mps"), now=NOW,
                                policy=fb.FeedbackPolicy(max_step=0.02, auto_apply=True))
    assert proposal is not None
    assert fb.within_auto_apply_bounds(ACTIVE, proposal, policy=on)
    moved_on = fb.shifted(ACTIVE, {"efficiency": 0.05, "affinity": -0.05}, max_step=0.05)
    assert moved_on is not None
    assert not fb.within_auto_apply_bounds(moved_on.weights, proposal, policy=on)  # stale


def test_policy_validation_names_the_field_and_due_follows_the_interval() -> None:
    with pytest.raises(ValidationError, match=r"feedback\.max_step"):
        fb.FeedbackPolicy(max_step=0.0)
    with pytest.raises(ValidationError, match=r"feedback\.ratio_clip"):
        fb.FeedbackPolicy(ratio_clip=(2.0, 4.0))
    with pytest.raises(ValidationError, match=r"feedback\.min_observations"):
        fb.FeedbackPolicy(min_observations=-1)
    policy = fb.FeedbackPolicy(interval_s=600)
    assert fb.due(last_run_at=None, now=NOW, policy=policy)
    assert not fb.due(last_run_at=NOW - timedelta(seconds=599), now=NOW, policy=policy)
    assert fb.due(last_run_at=NOW - timedelta(seconds=600), now=NOW, policy=policy)


# ----------------------------------------------------------------------------- payloads
def _proposal_and_outcome() -> tuple[fb.Proposal, fb.FeedbackOutcome]:
    outcome = fb.run_feedback(active=ACTIVE, observations=OBSERVATIONS,
                              evaluate=cheaper_when("mps"), now=NOW, active_version=3)
    assert outcome.proposal is not None
    return outcome.proposal, outcome


def test_evidence_reads_back_as_the_typed_value_it_was_written_from() -> None:
    proposal, outcome = _proposal_and_outcome()
    assert outcome.result is not None
    made = fb.make_evidence(active=ACTIVE, active_version=3, result=outcome.result,
                            calibration=fb.calibrate(OBSERVATIONS), observations=OBSERVATIONS,
                            policy=fb.FeedbackPolicy(), now=NOW)
    assert made.to_json() == proposal.evidence  # the stored JSON is the typed value's
    stored = json.loads(json.dumps(proposal.evidence, allow_nan=False))  # through the store
    ev = fb.Evidence.from_json(stored)
    assert ev == made
    assert ev.to_json() == proposal.evidence
    assert ev.generated_at == NOW and ev.based_on_version == 3
    assert ev.chosen is not None
    assert ev.chosen.weights.as_dict() == pytest.approx(proposal.weights.as_dict())
    assert ev.change["mps"] == pytest.approx(0.05)
    assert ev.summary.baseline_cost_per_1k == Decimal("0.02")
    assert ev.observations.shown == len(ev.observations.points) == 5
    assert ev.calibration[0].workload_class is WorkloadClass.MEDIUM
    assert fb.OutcomeSummary.from_json(stored["outcomes"]) == ev.outcomes


def _garble(data: dict[str, object], path: str, value: object) -> dict[str, object]:
    """``data`` (deep-copied) with the item at ``path`` ("a.b.0.c") set to ``value``,
    or removed when ``value`` is ``...``."""
    copy = json.loads(json.dumps(data))
    *parents, last = path.split(".")
    node = copy
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return copy


@pytest.mark.parametrize(("path", "value", "field"), [
    ("schema", 2, "evidence.schema"),
    ("generated_at", "yesterday", "evidence.generated_at"),
    ("generated_at", "2025-03-01T12:00:00", "evidence.generated_at"),  # no time zone
    ("active", ..., "evidence.active"),
    ("proposed.mps", "lots", "evidence.proposed.mps"),
    ("summary", [], "evidence.summary"),
    ("summary.candidates", True, "evidence.summary.candidates"),
    ("candidates.1.cost_per_1k", -1, "evidence.candidates[1].cost_per_1k"),
    ("candidates.0.baseline", False, "evidence.candidates"),  # no baseline row left
    ("observations.points.2.workload_class", "huge", "evidence.observations.points[2]"
                                                     ".workload_class"),
    ("calibration.0.latency_n", 1.5, "evidence.calibration[0].latency_n"),
    ("outcomes.by_gpu_type", "A100", "evidence.outcomes.by_gpu_type"),
])
def test_garbled_evidence_is_refused_naming_the_field(path: str, value: object,
                                                      field: str) -> None:
    proposal, _ = _proposal_and_outcome()
    with pytest.raises(ValidationError) as caught:
        fb.Evidence.from_json(_garble(proposal.evidence, path, value))
    assert caught.value.field == field
    with pytest.raises(ValidationError, match="evidence"):
        fb.Evidence.from_json(["not", "an", "object"])


def _run(outcome: fb.FeedbackOutcome, **kwargs: object) -> fb.FeedbackRun:
    args: dict[str, object] = {"at": 1_800_000_000.5, "seconds": 12.345,
                               "observations": OBSERVATIONS, "deployments": 4,
                               "replay_s": 3600.0, "proposed_version": None, "applied": False}
    return fb.FeedbackRun.of_outcome(outcome, **(args | kwargs))  # type: ignore[arg-type]


def test_a_feedback_run_reads_back_as_written_for_every_outcome() -> None:
    _, outcome = _proposal_and_outcome()
    none = fb.FeedbackOutcome(None, "no recent traffic stored to replay yet")
    runs = {
        fb.RunOutcome.PROPOSED: _run(outcome, proposed_version=7),
        fb.RunOutcome.APPLIED: _run(outcome, proposed_version=7, applied=True),
        fb.RunOutcome.NO_CHANGE: _run(none),
        fb.RunOutcome.FAILED: fb.FeedbackRun.failed(at=1_800_000_000.0, seconds=0.5,
                                                    error=RuntimeError("store went away")),
    }
    for kind, run in runs.items():
        assert run.outcome is kind
        data = json.loads(json.dumps(run.to_json(), allow_nan=False))
        assert data["outcome"] == kind.value
        assert fb.FeedbackRun.from_json(data) == run
    proposed = runs[fb.RunOutcome.PROPOSED]
    assert outcome.result is not None
    assert proposed.candidates == len(outcome.result.scored) == len(proposed.scored) > 0
    assert proposed.seconds == 12.35 and proposed.comparable == 5
    assert proposed.baseline_cost_per_1k == Decimal("0.02")
    assert not proposed.auto_applied and runs[fb.RunOutcome.APPLIED].auto_applied
    assert runs[fb.RunOutcome.NO_CHANGE].baseline_cost_per_1k is None
    assert runs[fb.RunOutcome.FAILED].why_not == "RuntimeError: store went away"
    assert fb.FeedbackRun.failed(at=0.0, seconds=0.0, error="x" * 900).why_not.endswith("…")


def test_a_run_published_before_the_outcome_existed_still_reads() -> None:
    legacy = {"at": 1_800_000_000.0, "seconds": 3.2, "observations": 6, "comparable": 4,
              "deployments": 3, "replay_s": 600.0, "candidates": 1,
              "baseline_cost_per_1k": 0.0213, "baseline_sla": 0.97, "proposed_version": 5,
              "auto_applied": True, "why_not": "",
              "scored": [{"candidate": "mps +0.050, power -0.050", "cost_per_1k": 0.0201,
                          "sla": 0.975, "improvement": 0.056, "eligible": True}]}
    run = fb.FeedbackRun.from_json(legacy)
    assert run.outcome is fb.RunOutcome.APPLIED and run.proposed_version == 5
    assert run.scored[0].cost_per_1k == Decimal("0.0201")
    none = fb.FeedbackRun.from_json(legacy | {"proposed_version": None, "auto_applied": False,
                                              "why_not": "no candidate lowers the cost"})
    assert none.outcome is fb.RunOutcome.NO_CHANGE


@pytest.mark.parametrize(("payload", "field"), [
    (None, "feedback.last_run"),
    ("proposed v3", "feedback.last_run"),
    ([], "feedback.last_run"),
    ({}, "feedback.last_run.at"),
    ({"at": 1_800_000_000.0}, "feedback.last_run.seconds"),  # half a payload
])
def test_a_missing_or_partial_feedback_run_is_refused(payload: object, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        fb.FeedbackRun.from_json(payload)
    assert caught.value.field == field


@pytest.mark.parametrize(("data", "field"), [
    ({"outcome": "exploded"}, "feedback.last_run.outcome"),
    ({"schema": 9}, "feedback.last_run.schema"),
    ({"at": "noon"}, "feedback.last_run.at"),
    ({"observations": True}, "feedback.last_run.observations"),
    ({"comparable": 99}, "feedback.last_run.comparable"),
    ({"baseline_sla": 1.5}, "feedback.last_run.baseline_sla"),
    ({"seconds": float("nan")}, "feedback.last_run.seconds"),
    ({"outcome": "proposed"}, "feedback.last_run.proposed_version"),
    ({"proposed_version": 4}, "feedback.last_run.proposed_version"),  # no-change with a version
    ({"why_not": ""}, "feedback.last_run.why_not"),
    ({"candidates": 3}, "feedback.last_run.candidates"),
    ({"scored": [{"candidate": "a", "cost_per_1k": 0.1, "sla": "high", "improvement": 0.0,
                  "eligible": False}]}, "feedback.last_run.scored[0].sla"),
    ({"scored": {"a": 1}}, "feedback.last_run.scored"),
])
def test_a_garbled_feedback_run_is_refused_naming_the_field(data: dict[str, object],
                                                             field: str) -> None:
    good = _run(fb.FeedbackOutcome(None, "nothing to replay")).to_json()
    with pytest.raises(ValidationError) as caught:
        fb.FeedbackRun.from_json(good | data)
    assert caught.value.field == field

"""The ``slo`` policy: objectives in settings, capacity within them, forecast, plan, scale-in."""

from __future__ import annotations

from dataclasses import replace

import pytest

from core.adapters.settings_source import default_mapping, load_settings
from core.autoscale_forecast import Forecaster
from core.autoscale_policy import share_within
from core.autoscale_slo import (
    Addition,
    CapacityTable,
    DeploymentNeed,
    FleetState,
    Planner,
    RequestShape,
    Stabilizer,
    _hourly,
    replica_capacity,
)
from core.controller.payloads import AutoscalingStatus, DeploymentScaling
from core.errors import ValidationError
from core.model import Gpu, MpsSlice, Node, WorkloadClass
from core.ports import ReplicaPod
from core.settings import deep_merge, parse_settings
from core.sim import PerfModel
from core.slo_settings import LatencySlo, SloSettings
from core.states import AutoscalingAction
from core.telemetry import Histogram

SETTINGS = load_settings(env={})
PERF = PerfModel.for_catalog(SETTINGS.catalog)
SHAPE = RequestShape(1000.0, 50.0, 3000.0, 150.0)
SLO = LatencySlo(ttft_s=2.0, tpot_s=0.1)


# ------------------------------------------------------------------------------ settings
def test_slo_is_the_default_policy_and_seed_stays_selectable_per_deployment() -> None:
    assert SETTINGS.slo.policy == "slo"
    s = SloSettings.from_mapping({"ttft_s": 1.5, "deployments": {
        "llama": {"policy": "seed"}, "team/coder": {"tpot_s": 0.05, "ttft_quantile": 0.9}}})
    assert s.policy_for("default/llama") == "seed" and s.policy_for("default/x") == "slo"
    coder = s.objectives_for("team/coder")
    # A deployment's objectives are laid over the section's own.
    assert (coder.ttft_s, coder.tpot_s, coder.ttft_quantile) == (1.5, 0.05, 0.9)
    assert s.objectives_for("default/llama").ttft_s == 1.5


def test_a_target_set_to_zero_is_not_stated_and_none_at_all_is_refused() -> None:
    s = SloSettings.from_mapping({"tpot_s": 0, "e2e_s": 30})
    assert s.objectives.tpot_s is None and s.objectives.e2e_s == 30
    with pytest.raises(ValidationError) as err:
        SloSettings.from_mapping({"ttft_s": 0, "tpot_s": 0})
    assert err.value.field == "slo"


@pytest.mark.parametrize(("raw", "field"), [
    ({"ttft_quantile": 1.0}, "slo.ttft_quantile"),
    ({"policy": "fast"}, "slo.policy"),
    ({"bogus": 1}, "slo.bogus"),
    ({"deployments": {"m": {"ttft_s": -1}}}, "slo.deployments.m.ttft_s"),
    ({"max_utilization": 2}, "slo.max_utilization"),
])
def test_bad_slo_settings_are_refused_naming_the_key(raw: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        SloSettings.from_mapping(raw)
    assert err.value.field == field


def test_the_slo_section_is_read_from_the_settings_file() -> None:
    raw = deep_merge(default_mapping(), {"slo": {"policy": "seed", "ttft_s": 3.0}})
    s = parse_settings(raw)
    assert s.slo.policy == "seed" and s.slo.objectives.ttft_s == 3.0


def test_a_request_meets_its_slo_only_when_it_meets_every_target() -> None:
    assert SLO.met(ttft_s=1.0, tpot_s=0.05, e2e_s=99.0)
    assert not SLO.met(ttft_s=2.5, tpot_s=0.05, e2e_s=1.0)
    assert not SLO.met(ttft_s=1.0, tpot_s=0.2, e2e_s=1.0)


# ------------------------------------------------------------------------------ capacity
def capacity(gpu_type: str = "A100", *, objectives: LatencySlo = SLO, share: float = 0.5,
             co_runners: int = 0, max_utilization: float = 0.85) -> float:
    return replica_capacity(PERF, workload_class=WorkloadClass.MEDIUM, gpu_type=gpu_type,
                            share=share, shape=SHAPE, objectives=objectives,
                            co_runners=co_runners, max_utilization=max_utilization).rps


def test_a_replica_at_its_capacity_still_meets_its_objectives() -> None:
    c = replica_capacity(PERF, workload_class=WorkloadClass.MEDIUM, gpu_type="A100", share=0.5,
                         shape=SHAPE, objectives=LatencySlo(ttft_s=0.8, tpot_s=0.1),
                         co_runners=0, max_utilization=0.95)
    assert 0 < c.rps < c.saturated_rps * 0.95 and c.limited_by in ("ttft", "tpot")
    p = PERF.params_for(WorkloadClass.MEDIUM, "A100")
    point = PERF.steady_state(WorkloadClass.MEDIUM, "A100", share=0.5, prompt_tokens=1000,
                              output_tokens=50, arrival_rps=c.rps)
    step = p.iteration_s(max(point.decode_batch, 1.0), 0.5)
    assert p.prefill_s(3000, 0.5) + step <= 0.8 + 1e-6
    assert step / (1 - point.prefill_fraction) <= 0.1 + 1e-6


def test_capacity_grows_with_looser_objectives_faster_gpus_and_fewer_co_runners() -> None:
    tight, loose = capacity(objectives=LatencySlo(ttft_s=0.48, tpot_s=None)), capacity(
        objectives=LatencySlo(ttft_s=5.0))
    assert tight < loose
    assert capacity("H100") > capacity("A100")
    assert capacity(co_runners=3) < capacity(co_runners=0)
    assert capacity(max_utilization=0.5) <= capacity(max_utilization=0.9)


def test_an_objective_no_load_can_meet_gives_no_capacity_and_says_so() -> None:
    c = replica_capacity(PERF, workload_class=WorkloadClass.LARGE, gpu_type="A100", share=1.0,
                         shape=SHAPE, objectives=LatencySlo(ttft_s=0.001), co_runners=0,
                         max_utilization=0.85)
    assert c.rps == 0.0 and c.limited_by == "cannot meet the SLO"


# ------------------------------------------------------------------------------ forecast
def feed(f: Forecaster, counts: list[float], *, step: float = 15.0, key: str = "d/m") -> float:
    t = 0.0
    for i, c in enumerate(counts):
        t = i * step
        f.observe(key, now=t, requests_total=c)
    return t


def test_a_steady_rate_forecasts_itself_with_no_burst() -> None:
    f = Forecaster(SloSettings())
    now = feed(f, [10.0 * 15 * i for i in range(30)])
    fc = f.forecast("d/m", now=now)
    assert fc is not None
    assert fc.recent_rps == pytest.approx(10.0) and fc.trend_rps == pytest.approx(10.0)
    assert fc.burst_factor == pytest.approx(1.0) and fc.planned_rps == pytest.approx(10.0)
    assert fc.daily_rps is None and "daily pattern unused" in fc.note


def test_a_rising_rate_forecasts_more_one_horizon_ahead() -> None:
    f = Forecaster(SloSettings(horizon_s=120))
    total, counts = 0.0, []
    for i in range(30):
        total += (1.0 + 0.1 * i) * 15
        counts.append(total)
    now = feed(f, counts)
    fc = f.forecast("d/m", now=now)
    assert fc is not None and fc.trend_rps_per_min > 0 and fc.trend_rps > fc.recent_rps


def test_bursts_inside_a_minute_add_headroom_up_to_the_cap() -> None:
    f = Forecaster(SloSettings(max_burst_factor=2.5))
    total, counts = 0.0, []
    for i in range(30):
        total += (40.0 if i % 4 == 0 else 0.0) * 15  # one busy 15 s per minute
        counts.append(total)
    fc = f.forecast("d/m", now=feed(f, counts))
    assert fc is not None and fc.burst_factor == pytest.approx(2.5)
    assert fc.planned_rps == pytest.approx(fc.expected_rps * 2.5)


def test_the_daily_pattern_is_used_when_history_has_it() -> None:
    seen = []

    def daily(key: str, t0: float, t1: float) -> float | None:
        seen.append((key, t0, t1))
        return 10.0 if t1 < 86_400 * -1 + 500 else 20.0  # tomorrow's horizon is busier

    f = Forecaster(SloSettings(daily_weight=1.0, horizon_s=120), daily=daily)
    now = feed(f, [10.0 * 15 * i for i in range(30)])
    fc = f.forecast("d/m", now=now)
    assert fc is not None and seen and fc.daily_rps is not None
    assert fc.expected_rps == pytest.approx(fc.daily_rps)


def test_no_forecast_before_two_samples_and_a_reset_counter_starts_over() -> None:
    f = Forecaster(SloSettings())
    f.observe("d/m", now=0.0, requests_total=100)
    assert f.forecast("d/m", now=0.0) is None
    f.observe("d/m", now=15.0, requests_total=5)  # the source restarted
    assert f.forecast("d/m", now=15.0) is None


# ------------------------------------------------------------------------------ the plan
def gpu(index: int, gpu_type: str, slices: tuple[MpsSlice, ...] = ()) -> Node:
    mem = SETTINGS.catalog[gpu_type].memory_mib
    return Node(name=f"{gpu_type.lower()}-{index}",
                gpus=(Gpu(index=0, gpu_type=gpu_type, memory_total_mib=mem, slices=slices),))


def pod(node: Node, name: str, model: str, pct: int) -> ReplicaPod:
    return ReplicaPod(namespace="default", name=name, node=node.name, gpu_index=0, model=model,
                      owner=name, thread_pct=pct, memory_mib=3072, phase="Running")


def need(rps: float | None, *, keep: float | None = None, model: str = "tiny", pct: int = 25,
         wc: WorkloadClass = WorkloadClass.TINY, low: int = 1, high: int = 16
         ) -> DeploymentNeed:
    return DeploymentNeed(key=f"default/{model}", workload_class=wc, share_pct=pct,
                          memory_mib=3072, allowed_types=frozenset(), min_replicas=low,
                          max_replicas=high, need_rps=rps, keep_rps=rps if keep is None else keep,
                          shape=SHAPE, objectives=SLO)


def planner() -> Planner:
    return Planner(SETTINGS.catalog, CapacityTable(PERF, max_utilization=0.85))


def test_a_free_slot_on_a_gpu_already_held_comes_before_a_fresh_gpu() -> None:
    held = gpu(0, "A100", (MpsSlice(owner="a", thread_pct=25, memory_mib=3072),))
    nodes = (held, gpu(1, "A100"), gpu(0, "H100"))
    pods = (pod(held, "a", "tiny", 25),)
    p = planner()
    one = p.capacity(need(None), FleetState.of(nodes, pods))
    [plan] = p.plan([need(one * 1.5)], FleetState.of(nodes, pods))
    assert plan.target == 2 and plan.additions[0].on_gpu_in_use
    assert plan.additions[0].gpu_type == "A100" and "already held" in plan.type_choice
    assert set(plan.per_type) == {"H100", "A100"}


def test_the_next_fresh_gpu_is_the_type_with_the_least_dollars_per_request() -> None:
    nodes = (gpu(0, "A100"), gpu(0, "H100"))
    p = planner()
    [big] = p.plan([need(1e6, model="big", pct=100, wc=WorkloadClass.LARGE, high=1)],
                   FleetState.of(nodes, ()))
    per_rps = {t: _hourly(SETTINGS.catalog, t, fresh=True, share_pct=100) / c.rps
               for t, c in big.per_type.items()}
    assert big.additions[0].gpu_type == min(per_rps, key=per_rps.__getitem__)
    # A small shortfall does not buy the large GPU: what is missing caps the gain counted.
    [small] = p.plan([need(0.01, model="big", pct=100, wc=WorkloadClass.LARGE, low=0)],
                     FleetState.of(nodes, ()))
    assert small.additions[0].gpu_type == "A100"  # the cheaper GPU covers 0.01/s


def test_a_plan_stays_within_min_and_max_replicas() -> None:
    nodes = tuple(gpu(i, "A100") for i in range(4))
    p = planner()
    [low] = p.plan([need(None, low=2)], FleetState.of(nodes, ()))
    assert low.target == 2 and "minimum" in low.reason
    [high] = p.plan([need(1e6, high=3)], FleetState.of(nodes, ()))
    assert high.target == 3


def test_scale_in_frees_a_whole_gpu_first() -> None:
    shared = gpu(0, "A100", (MpsSlice(owner="a", thread_pct=25, memory_mib=3072),
                             MpsSlice(owner="b", thread_pct=25, memory_mib=3072)))
    alone = gpu(1, "A100", (MpsSlice(owner="c", thread_pct=25, memory_mib=3072),))
    pods = (pod(shared, "a", "tiny", 25), pod(shared, "b", "tiny", 25),
            pod(alone, "c", "tiny", 25))
    [plan] = planner().plan([need(0.01)], FleetState.of((shared, alone), pods))
    assert plan.removals[0] == "c"  # the only replica on its GPU: removing it frees the GPU
    assert plan.target == 1 and plan.saving_per_hour > 1.84


def test_unknown_load_is_held_never_scaled_in() -> None:
    nodes = (gpu(0, "A100"), gpu(1, "A100"))
    pods = (pod(nodes[0], "a", "tiny", 25), pod(nodes[1], "b", "tiny", 25))
    [plan] = planner().plan([need(None, keep=None)], FleetState.of(nodes, pods))
    assert plan.target == 2 and not plan.removals and "unknown" in plan.reason


def test_a_short_fleet_goes_to_the_neediest_deployment_first() -> None:
    nodes = (gpu(0, "A100"),)
    plans = planner().plan([need(1e6, model="big", pct=100, wc=WorkloadClass.LARGE, low=0),
                            need(0.1, model="tiny", low=0)], FleetState.of(nodes, ()))
    by = {p.key: p for p in plans}
    # Neither has a replica; the one GPU goes to whichever is neediest, not to both.
    assert sum(len(p.additions) for p in plans) >= 1
    assert by["default/big"].additions or by["default/tiny"].additions


def test_stabilization_scales_up_on_the_lowest_and_in_on_the_highest_need() -> None:
    st = Stabilizer(up_window_s=60, down_window_s=300)
    for t, v in ((0, 5.0), (30, 9.0), (60, 7.0)):
        up, down = st.observe("k", now=t, need=v)
    assert (up, down) == (5.0, 9.0)
    assert not st.covered("k", now=60) and st.covered("k", now=300)


# ------------------------------------------------------------------------ what is published
def scaling(**extra: object) -> DeploymentScaling:
    return DeploymentScaling(
        deployment="default/m", replicas=2, running=2, in_flight=0, queue=0.0, tops_per_w=1.0,
        cost_per_inference=None, utilization=0.5, action=AutoscalingAction.HOLD, target=2,
        reason="slo: covers", pending=AutoscalingAction.HOLD, pending_since=None,
        fires_in_s=None, window_s=None, min_replicas=1, max_replicas=8, **extra)  # type: ignore[arg-type]


def test_the_status_carries_the_slo_view_and_still_reads_an_older_payload() -> None:
    new = scaling(policy="slo", objectives=SLO.describe(), need_rps=4.0, capacity_rps=5.0,
                  forecast={"planned_rps": 4.0, "note": "recent 2/s"},
                  capacity_per_type={"A100": 1.5, "H100": 3.0},
                  limited_by={"A100": "ttft", "H100": "utilization"},
                  type_choice="chose H100", attainment={"ttft": 0.99, "tpot": None})
    status = AutoscalingStatus(at=1.0, paused=False, deployments=(new,))
    assert AutoscalingStatus.from_json(status.to_json()) == status
    old = {k: v for k, v in new.to_json().items() if k in scaling()._base_json()}
    read = DeploymentScaling.from_json(old)
    assert read.policy == "seed" and read.forecast is None and read.capacity_per_type is None
    with pytest.raises(ValidationError) as err:
        DeploymentScaling.from_json({**new.to_json(), "capacity_per_type": {"A100": "x"}})
    assert err.value.field == "deployment.capacity_per_type.A100"


def test_attainment_is_the_share_of_observations_within_a_target() -> None:
    bounds = (0.5, 1.0, 2.0)
    before = Histogram(bounds, (0, 0, 0, 0), 0.0)
    after = Histogram(bounds, (50, 30, 20, 0), 60.0)
    assert share_within(after, before, 1.0) == pytest.approx(0.8)
    assert share_within(after, before, 1.5) == pytest.approx(0.9)  # half of the 1–2 s bucket
    assert share_within(before, before, 1.0) is None  # no observations: unknown


def test_the_policy_plans_from_telemetry_like_the_controller_does() -> None:
    from core.autoscale_policy import SloPolicy, spec_for
    from core.clock import ManualClock
    from core.sim.traffic import constant_traffic
    from core.sim.twin import Twin
    clock = ManualClock(1_700_000_000.0)
    twin = Twin(SETTINGS, clock=clock, traffic=constant_traffic(150.0, seed=1))
    policy = SloPolicy(SETTINGS, PERF)
    pods = twin.replica_pods()
    specs = {d: spec_for(SETTINGS, key=d, memory_mib=max(p.memory_mib for p in pods
                                                         if p.deployment == d),
                         min_replicas=1, max_replicas=16)
             for d in {p.deployment for p in pods}}
    decisions = []
    for _ in range(6):
        twin.step(30)
        policy.observe(twin.telemetry(), now=clock.now())
        decisions = policy.decide(now=clock.now(), nodes=twin.nodes(), pods=pods, specs=specs)
    assert {d.plan.key for d in decisions} == set(specs)
    for d in decisions:
        assert d.forecast is not None and d.forecast.recent_rps > 0
        assert d.plan.need_rps is not None and d.plan.per_type
        assert d.plan.replicas >= 1 and 1 <= d.plan.target <= 16


def test_a_deployment_whose_slo_no_gpu_meets_still_gets_its_minimum() -> None:
    nodes = (gpu(0, "A100"), gpu(0, "H100"))
    impossible = replace(need(5.0, low=1), objectives=LatencySlo(ttft_s=1e-5, tpot_s=None))
    [plan] = planner().plan([impossible], FleetState.of(nodes, ()))
    assert plan.target == 1  # the minimum, nothing more: more would not help
    assert all(c.limited_by == "cannot meet the SLO" for c in plan.per_type.values())


def test_a_burst_the_ttft_target_can_queue_needs_less_headroom() -> None:
    # One busy 15 s per minute, 4× the minute's mean: with no queueing allowed the plan
    # needs the whole peak; with 15 s of queueing, half the excess drains within it.
    counts, total = [], 0.0
    for i in range(30):
        total += (40.0 if i % 4 == 0 else 0.0) * 15
        counts.append(total)
    strict, lenient = Forecaster(SloSettings(max_burst_factor=10.0)), \
        Forecaster(SloSettings(max_burst_factor=10.0))
    now = feed(strict, counts)
    feed(lenient, counts)
    a = strict.forecast("d/m", now=now)
    b = lenient.forecast("d/m", now=now, absorb_s=15.0)
    assert a is not None and b is not None
    assert a.burst_factor == pytest.approx(4.0)
    assert b.burst_factor == pytest.approx(1.0 + 3.0 * 15 / 30)
    assert b.planned_rps < a.planned_rps and "queueing absorbs" in b.note


def test_an_addition_labels_its_request_with_where_it_was_sized_for() -> None:
    fresh = Addition("H100", False, 2.0, 5.0, "")
    slot = Addition("A100", True, 1.0, 0.1, "")
    assert fresh.labels() == {"gpu-scheduler.io/gpu-type": "H100"}
    assert slot.labels() == {"gpu-scheduler.io/gpu-type": "A100",
                             "gpu-scheduler.io/gpu-in-use": "true"}


def test_scale_in_removes_the_least_capacity_per_dollar_first() -> None:
    # Each replica alone on its GPU, either one covers the need: the one kept is the one
    # that sustains the most within the SLO per dollar of its GPU (it absorbs a burst best).
    a100, h100 = gpu(0, "A100", (MpsSlice(owner="a", thread_pct=25, memory_mib=3072),)), \
        gpu(0, "H100", (MpsSlice(owner="h", thread_pct=25, memory_mib=3072),))
    pods = (pod(a100, "a", "tiny", 25), pod(h100, "h", "tiny", 25))
    p = planner()
    value = {}
    for t in ("A100", "H100"):
        cap = p.per_type(need(None))[t].rps
        value[t] = cap / _hourly(SETTINGS.catalog, t, fresh=True, share_pct=25)
    [plan] = p.plan([need(0.01)], FleetState.of((a100, h100), pods))
    kept = "H100" if value["H100"] > value["A100"] else "A100"
    assert plan.removals == ("a" if kept == "H100" else "h",)
    assert value["H100"] != pytest.approx(value["A100"])

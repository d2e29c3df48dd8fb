"""Autoscaling rules and both stabilization windows, driven by explicit times (no sleeping)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from core.adapters.settings_source import load_settings
from core.autoscale import Action, AutoscalePolicy, Autoscaler, Signals, fleet_views
from core.errors import ValidationError
from core.ports import ReplicaPod
from core.telemetry import DeploymentTelemetry, FleetTelemetry, FleetTotals, GpuTelemetry

# A policy whose efficiency bar the fleet can reach (the SPEC default of 10 TOPS/W
# cannot be reached at TDP by the catalog's GPUs; see AutoscalePolicy).
POLICY = AutoscalePolicy(up_min_tops_per_w=0.5, max_replicas=10, min_replicas=1)


def busy(replicas: int = 2) -> Signals:
    return Signals("llama", replicas=replicas, queue_waiting=9, tops_per_w=1.2,
                   cost_per_inference=0.002, utilization=0.85)


def idle(replicas: int = 6) -> Signals:
    return Signals("llama", replicas=replicas, queue_waiting=0, tops_per_w=0.3,
                   cost_per_inference=0.02, utilization=0.2)


def test_scale_up_by_four_only_after_the_60_s_window_holds() -> None:
    a = Autoscaler(POLICY)
    first = a.observe(busy(), now=0)
    assert first.action is Action.HOLD and first.pending is Action.UP
    assert first.fires_in_s == 60
    assert a.observe(busy(), now=59).action is Action.HOLD
    fired = a.observe(busy(), now=60)
    assert (fired.action, fired.target) == (Action.UP, 6)
    # The next scale-up needs a whole new window.
    assert a.observe(busy(6), now=61).action is Action.HOLD


def test_a_sample_that_breaks_the_condition_restarts_the_window() -> None:
    a = Autoscaler(POLICY)
    a.observe(busy(), now=0)
    a.observe(busy(), now=50)
    calm = Signals("llama", replicas=2, queue_waiting=3, tops_per_w=1.2,
                   cost_per_inference=0.002, utilization=0.5)
    assert a.observe(calm, now=55).pending is Action.HOLD
    assert a.observe(busy(), now=70).action is Action.HOLD
    assert a.observe(busy(), now=129).action is Action.HOLD
    assert a.observe(busy(), now=130).action is Action.UP


def test_scale_down_by_two_needs_the_300_s_window() -> None:
    a = Autoscaler(POLICY)
    for t in (0, 100, 200, 299):
        assert a.observe(idle(), now=t).action is Action.HOLD
    fired = a.observe(idle(), now=300)
    assert (fired.action, fired.target) == (Action.DOWN, 4)
    assert "utilization 20% < 70%" in fired.reason


def test_targets_stay_within_min_and_max_replicas() -> None:
    a = Autoscaler(POLICY)
    a.observe(busy(8), now=0)
    assert a.observe(busy(8), now=60).target == 10  # capped at max, not 12
    at_max = a.observe(busy(10), now=61)
    assert at_max.action is Action.HOLD and "maximum" in at_max.reason
    a.observe(idle(2), now=0)
    assert a.observe(idle(2), now=300).target == 1
    assert "minimum" in a.observe(idle(1), now=301).reason


def test_the_spec_letter_of_10_tops_per_watt_blocks_scale_up() -> None:
    a = Autoscaler(AutoscalePolicy(up_min_tops_per_w=10))  # SPEC §3.6 as written
    a.observe(busy(), now=0)
    assert a.observe(busy(), now=600).action is Action.HOLD


def test_gpus_that_burn_power_without_work_do_not_scale_up() -> None:
    a = Autoscaler()  # default efficiency bar: 1 delivered TOPS per watt
    stuck = Signals("llama", replicas=2, queue_waiting=50, tops_per_w=0.4,
                    cost_per_inference=0.002, utilization=0.2)
    a.observe(stuck, now=0)
    assert a.observe(stuck, now=600).action is Action.HOLD


def test_bad_policy_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValidationError) as err:
        AutoscalePolicy(min_replicas=5, max_replicas=2)
    assert err.value.field == "autoscaling.max_replicas"


def _gpu(node: str, *, power_w: float, qps: float) -> GpuTelemetry:
    return GpuTelemetry(node=node, gpu_index=0, gpu_type="A100", uuid=f"GPU-{node}",
                        utilization=0.5, power_w=power_w, memory_used_mib=1000,
                        memory_total_mib=40960, energy_j=0.0, qps_1m=qps)


def _pod(name: str, node: str, pct: int, phase: str = "Running") -> ReplicaPod:
    return ReplicaPod(namespace="default", name=name, node=node, gpu_index=0, model="llama",
                      owner=name, thread_pct=pct, memory_mib=1024, phase=phase)


def test_fleet_views_price_each_replica_by_its_share_of_its_gpu_under_the_cost_formula(
        ) -> None:
    settings = load_settings(env={})
    price = float(settings.catalog["A100"].price_per_gpu_hour)
    kwh = float(settings.catalog.electricity_per_kwh)
    deployment = DeploymentTelemetry(
        model="llama", namespace="default", replicas=2, qps_1m=10.0, qps_5m=10.0,
        qps_15m=10.0, qps_1h=10.0, success_rate=1.0, p99_latency_ms=100.0,
        mean_latency_ms=50.0, ttft_p50_ms=10.0, queue_waiting=0, running=1, tokens_per_s=1.0)
    telemetry = FleetTelemetry(
        timestamp=0.0, gpus=(_gpu("a100-0", power_w=200.0, qps=10.0),
                             _gpu("a100-1", power_w=100.0, qps=0.0)),
        deployments=(deployment,), totals=FleetTotals(qps=10.0, power_w=300.0, tops_per_w=1.0))
    pods = [_pod("a", "a100-0", 50), _pod("b", "a100-1", 25, phase="Pending"),
            _pod("gone", "a100-9", 25)]  # a100-9 has no reading: neither type nor power
    (view,) = fleet_views(telemetry, pods, settings.catalog)
    cost = {r.name: r.cost_per_hour for r in view.replicas}
    assert cost["a"] == pytest.approx(price / 2 + 0.2 / 2 * kwh)
    assert cost["b"] == pytest.approx(price / 4 + 0.1 / 4 * kwh)  # Pending: it holds the GPU
    assert cost["gone"] == 0.0
    # The deployment's cost per inference: its running replicas' cost over 36,000 an hour.
    assert view.signals.cost_per_inference == pytest.approx(cost["a"] / 36_000)
    quiet = replace(telemetry, deployments=(replace(deployment, qps_1m=0.0),))
    assert fleet_views(quiet, pods, settings.catalog)[0].signals.cost_per_inference == math.inf
    pending = fleet_views(telemetry, [_pod("b", "a100-1", 25, phase="Pending")],
                          settings.catalog)
    assert pending[0].signals.cost_per_inference is None  # nothing runs: nothing to judge

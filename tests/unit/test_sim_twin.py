"""The twin as the cluster and metrics ports: pods, faults, telemetry, fleets."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from core.clock import ManualClock
from core.cost import fleet_cost
from core.errors import TransientError, ValidationError
from core.manifest import ANNOTATION_THREADS, render_pod
from core.model import Gpu, MpsSlice, PlacementRequest, Priority, WorkloadClass
from core.placement import FleetSnapshot, Scheduler
from core.ports import Cluster, Metrics, PodExistsError, PodNotFoundError, PodPhase
from core.settings import Settings
from core.sim import Twin, TwinConfig, fleet_from_settings, generate_fleet
from core.sim import faults as f
from core.sim.traffic import constant_traffic

STARTUP = 45.0


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock(1_700_000_000.0)


@pytest.fixture()
def twin(settings: Settings, clock: ManualClock) -> Twin:
    return Twin(settings, clock=clock, traffic=constant_traffic(150.0, seed=4),
                config=TwinConfig(startup_delay_s=STARTUP, seed=4))


def _pod(*, node: str, model: str = "granite-3b", gb: float = 3.0, threads: int = 25,
         owner: str | None = None, name: str | None = None) -> dict[str, Any]:
    request = PlacementRequest(model_name=model, model_memory_gb=gb, priority=Priority.LOW,
                               latency_sla_ms=500.0, namespace="inference")
    wc = WorkloadClass.TINY if gb < 4 else WorkloadClass.MEDIUM
    sl = MpsSlice(owner=owner or f"{model}-1", thread_pct=threads,
                  memory_mib=request.memory_mib, model=model, workload_class=wc)
    return render_pod(request=request, node=node, gpu_index=0, mps_slice=sl, workload_class=wc,
                      pod_name=name or f"{model}-1")


def _gpu(twin: Twin, node: str) -> Gpu:
    return next(n for n in twin.nodes() if n.name == node).gpus[0]


def test_the_default_twin_is_the_default_fleet_with_servers_running(
    twin: Twin, settings: Settings
) -> None:
    nodes = twin.nodes()
    types = [n.gpus[0].gpu_type for n in nodes]
    assert (types.count("H100"), types.count("A100")) == (4, 8)
    assert [n.name for n in nodes] == [n.name for n in fleet_from_settings(settings)]
    pods = twin.pods()
    assert len(pods) == 14 and {p.phase for p in pods} == {"Running"}
    twin.step(120)
    telemetry = twin.telemetry()
    assert len(telemetry.deployments) == 14
    assert all(d.replicas == 1 and d.qps_1m > 0 for d in telemetry.deployments)
    assert telemetry.totals.qps == pytest.approx(150.0, rel=0.1)
    assert telemetry.totals.success_rate == 1.0


def test_the_twin_implements_the_cluster_and_metrics_ports(twin: Twin) -> None:
    assert isinstance(twin, Cluster)
    assert isinstance(twin, Metrics)
    assert isinstance(twin.clock.now(), float)


def test_a_bound_pod_is_pending_then_running_after_the_startup_delay(
    twin: Twin, settings: Settings
) -> None:
    twin.bind(_pod(node="a100-7"))
    assert twin.pod_phase("inference", "granite-3b-1") == PodPhase.PENDING
    gpu = _gpu(twin, "a100-7")
    assert [(s.owner, s.thread_pct, s.memory_mib) for s in gpu.slices] == [
        ("granite-3b-1", 25, 3072)]
    twin.step(STARTUP - 1)
    assert twin.pod_phase("inference", "granite-3b-1") == "Pending"
    twin.step(1)
    assert twin.pod_phase("inference", "granite-3b-1") == "Running"
    twin.step(60)
    served = twin.telemetry().deployment("granite-3b", "inference")
    assert served.replicas == 1 and served.qps_1m > 0 and served.nodes == ("a100-7",)
    assert twin.telemetry().gpu("a100-7").utilization > 0


def test_a_placement_decision_binds_and_runs_end_to_end(
    twin: Twin, settings: Settings, scheduler: Scheduler
) -> None:
    request = PlacementRequest(model_name="llama-3-8b", model_memory_gb=8.0,
                               priority=Priority.LOW, latency_sla_ms=1000.0,
                               request_id="req-1")
    decision = scheduler.place(request, FleetSnapshot(twin.nodes(), settings.catalog))
    assert decision.node is not None and decision.gpu_index is not None
    twin.bind(render_pod(request=request, node=decision.node, gpu_index=decision.gpu_index,
                         mps_slice=decision.mps_slice(), workload_class=decision.workload_class,
                         decision_id="dec-1"))
    twin.step(STARTUP)
    assert twin.pod_phase("default", "llama-3-8b-dec-1") == "Running"
    layout = FleetSnapshot(twin.nodes(), settings.catalog)
    assert layout.row_of_owner("req-1") is not None


def test_binding_the_same_pod_twice_is_refused(twin: Twin) -> None:
    twin.bind(_pod(node="a100-7"))
    with pytest.raises(PodExistsError):
        twin.bind(_pod(node="a100-7"))


def test_a_pod_that_would_over_commit_its_gpu_fails_with_the_reason(twin: Twin) -> None:
    # a100-2 already holds 3 tiny servers (75 %); a medium slice needs 50 %.
    twin.bind(_pod(node="a100-2", model="llama-3-8b", gb=8.0, threads=50))
    assert twin.pod_phase("inference", "llama-3-8b-1") == "Failed"
    reason = next(p.reason for p in twin.pods() if p.name == "llama-3-8b-1")
    assert "over-commit" in reason
    assert len(_gpu(twin, "a100-2").slices) == 3


@pytest.mark.parametrize(("path", "field"), [
    (("metadata", "annotations", ANNOTATION_THREADS),
     f"metadata.annotations.{ANNOTATION_THREADS}"),
    (("spec", "nodeSelector", "kubernetes.io/hostname"),
     "spec.nodeSelector.kubernetes.io/hostname"),
    (("metadata", "name"), "metadata.name"),
])
def test_a_malformed_pod_is_refused_naming_the_field(
    twin: Twin, path: tuple[str, ...], field: str
) -> None:
    pod = _pod(node="a100-7")
    parent = pod
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    with pytest.raises(ValidationError) as caught:
        twin.bind(pod)
    assert caught.value.field == field
    assert not any(p.name == "granite-3b-1" for p in twin.pods())


def test_a_pod_on_a_cordoned_node_waits_until_it_is_uncordoned(twin: Twin) -> None:
    twin.set_schedulable("a100-7", False)
    assert not next(n for n in twin.nodes() if n.name == "a100-7").schedulable
    twin.bind(_pod(node="a100-7"))
    twin.step(STARTUP * 2)
    assert twin.pod_phase("inference", "granite-3b-1") == "Pending"
    assert _gpu(twin, "a100-7").slices == ()
    twin.set_schedulable("a100-7", True)
    twin.step(STARTUP)
    assert twin.pod_phase("inference", "granite-3b-1") == "Running"
    with pytest.raises(ValidationError):
        twin.set_schedulable("no-such-node", False)


def test_deleting_the_only_replica_frees_the_slice_and_its_traffic_fails(twin: Twin) -> None:
    twin.delete_pod("default", "tinyllama-0")
    twin.delete_pod("default", "tinyllama-0")  # deleting again is not an error
    assert "tinyllama-0" not in {s.owner for s in _gpu(twin, "a100-2").slices}
    with pytest.raises(PodNotFoundError):
        twin.pod_phase("default", "tinyllama-0")
    twin.step(120)
    gone = twin.telemetry().deployment("tinyllama")
    assert gone.replicas == 0 and gone.success_rate == 0.0
    assert twin.telemetry().deployment("gemma-2b").success_rate == 1.0


def test_a_gpu_failure_fails_its_pods_and_the_gpu_reports_unhealthy(twin: Twin) -> None:
    twin.step(60)
    twin.inject(f.gpu_failure("a100-1"))
    assert twin.pod_phase("default", "mistral-7b-0") == "Failed"
    assert not _gpu(twin, "a100-1").healthy
    twin.step(300)
    telemetry = twin.telemetry()
    gpu = telemetry.gpu("a100-1")
    assert (gpu.healthy, gpu.power_w, gpu.utilization) == (False, 0.0, 0.0)
    assert telemetry.deployment("mistral-7b").success_rate == 0.0
    assert telemetry.deployment("llama-2-13b").success_rate == 1.0
    energy = gpu.energy_j
    twin.step(60)
    assert twin.telemetry().gpu("a100-1").energy_j == energy


def test_a_node_that_is_not_ready_loses_its_pods_and_its_metrics(twin: Twin) -> None:
    fault = twin.inject(f.node_not_ready("h100-0"))
    assert twin.pod_phase("default", "llama-2-70b-awq-0") == "Unknown"
    assert not next(n for n in twin.nodes() if n.name == "h100-0").ready
    twin.step(300)
    telemetry = twin.telemetry()
    assert all(g.node != "h100-0" for g in telemetry.gpus)
    assert telemetry.deployment("llama-2-70b-awq").success_rate == 0.0
    twin.clear_fault(fault)
    assert twin.pod_phase("default", "llama-2-70b-awq-0") == "Running"


def test_a_failed_device_plugin_restart_fails_pods_and_blocks_new_ones(twin: Twin) -> None:
    fault = twin.inject(f.device_plugin_restart_fails("a100-3"))
    assert {p.phase for p in twin.pods() if p.node == "a100-3"} == {"Failed"}
    assert not _gpu(twin, "a100-3").healthy
    twin.bind(_pod(node="a100-3", model="llama-3-8b", gb=8.0, threads=50))
    twin.step(STARTUP * 2)
    assert twin.pod_phase("inference", "llama-3-8b-1") == "Pending"
    twin.step(60)
    gpu = twin.telemetry().gpu("a100-3")
    assert gpu.power_w == pytest.approx(50.0, abs=1.0)  # the GPU idles; nothing runs on it
    twin.clear_fault(fault)
    twin.step(STARTUP)
    assert twin.pod_phase("inference", "llama-3-8b-1") == "Running"
    assert _gpu(twin, "a100-3").healthy


def test_an_error_spike_on_a_node_lowers_success_rate_there(twin: Twin) -> None:
    twin.inject(f.error_spike("a100-6", rate=0.5))
    twin.step(300)
    telemetry = twin.telemetry()
    rate = telemetry.deployment("phi-3-mini").success_rate
    assert rate is not None and 0.4 < rate < 0.6
    assert telemetry.deployment("gemma-2b").success_rate == 1.0
    assert telemetry.totals.success_rate is not None and telemetry.totals.success_rate < 1.0


def test_a_latency_spike_on_a_node_raises_latency_there_until_it_ends(twin: Twin) -> None:
    twin.step(300)
    before = twin.telemetry().deployment("starcoder-15b").mean_latency_ms
    twin.inject(f.latency_spike("a100-5", factor=3.0, duration_s=300))
    twin.step(300)
    during = twin.telemetry().deployment("starcoder-15b").mean_latency_ms
    assert before is not None and during is not None and during > 2.5 * before
    assert twin.faults() == ()
    twin.step(300)
    after = twin.telemetry().deployment("starcoder-15b").mean_latency_ms
    assert after == pytest.approx(before, rel=0.2)


def test_metrics_down_makes_telemetry_unavailable_while_the_fleet_runs_on(twin: Twin) -> None:
    assert twin.available()
    fault = twin.inject(f.metrics_down())
    assert not twin.available()
    with pytest.raises(TransientError):
        twin.telemetry()
    twin.step(60)
    assert twin.nodes()  # the cluster still answers
    twin.clear_fault(fault)
    assert twin.available() and twin.telemetry().totals.qps > 0


def test_faults_on_unknown_nodes_or_gpus_are_refused(twin: Twin) -> None:
    with pytest.raises(ValidationError) as caught:
        twin.inject(f.gpu_failure("h100-9"))
    assert caught.value.field == "fault.node"
    with pytest.raises(ValidationError) as caught:
        twin.inject(f.gpu_failure("h100-0", gpu_index=3))
    assert caught.value.field == "fault.gpu_index"
    with pytest.raises(ValidationError):
        f.error_spike("a100-0", rate=1.5)


def test_counters_and_energy_never_decrease_and_qps_windows_fill_up(twin: Twin) -> None:
    previous: dict[str, int] = {}
    energy: dict[str, float] = {}
    for _ in range(5):
        twin.step(45)
        t = twin.telemetry()
        for d in t.deployments:
            assert d.counters is not None
            assert d.counters.requests_total >= previous.get(d.model, 0)
            assert d.counters.success_total + d.counters.failure_total == \
                d.counters.requests_total
            previous[d.model] = d.counters.requests_total
        for g in t.gpus:
            assert g.energy_j >= energy.get(g.node, 0.0)
            energy[g.node] = g.energy_j
    t = twin.telemetry()
    assert sum(d.qps_1h for d in t.deployments) == pytest.approx(150.0, rel=0.1)
    assert t.gpu("h100-3").qps_1m == 0.0 and t.gpu("h100-0").qps_1m > 0


def test_cost_per_inference_follows_spec_and_idle_gpus_cost_nothing(
    settings: Settings, clock: ManualClock
) -> None:
    # The twin reports measurements only; core.cost prices them with its layout.
    quiet = Twin(settings, clock=clock, traffic=constant_traffic(0.0))
    quiet.step(60)
    cost = fleet_cost(quiet.telemetry(), quiet.nodes(), settings.catalog)
    assert quiet.telemetry().totals.qps == 0 and cost.cost_per_inference is None
    # 3 H100 and 7 A100 host servers (h100-3 and a100-7 host none: released, cost nothing).
    # SPEC §3.8 (corrected): every GPU in use is paid whole, idle share included.
    assert cost.gpus_in_use == 10
    whole = Decimal("4.92") * 3 + Decimal("1.84") * 7
    energy = (3 * Decimal(140) + 7 * Decimal(50)) / 1000 * Decimal("0.12")
    assert cost.total_per_hour == pytest.approx(whole + energy, abs=Decimal("0.01"))
    # The A100s' unallocated share (2.75 GPUs' worth): its price and its part of the power.
    unallocated = Decimal("0.5") * 3 + Decimal("0.25") * 2 + Decimal("0.75")
    assert cost.idle_cost_per_hour == pytest.approx(
        unallocated * (Decimal("1.84") + Decimal(50) / 1000 * Decimal("0.12")),
        abs=Decimal("0.0001"))
    busy = Twin(settings, clock=ManualClock(0.0), traffic=constant_traffic(100.0))
    busy.step(60)
    t = busy.telemetry()
    c = fleet_cost(t, busy.nodes(), settings.catalog)
    assert c.cost_per_inference is not None and c.cost_per_inference > 0
    assert c.cost_per_inference == pytest.approx(
        c.total_per_hour / Decimal(t.totals.qps * 3600), rel=Decimal("0.001"))
    assert 0 < t.totals.tops_per_w < 1000 / 140


def test_the_same_seed_gives_the_same_fleet_history(settings: Settings) -> None:
    def run() -> list[int]:
        twin = Twin(settings, clock=ManualClock(36_000.0), config=TwinConfig(seed=9))
        twin.step(30)
        twin.step(200)
        return [d.counters.success_total for d in twin.telemetry().deployments if d.counters]

    assert run() == run()


def test_warmup_shows_history_at_start(settings: Settings) -> None:
    twin = Twin(settings, clock=ManualClock(36_000.0), config=TwinConfig(warmup_s=900))
    telemetry = twin.telemetry()
    assert telemetry.totals.qps > 100
    assert all(d.qps_15m > 0 for d in telemetry.deployments)


def test_a_generated_large_fleet_never_over_commits_and_runs(settings: Settings) -> None:
    nodes = generate_fleet(settings.catalog, settings.classes,
                           nodes_per_type={"H100": 150, "A100": 350}, gpus_per_node=2, seed=3)
    assert len(nodes) == 500 and sum(len(n.gpus) for n in nodes) == 1000
    for node in nodes:
        for gpu in node.gpus:
            assert gpu.share_used_pct <= 100 and gpu.memory_free_mib >= 0
    twin = Twin(settings, clock=ManualClock(36_000.0), nodes=nodes,
                traffic=constant_traffic(2000.0))
    twin.step(120)
    telemetry = twin.telemetry()
    assert len(telemetry.gpus) == 1000
    assert telemetry.totals.qps == pytest.approx(2000.0, rel=0.1)
    assert len(telemetry.deployments) <= 24


def test_bad_arguments_are_refused(twin: Twin) -> None:
    with pytest.raises(ValidationError):
        twin.step(-1)
    with pytest.raises(ValidationError):
        TwinConfig(tick_s=0)
    with pytest.raises(ValidationError):
        ManualClock(0.0).advance(-5)

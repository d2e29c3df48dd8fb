"""The twin as a node configurator: cordon, drain through evictions, device-plugin configs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from core.adapters.settings_source import default_mapping
from core.clock import ManualClock
from core.errors import ValidationError
from core.manifest import render_pod
from core.model import MpsSlice, Node, PlacementRequest, Priority, WorkloadClass
from core.ports import Cluster, DrainResult, NodeConfigurator, PodNotFoundError
from core.settings import Settings, SimSettings, parse_settings
from core.sim import Twin, TwinConfig
from core.sim import faults as f
from core.sim.traffic import constant_traffic

STARTUP = 30.0
SIM = SimSettings(device_plugin_restart_s=20.0, termination_grace_s=5.0, eviction_retry_s=5.0,
                  max_unavailable_per_deployment=1)
A100_2 = ("qwen-1-8b", "gemma-2b", "tinyllama")  # the tiny servers a100-2 holds at start


@pytest.fixture()
def sim_settings(settings: Settings) -> Settings:
    return replace(settings, sim=SIM)


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock(1_700_000_000.0)


@pytest.fixture()
def twin(sim_settings: Settings, clock: ManualClock) -> Twin:
    return Twin(sim_settings, clock=clock, traffic=constant_traffic(150.0, seed=5),
                config=TwinConfig(startup_delay_s=STARTUP, seed=5))


def _pod(*, node: str, model: str, name: str, gb: float = 2.0, threads: int = 25,
         namespace: str = "default", gpu_index: int = 0) -> dict[str, Any]:
    request = PlacementRequest(model_name=model, model_memory_gb=gb, priority=Priority.LOW,
                               latency_sla_ms=500.0, namespace=namespace)
    wc = WorkloadClass.TINY if gb < 4 else WorkloadClass.MEDIUM
    sl = MpsSlice(owner=name, thread_pct=threads, memory_mib=request.memory_mib, model=model,
                  workload_class=wc)
    return render_pod(request=request, node=node, gpu_index=gpu_index, mps_slice=sl,
                      workload_class=wc, pod_name=name)


def _node(twin: Twin, name: str) -> Node:
    return next(n for n in twin.nodes() if n.name == name)


def _advertised(twin: Twin, name: str) -> int:
    node = _node(twin, name)
    return sum(g.healthy for g in node.gpus) * (node.gpu_replicas or 0)


def _phase(twin: Twin, name: str, namespace: str = "default") -> str:
    return twin.pod_phase(namespace, name)


def _reason(twin: Twin, name: str) -> str:
    return next(p.reason for p in twin.pods() if p.name == name)


def _failures(twin: Twin, models: tuple[str, ...] | None = None) -> int:
    total = 0
    for d in twin.telemetry().deployments:
        if d.counters is not None and (models is None or d.model in models):
            total += d.counters.failure_total
    return total


def reconfigure(ports: NodeConfigurator, cluster: Cluster, *, node: str, config: str,
                expected_gpus: int, wait: Callable[[float], None],
                timeout_s: float = 300.0) -> DrainResult:
    """The rolling node update of SPEC §4.1 through the ports only: cordon → drain →
    select config → restart the plugin → wait for the replicas → uncordon."""
    ports.cordon(node)
    drained = ports.drain(node, timeout_s=timeout_s)
    assert drained.completed, drained.reason
    ports.set_device_plugin_config(node, config)
    restart = ports.restart_device_plugin(node, expected_gpus=expected_gpus,
                                          timeout_s=timeout_s)
    assert restart.ready, restart.reason
    waited = 0.0
    while True:
        current = next(n for n in cluster.nodes() if n.name == node)
        if sum(g.healthy for g in current.gpus) * (current.gpu_replicas or 0) == expected_gpus:
            break
        assert waited < timeout_s, f"{node} does not advertise {expected_gpus} replicas"
        wait(5.0)
        waited += 5.0
    ports.uncordon(node)
    return drained


# --------------------------------------------------------------------------------------
# The port and what every node reports
# --------------------------------------------------------------------------------------
def test_the_twin_implements_the_node_configurator_port(twin: Twin) -> None:
    assert isinstance(twin, NodeConfigurator)
    assert isinstance(twin, Cluster)


def test_every_node_runs_the_default_config_and_advertises_its_replicas(twin: Twin) -> None:
    nodes = twin.nodes()
    assert {(n.device_plugin_config, n.gpu_replicas) for n in nodes} == {("mps-4", 4)}
    assert all(twin.device_plugin_config(n.name) == "mps-4" for n in nodes)
    assert twin.device_plugin_status("a100-2").state == "running"


def test_a_per_node_config_from_settings_is_what_that_node_runs(
    settings: Settings, clock: ManualClock
) -> None:
    sim = SimSettings(device_plugin_configs={"a100-7": "exclusive", "not-in-fleet": "mps-2"})
    twin = Twin(replace(settings, sim=sim), clock=clock)
    assert (_node(twin, "a100-7").device_plugin_config, _node(twin, "a100-7").gpu_replicas) == \
        ("exclusive", 1)
    assert _node(twin, "a100-6").gpu_replicas == 4


def test_a_fleet_holding_more_servers_than_its_config_advertises_is_refused(
    settings: Settings, clock: ManualClock
) -> None:
    sim = SimSettings(device_plugin_configs={"a100-2": "mps-2"})  # a100-2 holds 3 servers
    with pytest.raises(ValidationError) as caught:
        Twin(replace(settings, sim=sim), clock=clock)
    assert caught.value.field == "fleet" and "a100-2/gpu0" in caught.value.message


def test_the_sim_settings_are_read_and_checked_naming_the_key() -> None:
    raw = default_mapping()
    raw["sim"] = dict(raw["sim"], device_plugin_configs={"h100-0": "exclusive"})
    parsed = parse_settings(raw).sim
    assert parsed.default_device_plugin_config == "mps-4"
    assert dict(parsed.device_plugin_configs) == {"h100-0": "exclusive"}
    for key, value in [("default_device_plugin_config", "mps-1"),
                       ("device_plugin_restart_s", -1), ("max_unavailable_per_deployment", 0.5),
                       ("eviction_retry_s", 0), ("termination_grace_s", "soon"),
                       ("bursts_per_hour", -1), ("bursts_per_hour", 61),
                       ("hourly_qps", [1, 2]), ("hourly_qps", "busy")]:
        bad = dict(raw, sim=dict(raw["sim"], **{key: value}))
        with pytest.raises(ValidationError) as caught:
            parse_settings(bad)
        assert caught.value.field == f"sim.{key}"
    with pytest.raises(ValidationError) as caught:
        parse_settings(dict(raw, sim=dict(raw["sim"], device_plugin_configs={"a": "mps-x"})))
    assert caught.value.field == "sim.device_plugin_configs.a"
    assert parsed.hourly_qps == () and parsed.bursts_per_hour == 1.0  # the built-in day
    day = parse_settings(dict(raw, sim=dict(raw["sim"], hourly_qps=list(range(24))))).sim
    assert day.hourly_qps == tuple(float(h) for h in range(24))
    for values, where in [([0] * 23 + [100_001], "sim.hourly_qps[23]"),
                          ([float("nan")], "sim.hourly_qps[0]"), ([-5], "sim.hourly_qps[0]"),
                          ([True] * 24, "sim.hourly_qps[0]")]:
        with pytest.raises(ValidationError) as caught:
            parse_settings(dict(raw, sim=dict(raw["sim"], hourly_qps=values)))
        assert caught.value.field == where, values
    with pytest.raises(ValidationError) as caught:
        parse_settings(dict(raw, sim=dict(raw["sim"], restart_s=3)))
    assert caught.value.field == "sim.restart_s"


# --------------------------------------------------------------------------------------
# The rolling node update
# --------------------------------------------------------------------------------------
def test_cordon_drain_select_restart_wait_uncordon_reconfigures_the_node(
    twin: Twin, clock: ManualClock
) -> None:
    start = clock.now()
    drained = reconfigure(twin, twin, node="a100-2", config="mps-2", expected_gpus=2,
                          wait=twin.step)
    evicted = {f"default/{m}-0" for m in A100_2}
    assert set(drained.evicted) == evicted and drained.blocked == ()
    assert dict(drained.owners) == {f"default/{m}-0": f"{m}-0" for m in A100_2}
    for model in A100_2:
        with pytest.raises(PodNotFoundError):
            twin.pod_phase("default", f"{model}-0")
    node = _node(twin, "a100-2")
    assert (node.device_plugin_config, node.gpu_replicas, node.schedulable) == ("mps-2", 2, True)
    assert node.gpus[0].slices == () and node.gpus[0].healthy
    assert twin.device_plugin_config("a100-2") == "mps-2"
    # The evictions' grace and the plugin's restart took simulated time, not wall time.
    assert clock.now() - start >= SIM.termination_grace_s + SIM.device_plugin_restart_s
    # The node now takes two servers, as its new config advertises.
    for name in ("back-1", "back-2"):
        twin.bind(_pod(node="a100-2", model="tinyllama", name=name))
    twin.step(STARTUP)
    assert (_phase(twin, "back-1"), _phase(twin, "back-2")) == ("Running", "Running")


def test_selecting_a_config_changes_nothing_until_the_plugin_restarts(twin: Twin) -> None:
    twin.set_device_plugin_config("a100-7", "exclusive")
    assert twin.device_plugin_config("a100-7") == "exclusive"
    assert (_node(twin, "a100-7").device_plugin_config, _advertised(twin, "a100-7")) == \
        ("mps-4", 4)
    restart = twin.restart_device_plugin("a100-7", expected_gpus=1, timeout_s=60)
    assert restart.ready and restart.allocatable_gpus == 1 and restart.pods
    assert (_node(twin, "a100-7").device_plugin_config, _advertised(twin, "a100-7")) == \
        ("exclusive", 1)


def test_a_config_change_on_a_gpu_that_still_has_pods_fails_their_requests(
    twin: Twin
) -> None:
    twin.step(120)
    before = _failures(twin, A100_2)
    twin.set_device_plugin_config("a100-2", "mps-2")
    restart = twin.restart_device_plugin("a100-2", expected_gpus=2, timeout_s=60)
    assert restart.ready
    for model in A100_2:
        assert _phase(twin, f"{model}-0") == "Failed"
        assert _reason(twin, f"{model}-0").startswith("Error: lost its GPU")
    assert _node(twin, "a100-2").gpus[0].slices == ()
    twin.step(60)
    assert _failures(twin, A100_2) > before
    telemetry = twin.telemetry()
    for model in A100_2:
        rate = telemetry.deployment(model).success_rate
        assert rate is not None and rate < 1.0


def test_the_same_config_change_after_a_drain_fails_no_request(twin: Twin) -> None:
    # Each deployment on a100-2 first gets a second replica elsewhere, so that evicting one
    # is within its disruption budget and its traffic has somewhere to go.
    for model in A100_2:
        twin.bind(_pod(node="a100-7", model=model, name=f"{model}-1"))
    twin.step(STARTUP + 60)
    assert all(_phase(twin, f"{m}-1") == "Running" for m in A100_2)
    before = _failures(twin)
    assert before == 0
    reconfigure(twin, twin, node="a100-2", config="mps-2", expected_gpus=2, wait=twin.step)
    twin.step(120)
    assert _failures(twin) == before
    telemetry = twin.telemetry()
    for model in A100_2:
        served = telemetry.deployment(model)
        assert served.replicas == 1 and served.nodes == ("a100-7",) and served.qps_1m > 0


# --------------------------------------------------------------------------------------
# Binding into replicas, cordon
# --------------------------------------------------------------------------------------
def test_a_bind_beyond_the_advertised_replicas_is_refused_not_over_committed(
    twin: Twin
) -> None:
    # a100-7 runs mps-4: four 10 % servers fit, a fifth has no replica left although
    # its SM threads and memory would fit.
    for i in range(5):
        twin.bind(_pod(node="a100-7", model="small", name=f"small-{i}", threads=10))
    assert [_phase(twin, f"small-{i}") for i in range(5)] == ["Pending"] * 4 + ["Failed"]
    assert _reason(twin, "small-4").startswith("UnexpectedAdmissionError")
    assert "nvidia.com/gpu" in _reason(twin, "small-4")
    assert len(_node(twin, "a100-7").gpus[0].slices) == 4
    # A replica handed back (the pod deleted) can be bound again.
    twin.delete_pod("default", "small-0")
    twin.bind(_pod(node="a100-7", model="small", name="small-5", threads=10))
    twin.step(STARTUP)
    assert _phase(twin, "small-5") == "Running"
    assert len(_node(twin, "a100-7").gpus[0].slices) == 4


@hypothesis_settings(max_examples=25, deadline=None)
@given(replicas=st.integers(min_value=1, max_value=6),
       threads=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=10))
def test_a_gpu_never_holds_more_pods_than_replicas_or_threads(
    settings: Settings, replicas: int, threads: list[int]
) -> None:
    config = "exclusive" if replicas == 1 else f"mps-{replicas}"
    sim = SimSettings(device_plugin_configs={"a100-7": config})
    twin = Twin(replace(settings, sim=sim), clock=ManualClock(0.0),
                traffic=constant_traffic(0.0), config=TwinConfig(startup_delay_s=1.0))
    for i, pct in enumerate(threads):
        twin.bind(_pod(node="a100-7", model="m", name=f"m-{i}", threads=pct))
        gpu = _node(twin, "a100-7").gpus[0]
        assert len(gpu.slices) <= replicas and gpu.share_used_pct <= 100


def test_a_cordoned_node_starts_no_pod_and_drain_leaves_pending_ones(twin: Twin) -> None:
    twin.cordon("a100-7")
    assert not _node(twin, "a100-7").schedulable
    twin.bind(_pod(node="a100-7", model="waiting", name="waiting-1"))
    twin.step(STARTUP * 2)
    assert _phase(twin, "waiting-1") == "Pending"
    drained = twin.drain("a100-7", timeout_s=30)
    assert drained.completed and drained.evicted == ()
    assert _phase(twin, "waiting-1") == "Pending"
    twin.uncordon("a100-7")
    twin.step(STARTUP)
    assert _phase(twin, "waiting-1") == "Running"


def test_cordon_keeps_what_runs_running(twin: Twin) -> None:
    twin.cordon("a100-2")
    twin.step(60)
    assert {_phase(twin, f"{m}-0") for m in A100_2} == {"Running"}


# --------------------------------------------------------------------------------------
# Drain and the disruption budget
# --------------------------------------------------------------------------------------
def test_drain_refuses_an_eviction_while_the_deployment_is_short_and_retries_it(
    twin: Twin, clock: ManualClock
) -> None:
    # tinyllama's second replica is still starting: evicting the first would leave none.
    twin.bind(_pod(node="a100-7", model="tinyllama", name="tinyllama-1"))
    twin.cordon("a100-2")
    start = clock.now()
    short = twin.drain("a100-2", timeout_s=10)
    assert not short.completed
    assert [k for k, _ in short.blocked] == ["default/tinyllama-0"]
    assert "disruption budget" in short.blocked[0][1] and "gave up after 10 s" in short.reason
    assert set(short.evicted) == {"default/qwen-1-8b-0", "default/gemma-2b-0"}
    assert _phase(twin, "tinyllama-0") == "Running"
    # Retried on the twin's clock until the second replica runs, then evicted.
    drained = twin.drain("a100-2", timeout_s=120)
    assert drained.completed and drained.evicted == ("default/tinyllama-0",)
    assert clock.now() - start >= STARTUP
    assert _phase(twin, "tinyllama-1") == "Running"


def test_an_evicted_replica_counts_as_unavailable_until_it_is_replaced(twin: Twin) -> None:
    # Two replicas of one deployment on the node being drained: the second may go only
    # once the first is back (bound again elsewhere and Running), as with a ReplicaSet.
    twin.bind(_pod(node="a100-2", model="tinyllama", name="tinyllama-1"))
    twin.step(STARTUP)
    twin.cordon("a100-2")
    first = twin.drain("a100-2", timeout_s=30)
    assert not first.completed
    blocked = [k for k, _ in first.blocked]
    assert len(blocked) == 1 and blocked[0].startswith("default/tinyllama-")
    moved = next(k for k in first.evicted if k.startswith("default/tinyllama-"))
    owner = first.owners[moved]
    twin.bind(_pod(node="a100-7", model="tinyllama", name=f"{owner}-again"))
    second = twin.drain("a100-2", timeout_s=120)
    assert second.completed and [*second.evicted] == blocked
    assert _phase(twin, f"{owner}-again") == "Running"


def test_drain_with_no_budget_evicts_nothing_running(
    settings: Settings, clock: ManualClock
) -> None:
    twin = Twin(replace(settings, sim=replace(SIM, max_unavailable_per_deployment=0)),
                clock=clock, config=TwinConfig(startup_delay_s=STARTUP))
    result = twin.drain("a100-1", timeout_s=12)
    assert not result.completed and result.evicted == ()
    assert len(result.blocked) == 2
    assert {_phase(twin, "mistral-7b-0"), _phase(twin, "phi-2-0")} == {"Running"}


def test_drain_skips_failed_pods_and_refuses_bad_arguments(twin: Twin) -> None:
    twin.inject(f.gpu_failure("a100-1"))
    result = twin.drain("a100-1", timeout_s=30)
    assert result.completed and result.evicted == ()
    assert {k for k, _ in result.skipped} == {"default/mistral-7b-0", "default/phi-2-0"}
    with pytest.raises(ValidationError) as caught:
        twin.drain("a100-1", timeout_s=0)
    assert caught.value.field == "timeout_s"
    with pytest.raises(ValidationError) as caught:
        twin.drain("no-such-node", timeout_s=30)
    assert caught.value.field == "node"


def test_an_evicted_pod_keeps_its_slice_until_its_grace_ends(
    settings: Settings, clock: ManualClock
) -> None:
    long_grace = replace(settings, sim=replace(SIM, termination_grace_s=90.0))
    twin = Twin(long_grace, clock=clock, config=TwinConfig(startup_delay_s=STARTUP))
    result = twin.drain("a100-6", timeout_s=30)
    assert not result.completed and "still terminating" in result.reason
    assert result.evicted == ("default/phi-3-mini-0",)
    assert _phase(twin, "phi-3-mini-0") == "Running"  # terminating pods read Running
    assert _reason(twin, "phi-3-mini-0").startswith("Evicted")
    assert len(_node(twin, "a100-6").gpus[0].slices) == 1
    twin.step(90)
    with pytest.raises(PodNotFoundError):
        twin.pod_phase("default", "phi-3-mini-0")
    assert _node(twin, "a100-6").gpus[0].slices == ()


# --------------------------------------------------------------------------------------
# Selecting and restarting the device plugin
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["mps-1", "mps-49", "mps-04", "mps-two", "", "shared",
                                    "exclusive "])
def test_an_unknown_config_name_is_refused_with_nothing_changed(
    twin: Twin, config: str
) -> None:
    before = twin.nodes()
    with pytest.raises(ValidationError) as caught:
        twin.set_device_plugin_config("a100-2", config)
    assert caught.value.field == "config"
    assert twin.device_plugin_config("a100-2") == "mps-4"
    assert twin.nodes() == before


def test_configs_of_unknown_nodes_are_refused(twin: Twin) -> None:
    for call in (lambda: twin.set_device_plugin_config("h100-9", "mps-2"),
                 lambda: twin.device_plugin_config("h100-9"),
                 lambda: twin.restart_device_plugin("h100-9", expected_gpus=1, timeout_s=5),
                 lambda: twin.cordon("h100-9")):
        with pytest.raises(ValidationError) as caught:
            call()
        assert caught.value.field == "node"
    with pytest.raises(ValidationError) as caught:
        twin.restart_device_plugin("h100-3", expected_gpus=-1, timeout_s=5)
    assert caught.value.field == "expected_gpus"


def test_a_restart_takes_time_during_which_the_node_advertises_nothing(twin: Twin) -> None:
    result = twin.restart_device_plugin("h100-3", expected_gpus=4, timeout_s=5)
    assert not result.ready and "restarting" in result.reason
    assert _advertised(twin, "h100-3") == 0
    assert twin.device_plugin_status("h100-3").state == "restarting"
    twin.bind(_pod(node="h100-3", model="early", name="early-1"))
    twin.step(SIM.device_plugin_restart_s - 5 - 1)
    assert _phase(twin, "early-1") == "Pending"
    twin.step(1)
    assert _advertised(twin, "h100-3") == 4
    twin.step(STARTUP)
    assert _phase(twin, "early-1") == "Running"


def test_a_restart_fault_leaves_the_node_not_ready_with_a_reason(twin: Twin) -> None:
    fault = twin.inject(f.plugin_restart_failure("a100-3"))
    assert _advertised(twin, "a100-3") == 4  # nothing happens until a restart
    assert {_phase(twin, "llama-2-7b-0"), _phase(twin, "codegen-6b-0")} == {"Running"}
    twin.set_device_plugin_config("a100-3", "mps-2")
    result = twin.restart_device_plugin("a100-3", expected_gpus=2, timeout_s=60)
    assert not result.ready and result.allocatable_gpus == 0
    assert "plugin_restart_failure" in result.reason
    status = twin.device_plugin_status("a100-3")
    assert status.state == "down" and "did not come back" in status.reason
    assert {_phase(twin, "llama-2-7b-0"), _phase(twin, "codegen-6b-0")} == {"Failed"}
    assert not _node(twin, "a100-3").gpus[0].healthy and _advertised(twin, "a100-3") == 0
    twin.bind(_pod(node="a100-3", model="later", name="later-1"))
    twin.step(STARTUP * 2)
    assert _phase(twin, "later-1") == "Pending"
    # When the cause goes away the DaemonSet's next try brings the plugin back.
    twin.clear_fault(fault)
    assert _advertised(twin, "a100-3") == 2
    twin.step(STARTUP)
    assert _phase(twin, "later-1") == "Running"


def test_a_restart_on_a_crashed_plugin_does_not_bring_it_back(twin: Twin) -> None:
    fault = twin.inject(f.device_plugin_restart_fails("a100-4"))
    result = twin.restart_device_plugin("a100-4", expected_gpus=4, timeout_s=60)
    assert not result.ready and "device_plugin_failure" in result.reason
    twin.clear_fault(fault)
    assert twin.restart_device_plugin("a100-4", expected_gpus=4, timeout_s=60).ready


def test_a_restart_that_advertises_other_than_expected_is_not_ready(twin: Twin) -> None:
    result = twin.restart_device_plugin("a100-7", expected_gpus=8, timeout_s=60)
    assert not result.ready and result.allocatable_gpus == 4
    assert "expected 8" in result.reason

"""The Kubernetes adapter, through the official client, against a fake API server on loopback.

Each test gets its own ``FakeKube`` (``fake_kube.py``) on a free port of
127.0.0.1 and a ``KubernetesCluster`` built on
``kubernetes.client.Configuration(host=…)``. The fake simulates in real time
with short delays (pods start in 0.15 s; a deleted device-plugin pod terminates
in 0.05 s, its DaemonSet's new pod is Ready 0.25 s later and registers its GPUs
0.2 s after that), so every wait here is bounded and short; the adapter's own
retry and poll intervals are set to 50 ms.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from core.adapters.kubernetes import (
    ConflictError,
    InvalidObjectError,
    KubeOptions,
    KubernetesCluster,
    NodeNotFoundError,
    options_from_env,
)
from core.clock import ManualClock
from core.errors import PermanentError, TransientError, ValidationError
from core.manifest import LABEL_PREFIX, render_pod
from core.model import MpsSlice, PlacementRequest, Priority, WorkloadClass
from core.mps.device_plugin import NODE_LABEL, plugin_config, render_yaml
from core.ports import Cluster, NodeConfigurator, PodExistsError, PodNotFoundError, PodPhase
from core.settings import Settings
from core.sim.twin import Twin, TwinConfig
from tests.integration.fake_kube import (
    A100_PRODUCT,
    DEVICE_PLUGIN_CONFIG_MAP,
    DEVICE_PLUGIN_NAMESPACE,
    H100_PRODUCT,
    FakeKube,
    PodScript,
    demo_fleet,
    kubeconfig,
)

WORKLOADS = "gpu-workloads"
FAST = {"retry_delay_s": 0.05, "poll_interval_s": 0.05, "request_timeout_s": 10.0}
OPTIONS = KubeOptions(namespace=WORKLOADS, **FAST)
CONFIGS = {"exclusive": render_yaml(plugin_config(1)), "mps-2": render_yaml(plugin_config(2))}


# ------------------------------------------------------------------------------------------
# Fixtures and helpers
# ------------------------------------------------------------------------------------------
@pytest.fixture()
def fake() -> Iterator[FakeKube]:
    with FakeKube() as server:
        server.add_config_map(DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_CONFIG_MAP, data=CONFIGS)
        yield server


def _adapter(url: str, settings: Settings, **options: Any) -> KubernetesCluster:
    opts = KubeOptions(**{"namespace": WORKLOADS, **FAST, **options})
    return KubernetesCluster(client.Configuration(host=url), catalog=settings.catalog,
                             options=opts)


@pytest.fixture()
def cluster(fake: FakeKube, settings: Settings) -> Iterator[KubernetesCluster]:
    with _adapter(fake.url, settings) as adapter:
        yield adapter


def _fleet(fake: FakeKube) -> None:
    """Both GPU types, one cordoned, one NotReady, one tainted, one GPU-less, one unknown."""
    fake.add_node("h100-0", product=H100_PRODUCT, memory_mib=81559, count=2,
                  config="exclusive")
    fake.add_node("h100-1", product=H100_PRODUCT, memory_mib=81559, config="exclusive",
                  unschedulable=True)
    fake.add_node("a100-0", product=A100_PRODUCT, memory_mib=40960, config="mps-2")
    fake.add_node("a100-1", product=A100_PRODUCT, memory_mib=40960, config="mps-2",
                  ready=False)
    fake.add_node("a100-2", product=A100_PRODUCT, memory_mib=40960,
                  taints=[{"key": "dedicated", "value": "training", "effect": "NoSchedule"}])
    fake.add_node("a100-3", product=A100_PRODUCT, memory_mib=40960,
                  taints=[{"key": "nvidia.com/gpu", "value": "present",
                           "effect": "NoSchedule"}])
    fake.add_node("cpu-0", product=None)
    fake.add_node("t4-0", product="Tesla-T4", memory_mib=15360)


def _pod(*, node: str, model: str = "mistral-7b", gb: float = 8.0, threads: int = 50,
         name: str | None = None, gpu_index: int = 0) -> dict[str, Any]:
    request = PlacementRequest(model_name=model, model_memory_gb=gb, priority=Priority.LOW,
                               latency_sla_ms=500.0, namespace=WORKLOADS)
    wc = WorkloadClass.TINY if gb < 4 else WorkloadClass.MEDIUM
    mps_slice = MpsSlice(owner=f"{model}-1", thread_pct=threads, memory_mib=request.memory_mib,
                         model=model, workload_class=wc)
    return render_pod(request=request, node=node, gpu_index=gpu_index, mps_slice=mps_slice,
                      workload_class=wc, pod_name=name or f"{model}-1")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _calls(fake: FakeKube, *, verb: str, resource: str) -> list[int]:
    return [c.code for c in fake.calls if (c.verb, c.resource_path) == (verb, resource)]


# ------------------------------------------------------------------------------------------
# Reading the fleet
# ------------------------------------------------------------------------------------------
def test_nodes_carry_gpus_read_from_gfd_labels_and_device_plugin_resources(
    fake: FakeKube, cluster: KubernetesCluster
) -> None:
    _fleet(fake)
    nodes = {n.name: n for n in cluster.nodes()}
    assert sorted(nodes) == ["a100-0", "a100-1", "a100-2", "a100-3", "h100-0", "h100-1"]

    h100 = nodes["h100-0"]
    assert [(g.index, g.gpu_type, g.memory_total_mib, g.healthy) for g in h100.gpus] == [
        (0, "H100", 81559, True), (1, "H100", 81559, True)]
    assert h100.schedulable and h100.ready
    assert h100.labels["nvidia.com/gpu.product"] == H100_PRODUCT
    # Shared A100s: GFD appends -SHARED to the product; the type is still found.
    a100 = nodes["a100-0"]
    assert a100.labels["nvidia.com/gpu.product"] == f"{A100_PRODUCT}-SHARED"
    assert [(g.gpu_type, g.memory_total_mib, g.healthy) for g in a100.gpus] == [
        ("A100", 40960, True)]

    # The config the device plugin was told to use, and the replicas per GPU it advertises.
    assert (h100.device_plugin_config, h100.gpu_replicas) == ("exclusive", 1)
    assert (a100.device_plugin_config, a100.gpu_replicas) == ("mps-2", 2)
    assert (nodes["a100-2"].device_plugin_config, nodes["a100-2"].gpu_replicas) == ("", 1)

    assert not nodes["h100-1"].schedulable and nodes["h100-1"].ready  # cordoned
    assert not nodes["a100-1"].ready and nodes["a100-1"].schedulable  # NotReady
    assert not nodes["a100-2"].schedulable  # a taint model servers do not tolerate
    assert nodes["a100-3"].schedulable  # nvidia.com/gpu:NoSchedule is tolerated

    statuses = {s.name: s for s in cluster.node_statuses()}
    assert statuses["a100-0"].replicas == 2 and statuses["a100-0"].allocatable_gpus == 2
    assert statuses["a100-0"].sharing_strategy == "mps" and statuses["a100-0"].mps_capable
    assert statuses["a100-0"].device_plugin_config == "mps-2"
    assert statuses["h100-1"].taints == ("node.kubernetes.io/unschedulable:NoSchedule",)
    assert statuses["a100-2"].taints == ("dedicated=training:NoSchedule",)
    assert statuses["a100-1"].conditions["Ready"] == "False"
    assert statuses["cpu-0"].node is None and "not a GPU node" in statuses["cpu-0"].skipped_reason
    assert statuses["t4-0"].node is None
    assert "unknown GPU type" in statuses["t4-0"].skipped_reason
    assert "'Tesla-T4'" in statuses["t4-0"].skipped_reason
    assert {(c.verb, c.resource_path) for c in fake.calls} == {("list", "nodes"),
                                                               ("list", "pods")}


def test_an_unknown_product_is_an_error_in_strict_mode_or_mapped_explicitly(
    fake: FakeKube, settings: Settings
) -> None:
    fake.add_node("odd-0", product="NVIDIA-Graphics-Device", memory_mib=81559)
    with _adapter(fake.url, settings, strict_products=True) as strict, \
            pytest.raises(PermanentError, match=r"odd-0.*'NVIDIA-Graphics-Device'"):
        strict.nodes()
    with _adapter(fake.url, settings,
                  product_types={"NVIDIA-Graphics-Device": "H100"}) as mapped:
        (node,) = mapped.nodes()
    assert node.gpus[0].gpu_type == "H100"


def test_gpus_the_device_plugin_does_not_advertise_are_unhealthy(
    fake: FakeKube, cluster: KubernetesCluster
) -> None:
    fake.add_node("h100-9", product=H100_PRODUCT, count=2, device_plugin=False)
    (node,) = cluster.nodes()
    assert [g.healthy for g in node.gpus] == [False, False]


def test_a_list_larger_than_a_page_is_read_whole(fake: FakeKube, settings: Settings) -> None:
    demo_fleet(fake)
    with _adapter(fake.url, settings, page_size=5) as adapter:
        assert len(adapter.nodes()) == 12
    pages = [c for c in fake.calls if (c.verb, c.resource) == ("list", "nodes")]
    assert len(pages) == 3 and [c.query.get("continue") for c in pages] == [None, "5", "10"]


# ------------------------------------------------------------------------------------------
# Pods
# ------------------------------------------------------------------------------------------
def test_a_bound_pod_runs_and_its_slice_shows_on_its_gpu(
    fake: FakeKube, cluster: KubernetesCluster
) -> None:
    _fleet(fake)
    cluster.bind(_pod(node="a100-0"))
    assert cluster.pod_phase(WORKLOADS, "mistral-7b-1") == PodPhase.PENDING.value
    outcome = cluster.wait_for_pod(WORKLOADS, "mistral-7b-1", timeout_s=5)
    assert outcome.running and not outcome.timed_out
    assert cluster.pod_phase(WORKLOADS, "mistral-7b-1") == PodPhase.RUNNING.value
    assert _calls(fake, verb="watch", resource="pods") == [200]  # waited on a watch, not by polling

    (pod,) = cluster.pods()
    assert (pod.namespace, pod.name, pod.node, pod.gpu_index, pod.phase) == (
        WORKLOADS, "mistral-7b-1", "a100-0", 0, "Running")
    assert (pod.mps_slice.owner, pod.mps_slice.thread_pct, pod.mps_slice.memory_mib) == (
        "mistral-7b-1", 50, 8192)
    gpu = next(n for n in cluster.nodes() if n.name == "a100-0").gpus[0]
    assert [s.owner for s in gpu.slices] == ["mistral-7b-1"]
    assert gpu.share_used_pct == 50 and gpu.memory_used_mib == 8192
    stored = fake.pod(WORKLOADS, "mistral-7b-1")
    assert stored is not None and stored["spec"]["nodeName"] == "a100-0"


def test_waiting_resumes_from_the_current_state_when_the_watch_history_expired(
    fake: FakeKube, cluster: KubernetesCluster
) -> None:
    _fleet(fake)
    cluster.bind(_pod(node="a100-0"))
    fake.expire_next_watch()
    assert cluster.wait_for_pod(WORKLOADS, "mistral-7b-1", timeout_s=5).running
    watches = [c.query.get("resourceVersion") for c in fake.calls if c.verb == "watch"]
    assert len(watches) == 2 and watches[0] is not None and watches[1] is None


def test_a_pod_that_fails_reports_the_kubelets_reason(
    fake: FakeKube, cluster: KubernetesCluster
) -> None:
    _fleet(fake)
    fake.script_pod("mistral-7b-1", PodScript(
        phase="Failed", reason="UnexpectedAdmissionError",
        message="Allocate failed due to requested number of devices unavailable for "
                "nvidia.com/gpu. Requested: 1, Available: 0, which is unexpected"))
    cluster.bind(_pod(node="a100-0"))
    outcome = cluster.wait_for_pod(WORKLOADS, "mistral-7b-1", timeout_s=5)
    assert (outcome.phase, outcome.reason, outcome.timed_out) == (
        "Failed", "UnexpectedAdmissionError", False)
    assert "Available: 0" in outcome.message
    assert cluster.pod_phase(WORKLOADS, "mistral-7b-1") == PodPhase.FAILED.value
    assert cluster.pods()[0].phase == "Failed"
    assert next(n for n in cluster.nodes() if n.name == "a100-0").gpus[0].slices == ()


def test_a_pod_stuck_pulling_its_image_or_unschedulable_is_reported(
    fake: FakeKube, cluster: KubernetesCluster
) -> None:
    _fleet(fake)
    fake.script_pod("broken-1", PodScript(waiting=True, reason="ImagePullBackOff",
                                          message='Back-off pulling image "vllm/vllm"'))
    cluster.bind(_pod(node="a100-0", model="broken"))
    stuck = cluster.wait_for_pod(WORKLOADS, "broken-1", timeout_s=5)
    assert (stuck.phase, stuck.reason, stuck.timed_out) == ("Pending", "ImagePullBackOff", False)

    cluster.bind(_pod(node="a100-9", model="nowhere"))  # no such node
    late = cluster.wait_for_pod(WORKLOADS, "nowhere-1", timeout_s=0.6)
    assert late.timed_out and late.phase == "Pending" and late.reason == "Unschedulable"
    assert "didn't match Pod's node affinity/selector" in late.message


def test_a_pod_waits_while_its_node_is_cordoned_or_has_no_gpu_replica_free(
    fake: FakeKube, cluster: KubernetesCluster
) -> None:
    _fleet(fake)  # a100-0 runs mps-2: it advertises 2 nvidia.com/gpu
    for n in (1, 2, 3):
        cluster.bind(_pod(node="a100-0", model=f"m{n}", threads=25))
    assert cluster.wait_for_pod(WORKLOADS, "m1-1", timeout_s=5).running
    assert cluster.wait_for_pod(WORKLOADS, "m2-1", timeout_s=5).running
    third = cluster.wait_for_pod(WORKLOADS, "m3-1", timeout_s=0.6)
    assert third.timed_out and third.reason == "Unschedulable"
    assert "1 Insufficient nvidia.com/gpu" in third.message
    cluster.delete_pod(WORKLOADS, "m1-1")  # a replica is handed back: the third one starts
    assert cluster.wait_for_pod(WORKLOADS, "m3-1", timeout_s=5).running

    cluster.cordon("h100-0")
    cluster.bind(_pod(node="h100-0", model="late"))
    held = cluster.wait_for_pod(WORKLOADS, "late-1", timeout_s=0.6)
    assert held.timed_out and "1 node(s) were unschedulable" in held.message
    cluster.uncordon("h100-0")
    assert cluster.wait_for_pod(WORKLOADS, "late-1", timeout_s=5).running


def test_binding_the_same_pod_twice_is_refused(fake: FakeKube,
                                               cluster: KubernetesCluster) -> None:
    _fleet(fake)
    cluster.bind(_pod(node="a100-0"))
    with pytest.raises(PodExistsError, match=f"{WORKLOADS}/mistral-7b-1 already exists"):
        cluster.bind(_pod(node="a100-0"))
    assert _calls(fake, verb="create", resource="pods") == [201, 409]


def test_a_malformed_manifest_is_refused_before_any_call(fake: FakeKube,
                                                         cluster: KubernetesCluster) -> None:
    pod = _pod(node="a100-0")
    del pod["metadata"]["annotations"]["gpu-scheduler.io/mps-owner"]
    with pytest.raises(ValidationError, match="mps-owner"):
        cluster.bind(pod)
    assert fake.calls == []


def test_an_invalid_object_refused_by_the_server_is_a_validation_error(
    fake: FakeKube, cluster: KubernetesCluster
) -> None:
    fake.fail_next("create", "pods", code=422)
    with pytest.raises(InvalidObjectError, match="Invalid"):
        cluster.bind(_pod(node="a100-0"))


def test_deleting_pods_and_asking_about_missing_ones(fake: FakeKube,
                                                     cluster: KubernetesCluster) -> None:
    _fleet(fake)
    with pytest.raises(PodNotFoundError, match=f"{WORKLOADS}/ghost"):
        cluster.pod_phase(WORKLOADS, "ghost")
    with pytest.raises(PodNotFoundError):
        cluster.wait_for_pod(WORKLOADS, "ghost", timeout_s=1)
    cluster.bind(_pod(node="a100-0"))
    cluster.delete_pod(WORKLOADS, "mistral-7b-1")
    cluster.delete_pod(WORKLOADS, "mistral-7b-1")  # terminating or gone: not an error
    cluster.delete_pod(WORKLOADS, "ghost")
    assert _calls(fake, verb="delete", resource="pods")[-1] == 404


# ------------------------------------------------------------------------------------------
# Cordon and drain
# ------------------------------------------------------------------------------------------
def test_cordon_and_uncordon(fake: FakeKube, cluster: KubernetesCluster) -> None:
    _fleet(fake)
    cluster.cordon("h100-0")
    node = fake.node("h100-0")
    assert node["spec"]["unschedulable"] is True
    assert not next(n for n in cluster.nodes() if n.name == "h100-0").schedulable
    cluster.uncordon("h100-0")
    assert next(n for n in cluster.nodes() if n.name == "h100-0").schedulable
    cluster.set_schedulable("h100-1", True)
    assert fake.node("h100-1")["spec"]["taints"] == []
    with pytest.raises(NodeNotFoundError, match="'h100-9' is not a node"):
        cluster.set_schedulable("h100-9", False)
    assert isinstance(NodeNotFoundError("x"), ValidationError)  # as the twin refuses it


def _workloads_on(fake: FakeKube, node: str) -> None:
    fake.add_pod(WORKLOADS, "web-7d9f-1", node=node)
    fake.add_pod(WORKLOADS, "batch-1", node=node, owner=None)  # a bare pod (render_pod's)
    fake.add_pod("monitoring", "dcgm-exporter-x1", node=node, owner="DaemonSet")
    fake.add_pod("kube-system", f"kube-proxy-{node}", node=node, mirror=True)
    fake.add_pod(WORKLOADS, "done-1", node=node, phase="Succeeded")


def test_a_drain_waits_on_a_pod_disruption_budget_then_evicts(
    fake: FakeKube, cluster: KubernetesCluster
) -> None:
    _fleet(fake)
    _workloads_on(fake, "h100-0")
    fake.block_eviction(WORKLOADS, "web-7d9f-1", times=2)
    cluster.cordon("h100-0")
    result = cluster.drain("h100-0", timeout_s=5)
    assert result.completed, result.reason
    assert sorted(result.evicted) == [f"{WORKLOADS}/batch-1", f"{WORKLOADS}/web-7d9f-1"]
    daemonset = "DaemonSet pod: it would be recreated on the node"
    plugin = next(p["metadata"]["name"] for p in fake.pods_on("h100-0")
                  if p["metadata"]["namespace"] == DEVICE_PLUGIN_NAMESPACE)
    assert dict(result.skipped) == {
        "monitoring/dcgm-exporter-x1": daemonset,
        f"{DEVICE_PLUGIN_NAMESPACE}/{plugin}": daemonset,
        "kube-system/kube-proxy-h100-0": "mirror (static) pod: managed by the kubelet",
        f"{WORKLOADS}/done-1": "finished (Succeeded)",
    }
    evictions = [(c.name, c.code) for c in fake.calls if c.resource_path == "pods/eviction"]
    assert evictions.count(("web-7d9f-1", 429)) == 2 and ("web-7d9f-1", 201) in evictions
    assert {name for name, _ in evictions} == {"web-7d9f-1", "batch-1"}
    left = sorted(p["metadata"]["name"] for p in fake.pods_on("h100-0"))
    assert left == ["dcgm-exporter-x1", "done-1", "kube-proxy-h100-0", plugin]


def test_a_drain_gives_up_at_its_deadline_with_the_budgets_reason(
    fake: FakeKube, cluster: KubernetesCluster
) -> None:
    _fleet(fake)
    _workloads_on(fake, "h100-0")
    fake.block_eviction(WORKLOADS, "web-7d9f-1", pdb="web-pdb")
    result = cluster.drain("h100-0", timeout_s=0.5)
    assert not result.completed
    assert result.evicted == (f"{WORKLOADS}/batch-1",)
    ((pod, why),) = result.blocked
    assert pod == f"{WORKLOADS}/web-7d9f-1" and "disruption budget web-pdb needs" in why
    assert "gave up after 0.5 s" in result.reason and "web-7d9f-1" in result.reason
    evicted = {c.name for c in fake.calls if c.resource_path == "pods/eviction"}
    assert evicted == {"web-7d9f-1", "batch-1"}  # never a DaemonSet or mirror pod


def test_a_disruption_budget_refuses_the_eviction_that_would_break_it_until_a_replacement_runs(
    fake: FakeKube, settings: Settings
) -> None:
    _fleet(fake)
    web = {"app": "web"}
    fake.add_pod(WORKLOADS, "web-7d9f-1", node="h100-0", labels=web)
    fake.add_pod(WORKLOADS, "web-7d9f-2", node="h100-0", labels=web)
    fake.add_pdb(WORKLOADS, "web-pdb", match_labels=web, min_available=1)
    assert fake.pdb(WORKLOADS, "web-pdb")["status"]["disruptionsAllowed"] == 1
    replaced: list[float] = []

    def sleep(seconds: float) -> None:
        # The Deployment's controller brings a replacement up elsewhere meanwhile.
        if not replaced:
            fake.add_pod(WORKLOADS, "web-7d9f-3", node="a100-0", labels=web)
        replaced.append(seconds)
        time.sleep(seconds)

    with KubernetesCluster(client.Configuration(host=fake.url), catalog=settings.catalog,
                           options=OPTIONS, sleep=sleep) as adapter:
        adapter.cordon("h100-0")
        result = adapter.drain("h100-0", timeout_s=5)
    assert result.completed, result.reason
    assert sorted(result.evicted) == [f"{WORKLOADS}/web-7d9f-1", f"{WORKLOADS}/web-7d9f-2"]
    assert dict(result.owners) == {}  # not the console's pods: no slice owner to give back
    evictions = [(c.name, c.code) for c in fake.calls if c.resource_path == "pods/eviction"]
    assert evictions == [("web-7d9f-1", 201), ("web-7d9f-2", 429), ("web-7d9f-2", 201)]
    status = fake.pdb(WORKLOADS, "web-pdb")["status"]
    assert (status["currentHealthy"], status["desiredHealthy"], status["expectedPods"]) == (
        1, 1, 1)


def test_a_drain_names_the_slice_owner_of_each_console_pod_it_evicted(
    fake: FakeKube, cluster: KubernetesCluster
) -> None:
    _fleet(fake)
    cluster.bind(_pod(node="a100-0", model="mistral-7b"))
    assert cluster.wait_for_pod(WORKLOADS, "mistral-7b-1", timeout_s=5).running
    fake.add_pod(WORKLOADS, "web-7d9f-1", node="a100-0")
    fake.add_pdb(WORKLOADS, "mistral-pdb", match_labels={f"{LABEL_PREFIX}model": "mistral-7b"},
                 max_unavailable=0)
    blocked = cluster.drain("a100-0", timeout_s=0.3)
    assert not blocked.completed and blocked.evicted == (f"{WORKLOADS}/web-7d9f-1",)
    ((pod, why),) = blocked.blocked
    assert pod == f"{WORKLOADS}/mistral-7b-1"
    assert "disruption budget mistral-pdb needs 1 healthy pods and has 1 currently" in why
    assert dict(blocked.owners) == {}

    fake.add_pdb(WORKLOADS, "mistral-pdb", match_labels={f"{LABEL_PREFIX}model": "mistral-7b"},
                 max_unavailable=1)
    drained = cluster.drain("a100-0", timeout_s=5)
    assert drained.completed, drained.reason
    assert dict(drained.owners) == {f"{WORKLOADS}/mistral-7b-1": "mistral-7b-1"}


def test_a_pod_under_two_budgets_is_never_taken_for_evicted(
    fake: FakeKube, cluster: KubernetesCluster
) -> None:
    """kube-apiserver refuses it with 201 and a Failure Status (code 500) in the body."""
    _fleet(fake)
    fake.add_pod(WORKLOADS, "web-7d9f-1", node="a100-0", labels={"app": "web", "tier": "x"})
    fake.add_pdb(WORKLOADS, "web-pdb", match_labels={"app": "web"}, max_unavailable=1)
    fake.add_pdb(WORKLOADS, "tier-pdb", match_labels={"tier": "x"}, max_unavailable=1)
    result = cluster.drain("a100-0", timeout_s=0.3)
    assert not result.completed and result.evicted == ()
    ((pod, why),) = result.blocked
    assert pod == f"{WORKLOADS}/web-7d9f-1" and "more than one PodDisruptionBudget" in why
    codes = {c.code for c in fake.calls if c.resource_path == "pods/eviction"}
    assert codes == {201}
    assert fake.pod(WORKLOADS, "web-7d9f-1") is not None


def test_a_drain_honours_retry_after(fake: FakeKube, settings: Settings) -> None:
    _fleet(fake)
    fake.add_pod(WORKLOADS, "web-7d9f-1", node="a100-0")
    fake.block_eviction(WORKLOADS, "web-7d9f-1", times=1, retry_after=7)
    slept: list[float] = []
    adapter = KubernetesCluster(client.Configuration(host=fake.url), catalog=settings.catalog,
                                options=OPTIONS, sleep=slept.append)
    with adapter:
        result = adapter.drain("a100-0", timeout_s=30)
    assert result.completed and slept[0] == 7.0


# ------------------------------------------------------------------------------------------
# Device plugin: config label, ConfigMap, restart
# ------------------------------------------------------------------------------------------
def test_patching_the_config_map_retries_a_conflict_after_a_fresh_read(
    fake: FakeKube, cluster: KubernetesCluster
) -> None:
    mps4 = render_yaml(plugin_config(4))
    fake.touch_before_next_patch("configmaps", DEVICE_PLUGIN_CONFIG_MAP,
                                 namespace=DEVICE_PLUGIN_NAMESPACE)
    cluster.patch_device_plugin_configs({"mps-4": mps4})
    data = fake.config_map(DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_CONFIG_MAP)["data"]
    assert data == {**CONFIGS, "mps-4": mps4}
    assert yaml.safe_load(data["mps-4"])["sharing"]["mps"]["resources"][0]["replicas"] == 4
    assert [(c.verb, c.code) for c in fake.calls] == [("get", 200), ("patch", 409),
                                                      ("get", 200), ("patch", 200)]
    fake.clear_calls()
    cluster.patch_device_plugin_configs({"mps-4": mps4})  # already there: no write
    assert [c.verb for c in fake.calls] == ["get"]
    with pytest.raises(ValidationError, match=r"configs.bad key"):
        cluster.patch_device_plugin_configs({"bad key": mps4})


def test_selecting_a_config_for_a_node_retries_a_conflict_and_refuses_unknown_names(
    fake: FakeKube, cluster: KubernetesCluster
) -> None:
    _fleet(fake)
    fake.touch_before_next_patch("nodes", "a100-2")
    cluster.set_device_plugin_config("a100-2", "mps-2")
    assert fake.node("a100-2")["metadata"]["labels"][NODE_LABEL] == "mps-2"
    assert [(c.verb, c.resource, c.code) for c in fake.calls] == [
        ("get", "configmaps", 200), ("get", "nodes", 200), ("patch", "nodes", 409),
        ("get", "nodes", 200), ("patch", "nodes", 200)]
    with pytest.raises(ValidationError, match=r"'mps-8' is not a named config.*mps-2"):
        cluster.set_device_plugin_config("a100-2", "mps-8")
    with pytest.raises(NodeNotFoundError):
        cluster.set_device_plugin_config("a100-9", "mps-2")


def test_the_config_a_node_was_told_to_use_is_read_from_its_label(
    fake: FakeKube, cluster: KubernetesCluster
) -> None:
    _fleet(fake)
    assert isinstance(cluster, NodeConfigurator)
    assert cluster.device_plugin_config("a100-0") == "mps-2"
    assert cluster.device_plugin_config("a100-2") == ""  # no label: the plugin's default
    with pytest.raises(NodeNotFoundError):
        cluster.device_plugin_config("a100-9")


def test_conflicts_that_never_stop_become_a_transient_error(
    fake: FakeKube, settings: Settings
) -> None:
    _fleet(fake)
    fake.touch_before_next_patch("nodes", "a100-2")
    with _adapter(fake.url, settings, conflict_retries=0) as adapter, \
            pytest.raises(TransientError, match="kept changing") as caught:
        adapter.set_device_plugin_config("a100-2", "mps-2")
    assert isinstance(caught.value.__cause__, ConflictError)


def test_restarting_the_device_plugin_waits_until_the_node_advertises_the_replicas(
    fake: FakeKube, cluster: KubernetesCluster, settings: Settings
) -> None:
    _fleet(fake)
    old = [p["metadata"]["name"] for p in fake.pods_on("a100-2")]
    seen: list[tuple[str, str, str]] = []  # (plugin pod, phase, Ready) while the adapter waited

    def sleep(seconds: float) -> None:
        seen.extend((p["metadata"]["name"], p["status"].get("phase", ""),
                     next(c["status"] for c in p["status"]["conditions"] if c["type"] == "Ready"))
                    for p in fake.pods_on("a100-2"))
        time.sleep(seconds)

    cluster.patch_device_plugin_configs({"mps-4": render_yaml(plugin_config(4))})
    cluster.set_device_plugin_config("a100-2", "mps-4")
    with KubernetesCluster(client.Configuration(host=fake.url), catalog=settings.catalog,
                           options=OPTIONS, sleep=sleep) as adapter:
        result = adapter.restart_device_plugin("a100-2", expected_gpus=4, timeout_s=5)
    assert result.ready, result.reason
    # The new pod came up Pending, not Ready, while the node advertised no GPU.
    assert (result.pods[0], "Pending", "False") in seen
    assert result.allocatable_gpus == 4 and result.pods and result.pods[0] not in old
    assert _calls(fake, verb="delete", resource="pods") == [200]
    assert "watch" in {c.verb for c in fake.calls if c.resource == "nodes"}
    status = next(s for s in cluster.node_statuses() if s.name == "a100-2")
    assert (status.replicas, status.allocatable_gpus, status.sharing_strategy) == (4, 4, "mps")


def test_a_restart_that_never_reaches_the_expected_gpus_says_so(
    fake: FakeKube, cluster: KubernetesCluster
) -> None:
    _fleet(fake)
    result = cluster.restart_device_plugin("a100-0", expected_gpus=8, timeout_s=1)
    assert not result.ready and result.allocatable_gpus == 2
    assert "advertises 2 nvidia.com/gpu after 1 s, expected 8" in result.reason
    with pytest.raises(PermanentError, match="no device-plugin pod on node cpu-0"):
        cluster.restart_device_plugin("cpu-0", expected_gpus=0, timeout_s=1)


# ------------------------------------------------------------------------------------------
# Errors: one translation
# ------------------------------------------------------------------------------------------
def test_forbidden_calls_name_the_missing_permission(fake: FakeKube,
                                                     cluster: KubernetesCluster) -> None:
    _fleet(fake)
    fake.add_pod(WORKLOADS, "web-7d9f-1", node="a100-0")
    fake.forbid("create", "pods/eviction")
    with pytest.raises(PermanentError, match="forbidden: the service account may not create "
                       f"pods/eviction in namespace {WORKLOADS}") as caught:
        cluster.drain("a100-0", timeout_s=2)
    assert 'cannot create resource "pods/eviction"' in str(caught.value)
    fake.forbid("list", "nodes")
    with pytest.raises(PermanentError, match="may not list nodes at the cluster scope"):
        cluster.nodes()
    fake.fail_next("get", "pods", code=401)
    with pytest.raises(PermanentError, match="unauthorized"):
        cluster.pod_phase(WORKLOADS, "web-7d9f-1")


@pytest.mark.parametrize(("code", "retry_after", "delay"), [
    (500, None, 0.05), (503, 4, 4.0), (429, 3, 3.0), (429, None, 0.05)])
def test_server_errors_and_throttling_are_transient_with_a_delay(
    fake: FakeKube, cluster: KubernetesCluster, code: int, retry_after: int | None,
    delay: float
) -> None:
    fake.fail_next("list", "nodes", code=code, retry_after=retry_after)
    with pytest.raises(TransientError) as caught:
        cluster.nodes()
    assert caught.value.delay == delay and str(code) in str(caught.value.__cause__)
    assert cluster.nodes() == ()  # the next call goes through


def test_a_refused_connection_is_transient(settings: Settings) -> None:
    with _adapter(f"http://127.0.0.1:{_free_port()}", settings) as adapter, \
            pytest.raises(TransientError, match="Connection refused"):
        adapter.nodes()


# ------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------
def test_connect_with_a_kubeconfig_or_say_why_not(fake: FakeKube, settings: Settings,
                                                  tmp_path: Path) -> None:
    _fleet(fake)
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig(fake.url)), encoding="utf-8")
    with KubernetesCluster.connect(catalog=settings.catalog, options=OPTIONS,
                                   kubeconfig=path) as adapter:
        assert len(adapter.nodes()) == 6
    with pytest.raises(PermanentError, match="cannot load the Kubernetes kubeconfig"):
        KubernetesCluster.connect(catalog=settings.catalog, kubeconfig=tmp_path / "missing")
    with pytest.raises(PermanentError, match="cannot load the Kubernetes in-cluster config"):
        KubernetesCluster.connect(catalog=settings.catalog, in_cluster=True)


def test_options_come_from_the_environment_and_are_validated() -> None:
    options = options_from_env({"GSC_KUBE_NAMESPACE": "inference",
                                "GSC_KUBE_NODE_SELECTOR": "nvidia.com/gpu.present=true"})
    assert (options.namespace, options.node_selector) == ("inference",
                                                          "nvidia.com/gpu.present=true")
    assert options.device_plugin_namespace == "nvidia-device-plugin"
    with pytest.raises(ValidationError, match=r"kubernetes.namespace"):
        options_from_env({"GSC_KUBE_NAMESPACE": "Not_A_Label"})
    with pytest.raises(ValidationError, match=r"kubernetes.retry_delay_s"):
        KubeOptions(retry_delay_s=0)


# ------------------------------------------------------------------------------------------
# The port: the adapter behaves like the twin
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["twin", "kubernetes"])
def test_the_adapter_keeps_the_cluster_ports_contract_like_the_twin(
    kind: str, fake: FakeKube, settings: Settings
) -> None:
    demo_fleet(fake)
    clock = ManualClock(1_700_000_000.0)
    port: Cluster
    if kind == "twin":
        port = Twin(settings, clock=clock, config=TwinConfig(startup_delay_s=30.0))
    else:
        port = _adapter(fake.url, settings)
    assert isinstance(port, Cluster)
    try:
        pod = _pod(node="a100-7", model="granite-3b", gb=3.0, threads=25)
        port.bind(pod)
        assert port.pod_phase(WORKLOADS, "granite-3b-1") == "Pending"
        with pytest.raises(PodExistsError):
            port.bind(pod)
        if isinstance(port, Twin):
            port.step(31.0)
        else:
            assert port.wait_for_pod(WORKLOADS, "granite-3b-1", timeout_s=5).running
        assert port.pod_phase(WORKLOADS, "granite-3b-1") == "Running"
        gpu = next(n for n in port.nodes() if n.name == "a100-7").gpus[0]
        assert [(s.owner, s.thread_pct, s.memory_mib) for s in gpu.slices] == [
            ("granite-3b-1", 25, 3072)]
        port.set_schedulable("a100-7", False)
        assert not next(n for n in port.nodes() if n.name == "a100-7").schedulable
        with pytest.raises(ValidationError, match="node"):
            port.set_schedulable("a100-99", False)
        port.delete_pod(WORKLOADS, "granite-3b-1")
        port.delete_pod(WORKLOADS, "granite-3b-1")
        port.delete_pod(WORKLOADS, "ghost")
        if isinstance(port, KubernetesCluster):
            _until_gone(port)
        with pytest.raises(PodNotFoundError):
            port.pod_phase(WORKLOADS, "granite-3b-1")
    finally:
        if isinstance(port, KubernetesCluster):
            port.close()


def _until_gone(port: KubernetesCluster) -> None:
    """Graceful termination takes a moment in Kubernetes (0.05 s in the fake)."""
    for _ in range(100):
        try:
            port.pod_phase(WORKLOADS, "granite-3b-1")
        except PodNotFoundError:
            return
        time.sleep(0.02)

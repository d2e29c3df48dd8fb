"""One rolling node update, run the same way on the digital twin and on Kubernetes.

The scenario (SPEC §4.1; issue 10 item 2): cordon → drain → select a device-plugin
config → restart the device plugin → wait until the node advertises the new
replicas → uncordon. It talks only to the ``Cluster`` and ``NodeConfigurator``
ports, so the same function runs over

- ``kubernetes``: ``KubernetesCluster`` against the fake API server
  (``fake_kube.py``: real JSON shapes and status codes, PodDisruptionBudgets
  enforced by the eviction subresource, a device-plugin DaemonSet pod per node,
  allocatable ``nvidia.com/gpu`` = GPUs × replicas of the selected config), in real
  time with short delays;
- ``twin``: ``core.sim.Twin`` on a ``ManualClock``.

Both start from the same fleet: two nodes of one A100 each, running ``mps-2``, and
two deployments with one replica on each node, so each deployment's disruption
budget (a ``minAvailable: 1`` PodDisruptionBudget on the fake, the twin's
per-deployment budget from settings) lets the drain take the drained node's
replica. Only what differs between the two is in ``Backend``: how time passes for
a pod to start, and (on the fake) a concurrent writer of the node and the checks
of what the API server answered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
from kubernetes import client

from core.adapters.kubernetes import KubeOptions, KubernetesCluster
from core.clock import ManualClock
from core.errors import ValidationError
from core.manifest import HOSTNAME_LABEL, LABEL_PREFIX, render_pod
from core.model import Gpu, MpsSlice, Node, PlacementRequest, Priority, WorkloadClass
from core.mps.device_plugin import NODE_LABEL, plugin_config, render_yaml
from core.ports import Cluster, NodeConfigurator, PodPhase
from core.settings import Settings
from core.sim import Twin, TwinConfig
from core.sim.traffic import constant_traffic
from tests.integration.fake_kube import (
    A100_PRODUCT,
    DEVICE_PLUGIN_CONFIG_MAP,
    DEVICE_PLUGIN_NAMESPACE,
    FakeKube,
)

WORKLOADS = "gpu-workloads"
NODE = "a100-0"  # the node the scenario reconfigures
OTHER = "a100-1"  # where the other replica of each deployment runs
BEFORE, AFTER, REPLICAS_AFTER = "mps-2", "mps-4", 4
# (model, GB, SM thread %): two deployments, one replica of each on each node.
MODELS = (("mistral-7b", 8.0, 50), ("granite-3b", 3.0, 25))
TWIN_STARTUP_S = 5.0


class Port(Cluster, NodeConfigurator, Protocol):
    """What the scenario needs of a backend: both cluster ports."""


@dataclass
class Backend:
    """A cluster the scenario runs on, and the little that differs between backends."""

    name: str
    port: Port
    # Let the time a bound pod needs to start pass (then its phase tells whether it did).
    let_pods_start: Callable[[], None]
    # Just before the config label is written, someone else writes the node (409 then).
    concurrent_writer: Callable[[str], None] = field(default=lambda node: None)
    # What the backend saw underneath, checked once the scenario ran.
    check_underneath: Callable[[], None] = field(default=lambda: None)
    restart_timeout_s: float = 10.0
    drain_timeout_s: float = 10.0


# ------------------------------------------------------------------------------------------
# Backends
# ------------------------------------------------------------------------------------------
def _memory_mib(settings: Settings) -> int:
    return settings.catalog["A100"].memory_mib


def _kubernetes(settings: Settings) -> Iterator[Backend]:
    configs = {name: render_yaml(plugin_config(n))
               for name, n in (("exclusive", 1), (BEFORE, 2), (AFTER, REPLICAS_AFTER))}
    with FakeKube() as fake:
        fake.add_config_map(DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_CONFIG_MAP, data=configs)
        for name in (NODE, OTHER):
            fake.add_node(name, product=A100_PRODUCT, memory_mib=_memory_mib(settings),
                          config=BEFORE)
        for model, _, _ in MODELS:
            fake.add_pdb(WORKLOADS, f"{model}-pdb", min_available=1,
                         match_labels={f"{LABEL_PREFIX}model": model})
        options = KubeOptions(namespace=WORKLOADS, retry_delay_s=0.05, poll_interval_s=0.05,
                              request_timeout_s=10.0)
        with KubernetesCluster(client.Configuration(host=fake.url), catalog=settings.catalog,
                               options=options) as adapter:

            def let_pods_start() -> None:
                for pod in adapter.pods():
                    if pod.phase == PodPhase.PENDING.value:
                        adapter.wait_for_pod(pod.namespace, pod.name, timeout_s=1.0)

            def concurrent_writer(node: str) -> None:
                fake.touch_before_next_patch("nodes", node)

            def check_underneath() -> None:
                # The API server's answers: one budget-checked eviction (201) per replica,
                # none refused (each budget allowed one), and a 409 for the label written
                # over the concurrent writer; the plugin pod was replaced, never evicted.
                calls = fake.calls
                evictions = sorted((c.name, c.code) for c in calls
                                   if c.resource_path == "pods/eviction")
                assert evictions == sorted((f"{m}-0", 201) for m, _, _ in MODELS)
                assert ("patch", "nodes", 409) in {(c.verb, c.resource, c.code) for c in calls}
                for model, _, _ in MODELS:
                    status = fake.pdb(WORKLOADS, f"{model}-pdb")["status"]
                    assert (status["currentHealthy"], status["desiredHealthy"]) == (1, 1)
                labels = fake.node(NODE)["metadata"]["labels"]
                assert labels["nvidia.com/gpu.replicas"] == str(REPLICAS_AFTER)
                allocatable = fake.node(NODE)["status"]["allocatable"]["nvidia.com/gpu"]
                assert allocatable == str(REPLICAS_AFTER)

            yield Backend(name="kubernetes", port=adapter, let_pods_start=let_pods_start,
                          concurrent_writer=concurrent_writer,
                          check_underneath=check_underneath)


def _twin(settings: Settings) -> Iterator[Backend]:
    clock = ManualClock(1_700_000_000.0)
    memory = _memory_mib(settings)
    nodes = tuple(
        Node(name=name, gpus=(Gpu(index=0, gpu_type="A100", memory_total_mib=memory,
                                  uuid=f"GPU-{name}-0"),),
             labels={HOSTNAME_LABEL: name, "nvidia.com/gpu.product": "A100",
                     NODE_LABEL: BEFORE},
             device_plugin_config=BEFORE, gpu_replicas=2)
        for name in (NODE, OTHER))
    twin = Twin(settings, clock=clock, nodes=nodes, traffic=constant_traffic(0.0),
                config=TwinConfig(startup_delay_s=TWIN_STARTUP_S))
    yield Backend(name="twin", port=twin,
                  let_pods_start=lambda: clock.advance(TWIN_STARTUP_S + 1.0),
                  restart_timeout_s=3600.0, drain_timeout_s=3600.0)


@pytest.fixture(params=["kubernetes", "twin"])
def backend(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Backend]:
    make = {"kubernetes": _kubernetes, "twin": _twin}[request.param]
    yield from make(settings)


# ------------------------------------------------------------------------------------------
# Helpers: only the ports
# ------------------------------------------------------------------------------------------
def _pod(*, model: str, gb: float, threads: int, node: str, replica: int) -> dict[str, Any]:
    request = PlacementRequest(model_name=model, model_memory_gb=gb, priority=Priority.MEDIUM,
                               latency_sla_ms=500.0, namespace=WORKLOADS)
    wc = WorkloadClass.TINY if gb < 4 else WorkloadClass.MEDIUM
    mps_slice = MpsSlice(owner=_owner(model, replica), thread_pct=threads,
                         memory_mib=request.memory_mib, model=model, workload_class=wc)
    return render_pod(request=request, node=node, gpu_index=0, mps_slice=mps_slice,
                      workload_class=wc, pod_name=f"{model}-{replica}")


def _owner(model: str, replica: int) -> str:
    return f"req-{model}-{replica}"


def _node(port: Port, name: str) -> Node:
    return next(n for n in port.nodes() if n.name == name)


def _holding(port: Port, node: str) -> list[str]:
    """The console's pods that still hold a GPU of ``node`` (Pending, Running, Unknown)."""
    return sorted(f"{p.namespace}/{p.name}" for p in port.replica_pods()
                  if p.node == node and p.phase in (PodPhase.PENDING.value,
                                                    PodPhase.RUNNING.value,
                                                    PodPhase.UNKNOWN.value))


# ------------------------------------------------------------------------------------------
# The scenario
# ------------------------------------------------------------------------------------------
def test_a_node_is_cordoned_drained_reconfigured_restarted_and_uncordoned(
    backend: Backend
) -> None:
    port = backend.port
    assert isinstance(port, Cluster) and isinstance(port, NodeConfigurator)
    for replica, node in enumerate((NODE, OTHER)):
        for model, gb, threads in MODELS:
            port.bind(_pod(model=model, gb=gb, threads=threads, node=node, replica=replica))
    backend.let_pods_start()
    on_node = sorted(f"{WORKLOADS}/{model}-0" for model, _, _ in MODELS)
    assert _holding(port, NODE) == on_node
    assert all(port.pod_phase(WORKLOADS, p.name) == PodPhase.RUNNING.value
               for p in port.replica_pods())
    start = _node(port, NODE)
    assert (start.device_plugin_config, start.gpu_replicas) == (BEFORE, 2)
    assert port.device_plugin_config(NODE) == BEFORE

    # 1. Cordon: the node takes no new pod.
    port.cordon(NODE)
    assert not _node(port, NODE).schedulable
    port.bind(_pod(model="phi-2", gb=3.0, threads=25, node=NODE, replica=0))
    backend.let_pods_start()
    assert port.pod_phase(WORKLOADS, "phi-2-0") == PodPhase.PENDING.value
    port.delete_pod(WORKLOADS, "phi-2-0")

    # 2. Drain: every replica on the node is evicted (within each deployment's budget);
    # the result names each evicted pod's slice owner, so its request can be requeued.
    drained = port.drain(NODE, timeout_s=backend.drain_timeout_s)
    assert drained.completed, drained.reason
    assert drained.node == NODE and sorted(drained.evicted) == on_node
    assert dict(drained.owners) == {f"{WORKLOADS}/{model}-0": _owner(model, 0)
                                    for model, _, _ in MODELS}
    assert drained.blocked == ()
    assert _holding(port, NODE) == []
    assert all(g.slices == () for g in _node(port, NODE).gpus)
    assert len(_holding(port, OTHER)) == len(MODELS)  # the other replicas kept running

    # 3. Select the new config: refused when the cluster does not know it; selected
    # (over a concurrent writer on the fake), but nothing changes until the restart.
    with pytest.raises(ValidationError):
        port.set_device_plugin_config(NODE, "mps-banana")
    assert port.device_plugin_config(NODE) == BEFORE
    backend.concurrent_writer(NODE)
    port.set_device_plugin_config(NODE, AFTER)
    assert port.device_plugin_config(NODE) == AFTER
    assert _node(port, NODE).gpu_replicas == 2

    # 4. Restart the device plugin and wait until the node advertises GPUs × replicas.
    gpus = len(start.gpus)
    restarted = port.restart_device_plugin(NODE, expected_gpus=gpus * REPLICAS_AFTER,
                                           timeout_s=backend.restart_timeout_s)
    assert restarted.ready, restarted.reason
    assert restarted.node == NODE and restarted.allocatable_gpus == gpus * REPLICAS_AFTER
    after = _node(port, NODE)
    assert (after.device_plugin_config, after.gpu_replicas) == (AFTER, REPLICAS_AFTER)
    assert all(g.healthy for g in after.gpus)
    assert not after.schedulable  # still cordoned until the operator says so

    # 5. Uncordon: the node takes pods again.
    port.uncordon(NODE)
    assert _node(port, NODE).schedulable
    port.bind(_pod(model="phi-2", gb=3.0, threads=25, node=NODE, replica=1))
    backend.let_pods_start()
    assert port.pod_phase(WORKLOADS, "phi-2-1") == PodPhase.RUNNING.value
    assert _holding(port, NODE) == [f"{WORKLOADS}/phi-2-1"]
    backend.check_underneath()

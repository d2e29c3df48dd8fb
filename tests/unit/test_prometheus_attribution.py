"""GPU → model-server attribution from dcgm-exporter's pod mapping, and fleet totals.

Pure functions of ``core.adapters.prometheus_attribution`` on hand-built
readings: which label names the pod, that the exporter's own pod never counts
as a model server, how a pod's QPS spreads over its GPUs, and that a MIG
card's power is counted once.
"""

from __future__ import annotations

import pytest

from core.adapters.prometheus_attribution import (
    MIXED_SOURCES,
    attribute_gpus,
    fleet_totals,
    mapped_pod,
    with_nodes,
)
from core.telemetry import (
    SUCCESS_FROM_ENGINE,
    SUCCESS_FROM_GATEWAY,
    SUCCESS_SOURCE_NOTES,
    DeploymentTelemetry,
    GpuTelemetry,
)


def _gpu(node: str, index: int, *, used: int = 2048, power: float = 100.0,
         mig: str = "") -> GpuTelemetry:
    return GpuTelemetry(node=node, gpu_index=index, gpu_type="H100", uuid=f"GPU-{node}-{index}",
                        utilization=0.5, power_w=power, memory_used_mib=used,
                        memory_total_mib=81920, energy_j=0.0, mig_instance=mig)


def _dep(model: str, *, pods: tuple[str, ...] = (), qps: float = 10.0,
         success: float | None = 1.0, source: str = SUCCESS_FROM_ENGINE
         ) -> DeploymentTelemetry:
    return DeploymentTelemetry(
        model=model, namespace="prod", replicas=len(pods), qps_1m=qps, qps_5m=qps,
        qps_15m=qps, qps_1h=qps, success_rate=success, p99_latency_ms=None,
        mean_latency_ms=None, ttft_p50_ms=None, queue_waiting=0, running=0,
        tokens_per_s=0.0, pods=pods, success_source=source)


def test_exported_pod_wins_over_the_targets_pod() -> None:
    assert mapped_pod({"pod": "dcgm-exporter-x", "namespace": "gpu-operator",
                       "exported_pod": "llama-0", "exported_namespace": "prod"}) == "prod/llama-0"
    assert mapped_pod({"pod": "llama-0", "namespace": "prod"}) == "prod/llama-0"
    assert mapped_pod({"Hostname": "n1", "gpu": "0"}) is None


def test_only_vllm_servers_are_attributed_and_a_pods_qps_spreads_over_its_gpus() -> None:
    gpus = [_gpu("n1", 0), _gpu("n1", 1), _gpu("n1", 2, used=0), _gpu("n2", 0)]
    mapping = {("n1", 0, ""): {"prod/big-0"}, ("n1", 1, ""): {"prod/big-0", "prod/small-0"},
               # the idle GPU's series carries the exporter's own pod as a target label
               ("n1", 2, ""): {"gpu-operator/dcgm-exporter-x"}}
    out = attribute_gpus(gpus, gpu_pods=mapping, servers={"prod/big-0", "prod/small-0"},
                         pod_qps={"prod/big-0": 8.0, "prod/small-0": 3.0},
                         node_qps={"n1": 11.0, "n2": 5.0}, idle_memory_mib=1024)
    by = {(g.node, g.gpu_index): g for g in out}
    assert by[("n1", 0)].pods == ("prod/big-0",) and by[("n1", 0)].qps_1m == 4.0
    assert by[("n1", 1)].pods == ("prod/big-0", "prod/small-0")
    assert by[("n1", 1)].qps_1m == 4.0 + 3.0
    assert (by[("n1", 2)].pods, by[("n1", 2)].qps_1m) == ((), 0.0)  # idle on a busy node
    # n2 has no mapping: its node QPS (vLLM's node label) goes to its GPU holding memory.
    assert by[("n2", 0)].qps_1m == 5.0
    deps = with_nodes([_dep("big", pods=("prod/big-0",))], out)
    assert deps[0].nodes == ("n1",)


def test_mig_instances_stay_apart_and_the_cards_power_is_counted_once() -> None:
    gpus = [_gpu("n1", 0, mig="1", power=90.0), _gpu("n1", 0, mig="2", power=90.0),
            _gpu("n1", 1, power=200.0)]
    out = attribute_gpus(gpus, gpu_pods={("n1", 0, "2"): {"prod/a-0"}}, servers={"prod/a-0"},
                         pod_qps={"prod/a-0": 6.0}, node_qps={}, idle_memory_mib=1024)
    assert [(g.mig_instance, g.qps_1m) for g in out] == [("1", 0.0), ("2", 6.0), ("", 0.0)]
    totals = fleet_totals(out, [], throughput={"H100": 1000.0})
    assert totals.power_w == 290.0
    assert totals.success_rate is None


def test_fleet_success_rate_says_which_sources_it_mixes() -> None:
    engine = _dep("a", qps=10.0, success=1.0)
    gateway = _dep("b", qps=30.0, success=0.8, source=SUCCESS_FROM_GATEWAY)
    idle = _dep("c", qps=0.0, success=None, source=SUCCESS_FROM_GATEWAY)
    only_engine = fleet_totals([], [engine, idle], throughput={})
    assert (only_engine.success_rate, only_engine.success_source) == (1.0, SUCCESS_FROM_ENGINE)
    both = fleet_totals([], [engine, gateway], throughput={})
    assert both.success_rate == pytest.approx((10 * 1.0 + 30 * 0.8) / 40)
    assert both.success_source == MIXED_SOURCES
    assert "aborts are not counted" in SUCCESS_SOURCE_NOTES[SUCCESS_FROM_ENGINE]
    assert "aborts are not counted" in SUCCESS_SOURCE_NOTES[MIXED_SOURCES]

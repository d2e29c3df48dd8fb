"""The Kubernetes adapter's batch calls (``core.ports.PodBatchCluster``) against the fake
API server over HTTP: many pods created at once, and waited for with one watch, with
the same outcomes as ``bind`` and ``wait_for_pod`` one by one; and the lean fake API
server the throughput benchmark uses speaks the same shapes to the same adapter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.fake_apiserver import FakeApiServer, seed_fleet
from core.ports import PodBatchCluster, PodExistsError
from core.settings import Settings
from tests.integration.fake_kube import (
    A100_PRODUCT,
    DEVICE_PLUGIN_CONFIG_MAP,
    DEVICE_PLUGIN_NAMESPACE,
    FakeKube,
    PodScript,
)
from tests.integration.test_kubernetes_cluster import (
    CONFIGS,
    WORKLOADS,
    _adapter,
    _calls,
    _fleet,
    _pod,
)


@pytest.fixture()
def fake() -> Iterator[FakeKube]:
    with FakeKube() as server:
        server.add_config_map(DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_CONFIG_MAP, data=CONFIGS)
        yield server


def test_many_pods_are_created_at_once_and_awaited_on_one_watch(
        fake: FakeKube, settings: Settings) -> None:
    _fleet(fake)
    fake.add_node("a100-8", product=A100_PRODUCT, memory_mib=40960, count=4, config="mps-2")
    fake.script_pod("failing-1", PodScript(phase="Failed", reason="OutOfnvidia.com/gpu",
                                           message="Node didn't have enough resource"))
    fake.script_pod("broken-1", PodScript(waiting=True, reason="ImagePullBackOff",
                                          message="Back-off pulling image"))
    pods = [_pod(node="a100-8", model=f"ok{i}", gb=2.0, threads=10) for i in range(4)]
    pods += [_pod(node="a100-8", model="failing", gb=2.0, threads=10),
             _pod(node="a100-8", model="broken", gb=2.0, threads=10),
             _pod(node="a100-9", model="nowhere", gb=2.0, threads=10)]
    with _adapter(fake.url, settings, bind_concurrency=4) as cluster:
        assert isinstance(cluster, PodBatchCluster)
        assert cluster.bind_many(pods) == [None] * len(pods)
        again = cluster.bind_many(pods[:1])
        assert isinstance(again[0], PodExistsError)
        beats: list[int] = []
        got = cluster.wait_for_pods([(WORKLOADS, p["metadata"]["name"]) for p in pods],
                                    timeout_s=1.5, heartbeat=lambda: beats.append(1))
    assert all(got[(WORKLOADS, f"ok{i}-1")].running for i in range(4))
    failed = got[(WORKLOADS, "failing-1")]
    assert (failed.phase, failed.timed_out) == ("Failed", False)
    assert "OutOfnvidia.com/gpu" in failed.reason
    stuck = got[(WORKLOADS, "broken-1")]
    assert (stuck.phase, stuck.timed_out) == ("Pending", False)
    assert stuck.reason.startswith("ImagePullBackOff")
    late = got[(WORKLOADS, "nowhere-1")]
    assert late.timed_out and late.phase == "Pending" and "Unschedulable" in late.reason
    assert beats  # the caller's lease was renewed while it waited
    # One watch per segment, never a poll per pod.
    assert not _calls(fake, verb="get", resource="pods")
    assert 1 <= len(_calls(fake, verb="watch", resource="pods")) <= 3


def test_waiting_for_pods_resyncs_when_the_watch_history_expired(
        fake: FakeKube, settings: Settings) -> None:
    _fleet(fake)
    with _adapter(fake.url, settings) as cluster:
        assert cluster.bind_many([_pod(node="a100-0", model=f"m{i}", gb=2.0, threads=10)
                                  for i in range(2)]) == [None, None]
        fake.expire_next_watch()
        got = cluster.wait_for_pods([(WORKLOADS, "m0-1"), (WORKLOADS, "m1-1"),
                                     (WORKLOADS, "never-1")], timeout_s=5)
    assert got[(WORKLOADS, "m0-1")].running and got[(WORKLOADS, "m1-1")].running
    assert not got[(WORKLOADS, "never-1")].running
    assert "does not exist" in got[(WORKLOADS, "never-1")].reason


def test_the_lean_fake_api_server_serves_the_adapter(settings: Settings) -> None:
    fake = FakeApiServer(service_s=0.001, start_delay_s=0.01)
    seed_fleet(fake, nodes=3, gpus_per_node=2, replicas=2)
    url = fake.start()
    try:
        with _adapter(url, settings, page_size=2) as cluster:
            nodes = cluster.nodes()
            assert sorted(n.name for n in nodes) == ["a100-00001", "a100-00002",
                                                     "h100-00000"]
            assert all(len(n.gpus) == 2 and n.gpu_replicas == 2 for n in nodes)
            pods = [_pod(node="a100-00001", model=f"m{i}", gb=2.0, threads=10)
                    for i in range(5)]
            pods[4] = _pod(node="gone", model="m4", gb=2.0, threads=10)
            assert cluster.bind_many(pods) == [None] * 5
            got = cluster.wait_for_pods([(WORKLOADS, f"m{i}-1") for i in range(5)],
                                        timeout_s=1.2)
            # 2 GPUs × 2 replicas on the node: the fifth asks for a node that is not there.
            assert [got[(WORKLOADS, f"m{i}-1")].running for i in range(5)] == \
                [True] * 4 + [False]
            held = [p for p in cluster.pods() if p.node == "a100-00001"]
            assert len(held) == 4 and {p.phase for p in held} == {"Running"}
            cluster.delete_pod(WORKLOADS, "m0-1")
            assert len(cluster.pods()) == 4
    finally:
        fake.stop()


def test_bind_concurrency_and_watch_segment_come_from_the_kube_settings() -> None:
    from core.adapters.kubernetes import options_from_settings
    from core.errors import ValidationError

    options = options_from_settings({"bind_concurrency": " 8 ", "watch_segment_s": "5"})
    assert (options.bind_concurrency, options.watch_segment_s) == (8, 5)
    with pytest.raises(ValidationError, match="whole number"):
        options_from_settings({"bind_concurrency": "many"})
    with pytest.raises(ValidationError, match=r"1\.\.256"):
        options_from_settings({"bind_concurrency": "0"})

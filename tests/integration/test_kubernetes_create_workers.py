"""Pod creates sent from the adapter's worker processes (``KubeOptions.create_processes``)
against the fake API server over HTTP: the same requests, and their answers judged as the
in-process creates judge them (created, already exists, throttled, unreachable)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from core.adapters.kubernetes import KubeOptions, KubernetesCluster
from core.errors import TransientError
from core.ports import PodExistsError
from core.settings import Settings
from tests.integration.fake_kube import (
    A100_PRODUCT,
    DEVICE_PLUGIN_CONFIG_MAP,
    DEVICE_PLUGIN_NAMESPACE,
    FakeKube,
)
from tests.integration.test_kubernetes_cluster import CONFIGS, WORKLOADS, _adapter, _calls, _pod


@pytest.fixture()
def fake() -> Iterator[FakeKube]:
    with FakeKube() as server:
        server.add_config_map(DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_CONFIG_MAP, data=CONFIGS)
        server.add_node("a100-8", product=A100_PRODUCT, memory_mib=40960, count=4,
                        config="mps-2")
        yield server


@pytest.mark.parametrize("processes", [0, 2])
def test_creates_from_worker_processes_have_the_outcomes_of_in_process_ones(
        fake: FakeKube, settings: Settings, processes: int) -> None:
    pods = [_pod(node="a100-8", model=f"ok{i}", gb=2.0, threads=10) for i in range(5)]
    with _adapter(fake.url, settings, bind_concurrency=4,
                  create_processes=processes) as cluster:
        assert cluster.bind_many(pods[:4]) == [None] * 4
        again = cluster.bind_many(pods[:2])
        assert all(isinstance(e, PodExistsError) for e in again), again
        fake.fail_next("create", "pods", code=429, retry_after=7)
        # Two creates in flight at once: whichever reaches the server first is throttled.
        throttled = cluster.bind_many([pods[4], _pod(node="a100-8", model="ok5", gb=2.0,
                                                     threads=10)])
        refused = [e for e in throttled if e is not None]
        assert len(refused) == 1 and isinstance(refused[0], TransientError)
        assert refused[0].delay == 7  # the server's Retry-After
        made = next(i for i, e in zip((4, 5), throttled, strict=True) if e is None)
        got = cluster.wait_for_pods([(WORKLOADS, f"ok{i}-1") for i in (0, 1, 2, 3, made)],
                                    timeout_s=5)
    assert all(r.running for r in got.values()), got
    # The created pods' resourceVersions came back from the workers: no read per pod.
    assert not _calls(fake, verb="get", resource="pods")
    assert _calls(fake, verb="create", resource="pods").count(201) == 5


def test_an_unreachable_api_server_is_a_transient_error_per_pod(settings: Settings) -> None:
    with FakeKube() as gone:
        url = gone.url
    pods = [_pod(node="a100-8", model=f"m{i}", gb=2.0, threads=10) for i in range(2)]
    with _adapter(url, settings, create_processes=1) as cluster:
        errors = cluster.bind_many(pods)
    assert all(isinstance(e, TransientError) and "cannot reach" in str(e) for e in errors)


def test_a_create_carries_the_client_s_auth_and_default_headers(settings: Settings) -> None:
    configuration = client.Configuration(host="http://127.0.0.1:1")
    configuration.api_key = {"authorization": "token-1"}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    with KubernetesCluster(configuration, catalog=settings.catalog,
                           options=KubeOptions(namespace=WORKLOADS)) as cluster:
        url, headers = cluster._create_request(WORKLOADS)
    assert url == f"http://127.0.0.1:1/api/v1/namespaces/{WORKLOADS}/pods"
    assert headers["authorization"] == "Bearer token-1"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("OpenAPI-Generator")

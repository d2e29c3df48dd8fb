"""Several placers at once never over-commit a GPU: the reservation is in the store.

Placers here are what the console's "Place queued requests now" is in several
tabs or console replicas: each decides on its own snapshot of the cluster, with
no leader lease. Threads share one twin (SQLite and PostgreSQL); processes share
one fake Kubernetes API server (PostgreSQL). However they interleave, the slices
of the requests marked bound on each GPU, with what already ran there, fit in 100 %
of its threads, its memory and the replicas its device-plugin config advertises.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from core.clock import ManualClock
from core.controller import PlacementConfig, PlacementWorker
from core.model import Node, PlacementRequest, SchedulerWeights
from core.mps.device_plugin import plugin_config, render_yaml
from core.scheduling import build_scheduler
from core.settings import Settings
from core.sim.twin import Twin, TwinConfig
from core.states import RequestState
from db import decisions, queue, versions
from db.stores import SqlPlacementStore
from tests.db import workers
from tests.db.conftest import Store
from tests.db.test_concurrency import collect, processes
from tests.integration.fake_kube import (
    A100_PRODUCT,
    DEVICE_PLUGIN_CONFIG_MAP,
    DEVICE_PLUGIN_NAMESPACE,
    FakeKube,
    kubeconfig,
)

T0 = 1_767_225_600.0


def tiny(i: int) -> PlacementRequest:
    return PlacementRequest.parse({"model_name": f"tiny-{i}", "model_memory_gb": 1.5,
                                   "priority": "LOW", "latency_sla_ms": 500,
                                   "request_id": f"r{i:03d}"})


def assert_no_gpu_over_committed(store: Store, nodes: tuple[Node, ...]) -> int:
    """Bound requests' slices (the store's record) plus slices the console did not place
    (already on the fleet) fit every GPU; returns how many requests are bound."""
    with store.factory() as s:
        held = decisions.held_placements(s)
        counts = queue.queue_counts(s)
    ours = {h.request_id for h in held}
    per_gpu: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for h in held:
        per_gpu[(h.node, h.gpu_index)].append((h.share_pct, h.memory_mib))
    for node in nodes:
        for gpu in node.gpus:
            slices = per_gpu[(node.name, gpu.index)] + [
                (sl.thread_pct, sl.memory_mib) for sl in gpu.slices if sl.owner not in ours]
            where = f"{node.name}/{gpu.index}"
            assert sum(t for t, _ in slices) <= 100, f"{where} threads {slices}"
            assert sum(m for _, m in slices) <= gpu.memory_total_mib, f"{where} memory"
            if node.gpu_replicas is not None:
                assert len(slices) <= node.gpu_replicas, f"{where} replicas {slices}"
    assert counts.get(RequestState.BOUND, 0) == len(held)
    return len(held)


def test_threads_placing_from_one_queue_never_over_commit(store: Store,
                                                          settings: Settings) -> None:
    twin = Twin(settings, clock=ManualClock(T0), config=TwinConfig(startup_delay_s=0))
    before = twin.nodes()
    with store.factory.begin() as s:
        versions.ensure_initial_weights(s, settings.placement.weights,
                                        now=datetime.fromtimestamp(T0, UTC))
        queue.enqueue_many(s, [tiny(i) for i in range(60)],
                           now=datetime.fromtimestamp(T0, UTC), source="test")
    barrier = threading.Barrier(5)
    errors: list[BaseException] = []

    def place(name: str) -> None:
        placer = PlacementWorker(
            store=SqlPlacementStore(store.factory), cluster=twin, clock=twin.clock,
            scheduler=lambda: build_scheduler(settings, weight_version=1),
            catalog=settings.catalog, max_clients=settings.placement.max_mps_clients_per_gpu,
            worker=name, config=PlacementConfig(claim_batch=4, bind_timeout_s=0))
        try:
            barrier.wait(timeout=30)
            for _ in range(40):
                if not placer.run_once():
                    break
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=place, args=(f"tab-{i}",)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    bound = assert_no_gpu_over_committed(store, before)
    free = sum(min(4 - len(g.slices), (100 - sum(x.thread_pct for x in g.slices)) // 25)
               for n in before for g in n.gpus if g.healthy)
    assert 0 < bound <= free


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_processes_placing_from_one_queue_never_over_commit(store: Store,
                                                            tmp_path: Path) -> None:
    fake = FakeKube(pod_start_delay_s=0.05)
    fake.start()
    try:
        fake.add_config_map(DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_CONFIG_MAP,
                            data={"mps-4": render_yaml(plugin_config(4))})
        for i in range(4):  # 4 GPUs × 4 replicas: 16 quarter-GPU slots for 40 requests
            fake.add_node(f"a100-{i}", product=A100_PRODUCT, memory_mib=40960, count=1,
                          config="mps-4")
        config_path = tmp_path / "kubeconfig"
        config_path.write_text(yaml.safe_dump(kubeconfig(fake.url)), encoding="utf-8")
        with store.factory.begin() as s:
            versions.ensure_initial_weights(s, _weights(), now=datetime.now(UTC))
            queue.enqueue_many(s, [tiny(i) for i in range(40)], now=datetime.now(UTC),
                               source="test")
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        barrier = ctx.Barrier(3)
        specs = [(workers.placer_worker, {"url": store.url, "kubeconfig": str(config_path),
                                          "worker": f"console-{i}", "barrier": barrier,
                                          "results": results}) for i in range(3)]
        with processes(ctx, specs):
            reports = collect(results, 3)
        from core.adapters.kubernetes import KubeOptions, KubernetesCluster
        from core.adapters.settings_source import load_settings

        settings = load_settings(env={})
        with KubernetesCluster.connect(catalog=settings.catalog,
                                       options=KubeOptions(namespace="default"),
                                       kubeconfig=str(config_path)) as cluster:
            nodes = cluster.nodes()
        bound = assert_no_gpu_over_committed(store, nodes)
        assert bound == 16 == sum(r["bound"] for r in reports)
        assert sum(1 for r in reports if r["bound"]) >= 2  # they really raced
    finally:
        fake.stop()


def _weights() -> SchedulerWeights:  # the packaged defaults' weights
    from core.adapters.settings_source import load_settings

    return load_settings(env={}).placement.weights

"""Two controller processes on one PostgreSQL and one (fake) Kubernetes API.

Each process is a whole ``ControllerLoop`` over the real Kubernetes adapter
(the official client, over HTTP, against ``tests.integration.fake_kube``). They
place 1,000 requests; the leader is killed (SIGKILL) part-way. Afterwards every
request is bound, exactly one pod was created per request (a retry of the dead
leader's claims finds its pod and judges it by phase instead of creating
another), and the standby took the lease as soon as the dead leader's expired.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from core.model import PlacementRequest
from core.mps.device_plugin import plugin_config, render_yaml
from db import leases, queue
from db.engine import make_engine, session_factory
from db.models import LeaderLeaseRow, PlacementRequestRow
from tests.db import workers
from tests.db.test_concurrency import collect, processes
from tests.integration.fake_kube import (
    A100_PRODUCT,
    DEVICE_PLUGIN_CONFIG_MAP,
    DEVICE_PLUGIN_NAMESPACE,
    FakeKube,
    kubeconfig,
)

REQUESTS = 1_000
LEASE_TTL_S = 5.0
INTERVAL_S = 0.1
CLAIM_LEASE_S = 120.0  # takeover must not wait for the dead leader's claims to expire


def lease_holder(factory: Any) -> leases.Lease | None:
    with factory() as s:
        return leases.current_lease(s, name="controller", now=datetime.now(UTC))


def bound_count(factory: Any) -> int:
    with factory() as s:
        return queue.queue_counts(s).get("bound", 0)


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_two_controller_processes_place_every_request_once_and_survive_a_killed_leader(
        store_url: str, tmp_path: Path) -> None:
    fake = FakeKube(pod_start_delay_s=0.05)
    fake.start()
    # Every node runs the device plugin's mps-4 config: 4 replicas per GPU.
    fake.add_config_map(DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_CONFIG_MAP,
                        data={"mps-4": render_yaml(plugin_config(4))})
    for i in range(32):  # 256 A100s × 4 replicas: room for 1,000 quarter-GPU replicas
        fake.add_node(f"a100-{i:02d}", product=A100_PRODUCT, memory_mib=40960, count=8,
                      config="mps-4")
    config_path = tmp_path / "kubeconfig"
    config_path.write_text(yaml.safe_dump(kubeconfig(fake.url)), encoding="utf-8")
    engine = make_engine(store_url)
    factory = session_factory(engine)
    try:
        with factory.begin() as s:
            queue.enqueue_many(s, [PlacementRequest.parse({
                "model_name": f"tiny-{i % 20}", "model_memory_gb": 1.5, "priority": "LOW",
                "latency_sla_ms": 500, "request_id": f"r{i:04d}"}) for i in range(REQUESTS)],
                now=datetime.now(UTC), source="test")
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        # One stop event per process: a process killed while waiting on a shared event
        # would leave set() waiting forever for it to acknowledge the wake-up.
        stops = [ctx.Event(), ctx.Event()]
        ready = [ctx.Event(), ctx.Event()]
        specs = [(workers.controller_worker, {
            "url": store_url, "kubeconfig": str(config_path), "identity": name,
            "lease_ttl": LEASE_TTL_S, "interval": INTERVAL_S, "claim_lease": CLAIM_LEASE_S,
            "ready": ready[i], "stop": stops[i], "results": results})
            for i, name in enumerate(("ctrl-a", "ctrl-b"))]
        try:
            with processes(ctx, specs) as procs:
                assert all(e.wait(timeout=120) for e in ready)
                deadline = time.monotonic() + 120
                while bound_count(factory) < 200 and time.monotonic() < deadline:
                    time.sleep(0.05)
                leader = lease_holder(factory)
                assert leader is not None and bound_count(factory) >= 200
                victim_i = 0 if leader.holder == "ctrl-a" else 1
                victim = procs[victim_i]
                survivor = "ctrl-b" if leader.holder == "ctrl-a" else "ctrl-a"
                victim.kill()  # mid-pass, holding claims, without releasing the lease
                victim.join(timeout=10)
                with factory() as s:
                    dead = s.get(LeaderLeaseRow, "controller")
                    assert dead is not None and dead.holder == leader.holder
                    dead_expiry = dead.expires_at
                deadline = time.monotonic() + 180
                while bound_count(factory) < REQUESTS and time.monotonic() < deadline:
                    time.sleep(0.1)
                taken = lease_holder(factory)
                stops[1 - victim_i].set()
                reports = collect(results, 1)
        finally:
            results.close()
            results.join_thread()

        assert reports[0]["identity"] == survivor
        # Takeover: the survivor took the lease once the dead leader's expired, not before,
        # and within a few of its polls after.
        assert taken is not None and taken.holder == survivor
        assert dead_expiry <= taken.acquired_at
        assert (taken.acquired_at - dead_expiry).total_seconds() <= INTERVAL_S + 2.0
        # None lost, none placed twice.
        R = PlacementRequestRow
        with factory() as s:
            counts = queue.queue_counts(s)
            never_bound = s.scalar(select(func.count()).select_from(R)
                                   .where(R.status != "bound"))
        assert counts == {"bound": REQUESTS} and never_bound == 0
        creates = Counter(c.code for c in fake.calls
                          if c.method == "POST" and c.resource == "pods" and not c.subresource)
        assert creates[201] == REQUESTS  # one pod created per request; any retry got a 409
        held = [p for n in range(32) for p in fake.pods_on(f"a100-{n:02d}")
                if p["metadata"]["namespace"] == "default"]  # not the device-plugin pods
        owners = Counter(p["metadata"]["annotations"]["gpu-scheduler.io/mps-owner"]
                         for p in held)
        assert set(owners) == {f"r{i:04d}" for i in range(REQUESTS)}
        assert set(owners.values()) == {1}
    finally:
        engine.dispose()
        fake.stop()

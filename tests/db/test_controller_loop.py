"""Two controller loops on one store: one leads and places, the other takes over on expiry."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.bootstrap import build_controller
from core.clock import ManualClock
from core.controller import PlacementConfig
from core.model import PlacementRequest
from core.settings import Settings
from core.sim.twin import Twin, TwinConfig
from db import leases, queue, versions
from tests.db.conftest import Store

T0 = 1_800_000_000.0


def test_one_of_two_controllers_leads_and_the_other_takes_over_after_the_lease(
        store: Store, settings: Settings) -> None:
    clock = ManualClock(T0)
    twin = Twin(settings, clock=clock, config=TwinConfig(startup_delay_s=0))
    with store.factory.begin() as s:
        versions.ensure_initial_weights(s, settings.placement.weights,
                                    now=datetime.fromtimestamp(T0, UTC))
        queue.enqueue_many(s, [PlacementRequest.parse({
            "model_name": f"tiny-{i}", "model_memory_gb": 1.5, "priority": "LOW",
            "latency_sla_ms": 500, "request_id": f"r{i}"}) for i in range(6)],
            now=datetime.fromtimestamp(T0, UTC), source="test")
    config = PlacementConfig(claim_batch=2, bind_timeout_s=0)
    a, b = (build_controller(factory=store.factory, cluster=twin, clock=clock, settings=settings,
                           identity=name, lease_ttl_s=10, placement=config)
            for name in ("ctrl-a", "ctrl-b"))
    placed = a.step() + b.step()
    assert (a.leading, b.leading) == (True, False)
    assert placed == 2  # only the leader placed (a batch of two)
    clock.advance(2)
    placed += a.step() + b.step()
    assert (a.leading, b.leading) == (True, False)
    # The leader dies (stops renewing). Within the lease the standby keeps waiting …
    clock.advance(5)
    assert b.step() == 0 and not b.leading
    # … and takes over once the lease has expired.
    clock.advance(6)
    placed += b.step()
    assert b.leading
    placed += b.step()
    assert placed == 6
    with store.factory() as s:
        assert queue.queue_counts(s) == {"bound": 6}
        lease = leases.current_lease(s, name="controller", now=datetime.fromtimestamp(
            clock.now(), UTC))
    assert lease is not None and lease.holder == "ctrl-b" and lease.generation == 2
    owners = [p.owner for p in twin.pods() if p.owner.startswith("r")]
    assert sorted(owners) == [f"r{i}" for i in range(6)]  # each placed exactly once
    # Each controller exports what it did (SPEC §3.5).
    samples = {(m.name, tuple(sorted(x.labels.items()))): x.value
               for m in text_string_to_metric_families(
                   generate_latest(b.metrics.registry).decode())
               for x in m.samples}
    assert samples[("gsc_placements", (("outcome", "bound"),))] == 2
    assert samples[("gsc_controller_leader", ())] == 1
    assert samples[("gsc_queue_depth", (("state", "bound"),))] == 6
    decisions = {x.name: x.value for m in text_string_to_metric_families(
        generate_latest(b.metrics.registry).decode()) if m.name == "gsc_decision_seconds"
        for x in m.samples if not x.labels}
    assert decisions["gsc_decision_seconds_count"] == 2  # one decision per placement
    assert 0 < decisions["gsc_decision_seconds_sum"] < 2
    a_samples = generate_latest(a.metrics.registry).decode()
    assert 'gsc_placements_total{outcome="bound"} 4.0' in a_samples


def test_a_leader_renews_its_lease_while_waiting_for_pods(store: Store,
                                                          settings: Settings) -> None:
    clock = ManualClock(T0)
    twin = Twin(settings, clock=clock, config=TwinConfig(startup_delay_s=30))
    with store.factory.begin() as s:
        versions.ensure_initial_weights(s, settings.placement.weights,
                                    now=datetime.fromtimestamp(T0, UTC))
        queue.enqueue_many(s, [PlacementRequest.parse({
            "model_name": "slow-start", "model_memory_gb": 1.5, "priority": "LOW",
            "latency_sla_ms": 500, "request_id": "r-slow"})],
            now=datetime.fromtimestamp(T0, UTC), source="test")
    config = PlacementConfig(bind_timeout_s=120, poll_s=2)
    a, b = (build_controller(factory=store.factory, cluster=twin, clock=clock, settings=settings,
                           identity=name, lease_ttl_s=10, placement=config)
            for name in ("ctrl-a", "ctrl-b"))
    # The pod takes 30 s to start, three times the lease TTL; the leader keeps its lease.
    assert a.step() == 1 and a.leading
    assert clock.now() >= T0 + 30
    assert b.step() == 0 and not b.leading
    with store.factory() as s:
        lease = leases.current_lease(s, name="controller",
                                   now=datetime.fromtimestamp(clock.now(), UTC))
    assert lease is not None and lease.holder == "ctrl-a" and lease.generation == 1

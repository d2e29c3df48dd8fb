"""The controller's autoscaling on the twin, driven by an injected clock (no sleeping).

A traffic surge on one deployment grows its queue; the leader's monitoring
step samples it every 30 s and the autoscaler scales up only after the
recommendation has held for the 60 s window, by enqueuing placement requests
that the same loop then places. When traffic stops, it scales down by 2 only
after 300 s. A paused autoscaler recommends but never acts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from app.bootstrap import build_controller, build_monitor
from core.clock import ManualClock
from core.controller import ControllerLoop, PlacementConfig
from core.settings import Settings
from core.sim.faults import traffic_surge
from core.sim.twin import Twin, TwinConfig
from core.states import FlagKey
from db import autoscaling, flags, queue, versions
from tests.db.conftest import Store

T0 = 1_800_000_000.0 + 12 * 3600  # midday: the diurnal traffic is up
MODEL = "llama-2-7b"
DEPLOYMENT = f"default/{MODEL}"


@dataclass
class Rig:
    clock: ManualClock
    twin: Twin
    loop: ControllerLoop
    store: Store

    def run_for(self, seconds: float, *, step: float = 10.0) -> None:
        """Step the loop every ``step`` simulated seconds for ``seconds``."""
        end = self.clock.now() + seconds
        while self.clock.now() < end:
            self.loop.step()
            self.clock.advance(step)

    def run_until(self, what: str, *, reason: str = "", limit_s: float = 600,
                  step: float = 10.0) -> autoscaling.AutoscalingDecision:
        """Step until a decision of kind ``what`` (whose reason has ``reason``) is stored."""
        end = self.clock.now() + limit_s
        while self.clock.now() < end:
            self.loop.step()
            found = [d for d in self.decisions(what) if reason in d.reason]
            if found:
                return found[0]
            self.clock.advance(step)
        raise AssertionError(f"no {what!r} decision within {limit_s:.0f} s")

    def decisions(self, action: str | None = None) -> list[autoscaling.AutoscalingDecision]:
        with self.store.factory() as s:
            rows = autoscaling.autoscaling_history(s, deployment=DEPLOYMENT)
        return [r for r in reversed(rows) if action is None or r.action == action]

    def running(self) -> int:
        return sum(1 for p in self.twin.replica_pods()
                   if p.deployment == DEPLOYMENT and p.phase == "Running")


@pytest.fixture()
def rig(store: Store, settings: Settings) -> Iterator[Rig]:
    """The controller with the ``seed`` policy (SPEC §3.6's queue rule, literally)."""
    yield from _rig(store, replace(settings, slo=replace(settings.slo, policy="seed")))


@pytest.fixture()
def slo_rig(store: Store, settings: Settings) -> Iterator[Rig]:
    """The controller as it ships: the ``slo`` policy."""
    assert settings.slo.policy == "slo"
    yield from _rig(store, settings)


def _rig(store: Store, settings: Settings, *, interval_s: float = 30) -> Iterator[Rig]:
    clock = ManualClock(T0)
    twin = Twin(settings, clock=clock, config=TwinConfig(startup_delay_s=20, warmup_s=300))
    with store.factory.begin() as s:
        versions.ensure_initial_weights(s, settings.placement.weights,
                                    now=datetime.fromtimestamp(T0, UTC))
    monitor = build_monitor(metrics=twin, factory=store.factory, interval_s=interval_s)
    loop = build_controller(factory=store.factory, cluster=twin, clock=clock, settings=settings,
                          identity="ctrl", lease_ttl_s=60, monitor=monitor,
                          feedback=False,
                          placement=PlacementConfig(bind_timeout_s=0))
    yield Rig(clock, twin, loop, store)


def test_a_growing_queue_scales_up_by_four_only_after_the_60s_window(rig: Rig) -> None:
    rig.run_for(60)
    assert rig.decisions() == []  # normal traffic: nothing to do
    rig.twin.inject(traffic_surge(MODEL, factor=6, duration_s=3600))
    surge_at = rig.clock.now()
    opened = rig.run_until("hold", reason="up recommended")  # the window opens, logged
    assert rig.decisions("up") == []
    up = rig.run_until("up")
    assert len(rig.decisions("up")) == 1
    assert (up.replicas_before, up.replicas_after) == (1, 5)
    assert up.inputs["queue_waiting"] > 5 and up.inputs["tops_per_w"] > 1.0
    assert up.created_at.timestamp() - opened.created_at.timestamp() >= 60
    assert up.created_at.timestamp() - surge_at >= 60
    # The loop places the requests it enqueued; the pods start and serve.
    rig.run_for(60)
    with rig.store.factory() as s:
        autoscaled = [q for q in queue.list_requests(s) if q.source == "autoscaler"]
    assert {q.request_id for q in autoscaled} == set(up.inputs["requests"])
    assert {q.status for q in autoscaled} == {"bound"}
    assert rig.running() == 5


def test_idle_replicas_scale_down_by_two_only_after_the_300s_window(
        rig: Rig, settings: Settings) -> None:
    surge = rig.twin.inject(traffic_surge(MODEL, factor=6))
    rig.run_until("up")
    rig.run_for(60)
    rig.twin.clear_fault(surge)
    rig.twin.set_traffic_weights({MODEL: 0.0})  # its traffic stops
    opened = rig.run_until("hold", reason="down recommended")
    assert rig.decisions("down") == []
    first = rig.run_until("down")
    assert first.created_at.timestamp() - opened.created_at.timestamp() >= 300
    before = first.replicas_before
    assert before >= 5 and first.replicas_after == before - 2
    assert len(first.inputs["removed"]) == 2
    assert rig.running() == before - 2
    with rig.store.factory() as s:
        removed = {q.request_id for q in queue.list_requests(s) if q.status == "removed"}
    # Replicas the console placed are marked removed in the store.
    assert removed <= set(first.inputs["removed_requests"])


def test_a_paused_autoscaler_recommends_but_never_acts(rig: Rig) -> None:
    with rig.store.factory.begin() as s:
        flags.set_flag(s, key=FlagKey.AUTOSCALING_PAUSED,
                       value={"paused": True, "reason": "maintenance"},
                      actor="alice", now=datetime.fromtimestamp(T0, UTC))
    rig.twin.inject(traffic_surge(MODEL, factor=6, duration_s=3600))
    rig.run_for(300)
    assert rig.decisions() == []
    with rig.store.factory() as s:
        status = flags.get_flag(s, FlagKey.AUTOSCALING_STATUS)
    assert status is not None and status.value["paused"] is True
    mine = next(d for d in status.value["deployments"] if d["deployment"] == DEPLOYMENT)
    assert mine["queue"] > 5
    # Resumed: the 60 s window starts again from the resume, then it acts.
    with rig.store.factory.begin() as s:
        flags.set_flag(s, key=FlagKey.AUTOSCALING_PAUSED, value={"paused": False}, actor="alice",
                      now=datetime.fromtimestamp(rig.clock.now(), UTC))
    resumed = rig.clock.now()
    up = rig.run_until("up")
    assert up.created_at.timestamp() - resumed >= 60


def test_the_slo_policy_scales_a_surge_to_its_objectives_and_says_why(slo_rig: Rig) -> None:
    rig = slo_rig
    rig.run_for(120)
    rig.twin.inject(traffic_surge(MODEL, factor=6, duration_s=3600))
    up = rig.run_until("up")
    assert up.replicas_after > up.replicas_before
    assert up.reason.startswith("slo: ")
    assert up.inputs["need_rps"] > up.inputs["capacity_rps"]
    with rig.store.factory() as s:
        status = flags.get_flag(s, FlagKey.AUTOSCALING_STATUS)
    assert status is not None
    mine = next(d for d in status.value["deployments"] if d["deployment"] == DEPLOYMENT)
    assert mine["policy"] == "slo" and mine["forecast"]["planned_rps"] > 0
    assert set(mine["capacity_per_type"]) <= {"H100", "A100"} and mine["capacity_per_type"]
    assert all(v > 0 for v in mine["capacity_per_type"].values())
    assert "$/h" in mine["type_choice"] or "room" in mine["type_choice"]
    # The requests it enqueued are placed by the same loop and their pods serve.
    rig.run_for(60)
    with rig.store.factory() as s:
        autoscaled = [q for q in queue.list_requests(s) if q.source == "autoscaler"]
    assert {q.request_id for q in autoscaled} == set(up.inputs["requests"])
    # Each carries the GPU type the policy sized it for (the AutoscalerChoice filter).
    assert all(q.request.labels.get("gpu-scheduler.io/gpu-type") in {"H100", "A100"}
               for q in autoscaled)
    assert rig.running() >= up.replicas_after - 1


def test_the_slo_policy_scales_in_once_traffic_stops_after_its_down_window(
        slo_rig: Rig) -> None:
    rig = slo_rig
    surge = rig.twin.inject(traffic_surge(MODEL, factor=6))
    up = rig.run_until("up")
    rig.run_for(60)
    rig.twin.clear_fault(surge)
    rig.twin.set_traffic_weights({MODEL: 0.0})
    stopped = rig.clock.now()
    down = rig.run_until("down", limit_s=900)
    assert down.created_at.timestamp() - stopped >= 300  # the 300 s down window
    assert down.replicas_after < down.replicas_before <= up.replicas_after
    assert rig.running() == down.replicas_after


def test_rates_are_timed_by_the_readings_not_by_when_the_step_runs(
        store: Store, settings: Settings) -> None:
    """The ``slo`` policy times its counter deltas by each reading's timestamp. Here every
    sample's store write takes 0-8 s (a CPU-starved console), so the autoscaling step runs
    that long after the reading. Timed by the step's clock, that jitter read as bursts
    and a rising trend (planned 230/s for a deployment serving 11/s, burst at its 2.5
    cap); timed by the readings, steady traffic forecasts itself."""
    flat = replace(settings, sim=replace(settings.sim, hourly_qps=(250,), bursts_per_hour=0))
    rig = next(_rig(store, flat, interval_s=5))
    monitor = next(s.monitor for s in rig.loop.steps if hasattr(s, "monitor"))
    lags, write = itertools.cycle((0.0, 8.0, 1.0, 6.0, 0.0, 4.0, 2.0)), \
        monitor.sink.record_sample

    def slow_write(**sample: Any) -> None:
        write(**sample)
        rig.clock.advance(next(lags))

    monitor.sink.record_sample = slow_write
    rig.run_for(180, step=2.0)
    with rig.store.factory() as s:
        status = flags.get_flag(s, FlagKey.AUTOSCALING_STATUS)
    assert status is not None
    forecasts = {d["deployment"]: d["forecast"] for d in status.value["deployments"]
                 if d.get("forecast")}
    assert forecasts
    for deployment, f in forecasts.items():
        assert f["burst_factor"] < 1.8, (deployment, f)
        assert f["planned_rps"] < 2.0 * f["recent_rps"] + 1.0, (deployment, f)

"""The controller's feedback step on the twin: when it runs, and what it stores."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from app.bootstrap import build_monitor
from core.clock import ManualClock
from core.controller.feedback import LAST_RUN_FLAG, FeedbackRunner
from core.settings import Settings
from core.sim.twin import Twin, TwinConfig
from db import flags, versions
from db.stores import SqlFeedbackStore
from tests.db.conftest import Store

T0 = 1_800_000_000.0 + 12 * 3600


# The replay does not depend on the backend; the store functions it uses are tested on
# both by tests/db/test_weights_store.py and test_store.py.
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_feedback_run_replays_stored_traffic_and_publishes_its_comparison(
        store: Store, settings: Settings) -> None:
    fast = dataclasses.replace(settings, feedback=dataclasses.replace(
        settings.feedback, replay_window_s=600.0))
    clock = ManualClock(T0 - 600)
    twin = Twin(fast, clock=clock, config=TwinConfig(warmup_s=300))
    with store.factory.begin() as s:
        versions.ensure_initial_weights(s, fast.placement.weights,
                                    now=datetime.fromtimestamp(T0, UTC))
    monitor = build_monitor(metrics=twin, factory=store.factory, interval_s=30)
    for _ in range(21):  # ten minutes of stored samples: the traffic to replay
        monitor.sample_once()
        clock.advance(30)
    runner = FeedbackRunner(store=SqlFeedbackStore(store.factory), cluster=twin, settings=fast,
                            identity="ctrl")
    outcome = runner.run(twin.telemetry(), now=clock.now())
    with store.factory() as s:
        flag = flags.get_flag(s, LAST_RUN_FLAG)
        stored = versions.list_weight_versions(s)
    assert flag is not None
    run = flag.value
    assert run["deployments"] >= 10 and run["comparable"] >= 3
    assert run["candidates"] >= 10 and len(run["scored"]) == run["candidates"]
    assert run["baseline_cost_per_1k"] > 0 and 0 < run["baseline_sla"] <= 1
    if outcome.proposal is None:
        assert run["why_not"] and run["proposed_version"] is None
        assert [v.status for v in stored] == ["active"]
    else:
        assert run["proposed_version"] == stored[-1].version
        assert stored[-1].status == "proposed" and stored[-1].evidence["candidates"]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_feedback_waits_for_its_first_delay_and_then_its_interval(
        store: Store, settings: Settings) -> None:
    clock = ManualClock(T0)
    twin = Twin(settings, clock=clock)
    runner = FeedbackRunner(store=SqlFeedbackStore(store.factory), cluster=twin, settings=settings,
                            identity="ctrl")
    telemetry = twin.telemetry()
    first = settings.feedback.first_run_after_s
    assert not runner.maybe_start(telemetry, now=T0)  # just started leading
    assert not runner.maybe_start(telemetry, now=T0 + first - 1)
    with store.factory.begin() as s:  # as if a run had just finished
        flags.set_flag(s, key=LAST_RUN_FLAG, value={"at": T0 + first}, actor="ctrl",
                      now=datetime.fromtimestamp(T0 + first, UTC))
    assert not runner.maybe_start(telemetry, now=T0 + first + 1)
    runner.lost_leadership()
    later = T0 + first + settings.feedback.interval_s
    assert not runner.maybe_start(telemetry, now=later)  # a new term: the delay again
    assert runner.maybe_start(telemetry, now=later + first)
    runner.join(timeout=120)

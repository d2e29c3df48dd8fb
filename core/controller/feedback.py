"""The controller's feedback step (SPEC §3.7), run by the leader in a background thread.

Every ``[feedback] interval_s`` (the first run ``first_run_after_s`` after a
controller starts leading): observe the placed replicas against the
performance model's predictions, calibrate the model with the observed
ratios, build a replay of the fleet's recent traffic (its stored QPS series)
over the live deployments, score the active weights and the candidates near
them on that replay, and store a proposal with its evidence when one clears
the margin — approving it at once when auto-apply is on and it stays within
the auto-apply bounds. Each run is published in the store (flag
``feedback.last_run``) as a ``core.feedback.FeedbackRun`` for the Scheduler
weights page: proposed, applied, no change (and why), or failed (and the
error; the next try comes an interval later).

A replay of a simulated hour takes about a second per candidate; the thread
keeps that off the controller's placement loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from core.controller.monitor import Monitor, OnEachSample
from core.feedback import (
    LAST_RUN_FLAG,
    CandidateScore,
    FeedbackOutcome,
    FeedbackRun,
    calibrate,
    calibrated_perf_model,
    observe,
    run_feedback,
    within_auto_apply_bounds,
)
from core.model import SchedulerWeights
from core.ports import Cluster, FeedbackStore
from core.settings import Settings
from core.sim.evaluate import Deployment, evaluate_weights, latency_sla_s
from core.sim.perf_model import PerfModel
from core.sim.traffic import RateReplay, TokenDistribution
from core.telemetry import FleetTelemetry

log = logging.getLogger(__name__)

__all__ = ["AUTHOR", "LAST_RUN_FLAG", "FeedbackRunner", "FeedbackStep", "FeedbackStore",
           "live_deployments"]

AUTHOR = "controller (feedback)"
AUTO_APPLIER = "controller (auto-apply)"


def live_deployments(settings: Settings, telemetry: FleetTelemetry, cluster: Cluster, *,
                     perf: PerfModel, tokens: TokenDistribution) -> tuple[Deployment, ...]:
    """The fleet's deployments as the replay models them: size, traffic share, SLA.

    Memory from the replicas' slices; traffic share from each deployment's QPS
    over the last hour; SLA as the evaluation harness sizes it (a multiple of
    the unloaded latency on the slowest GPU type able to hold the model).
    """
    memory: dict[tuple[str, str], int] = {}
    for pod in cluster.replica_pods():
        key = (pod.namespace, pod.model)
        memory[key] = max(memory.get(key, 0), pod.memory_mib)
    rng = np.random.default_rng(0)
    prompt, output = tokens.sample(rng, 2000)
    out = []
    for d in telemetry.deployments:
        mib = memory.get((d.namespace, d.model))
        if not mib or d.qps_1h <= 0:
            continue
        gb = mib / 1024
        out.append(Deployment(
            name=d.model, namespace=d.namespace, memory_gb=gb, traffic_weight=d.qps_1h,
            sla_s=latency_sla_s(settings, perf, memory_gb=gb, prompt_tokens=prompt,
                                output_tokens=output, multiplier=4.0)))
    return tuple(out)


class FeedbackRunner:
    def __init__(self, *, store: FeedbackStore, cluster: Cluster,
                 settings: Settings, identity: str) -> None:
        self.store = store
        self.cluster = cluster
        self.settings = settings
        self.policy = settings.feedback
        self.identity = identity
        self.perf = PerfModel.for_catalog(settings.catalog)
        self._thread: threading.Thread | None = None
        self._led_since: float | None = None
        self.last: FeedbackOutcome | None = None
        self.last_run: FeedbackRun | None = None  # as published

    def lost_leadership(self) -> None:
        self._led_since = None

    def maybe_start(self, telemetry: FleetTelemetry, *, now: float) -> bool:
        """Start a run in the background when one is due; True when started."""
        if self._led_since is None:
            self._led_since = now
        if self._thread is not None and self._thread.is_alive():
            return False
        if now - self._led_since < self.policy.first_run_after_s:
            return False
        last = self.store.last_run_at()
        # When the flag was written, not what it says: a garbled or older payload still
        # spaces the runs (the store's timestamp is the run's start, on this clock).
        if last is not None and now - last < self.policy.interval_s:
            return False
        self._thread = threading.Thread(target=self._run_logged, args=(telemetry, now),
                                        name="gsc-feedback", daemon=True)
        self._thread.start()
        return True

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run_logged(self, telemetry: FleetTelemetry, now: float) -> None:
        started = time.perf_counter()
        try:
            self.run(telemetry, now=now)
        except Exception as exc:  # published as failed; retried at the next interval
            log.exception("feedback run failed")
            self._publish(FeedbackRun.failed(at=now, seconds=time.perf_counter() - started,
                                             error=exc))

    def _publish(self, run: FeedbackRun) -> None:
        """Store ``run`` as the last run; a store that fails here is logged, not raised."""
        try:
            self.store.publish_run(run.to_json(), actor=self.identity,
                                   now=run.started_at.timestamp())
        except Exception:
            log.exception("could not publish the feedback run")
        else:
            self.last_run = run

    def run(self, telemetry: FleetTelemetry, *, now: float) -> FeedbackOutcome:
        """One feedback run, synchronously (the thread's body; tests call it directly)."""
        started = time.perf_counter()
        at = datetime.fromtimestamp(now, UTC)
        window = self.policy.replay_window_s
        placed = self.store.placed_replicas()
        active = self.store.active_weights()
        series = self.store.fleet_qps_series(since=now - window, until=now)
        weights = active[0] if active else self.settings.placement.weights
        observations = observe(replicas=placed, nodes=self.cluster.nodes(),
                               telemetry=telemetry, perf=self.perf,
                               catalog=self.settings.catalog, policy=self.policy)
        calibration = calibrate(observations, self.policy)
        perf = calibrated_perf_model(self.perf, calibration)
        tokens = TokenDistribution()
        deployments = live_deployments(self.settings, telemetry, self.cluster, perf=perf,
                                       tokens=tokens)
        outcome: FeedbackOutcome
        if len(series) < 2 or not deployments:
            outcome = FeedbackOutcome(None, "no recent traffic stored to replay yet")
        else:
            times = [t for t, _ in series]
            rates = [max(0.0, v) for _, v in series]
            start, duration = times[0], max(60.0, times[-1] - times[0])
            traffic = RateReplay(times, rates, tokens=tokens, seed=int(now) % 10_000)

            def evaluate(w: SchedulerWeights) -> CandidateScore:
                r = evaluate_weights(self.settings, w, traffic=traffic, duration_s=duration,
                                     start=start, deployments=deployments, perf=perf, seed=1)
                return CandidateScore(cost_per_1k=r.cost_per_1k,
                                      sla_attainment=r.sla_attainment,
                                      energy_per_inference_j=r.energy_per_inference_j,
                                      inferences=r.succeeded)

            outcome = run_feedback(active=weights, observations=observations,
                                   evaluate=evaluate, policy=self.policy, now=at,
                                   active_version=active[1] if active else None,
                                   calibration=calibration)
        auto = outcome.proposal is not None and self.policy.auto_apply and \
            within_auto_apply_bounds(weights, outcome.proposal, policy=self.policy)
        published: list[FeedbackRun] = []

        def run_for(version: int | None, applied: bool) -> Mapping[str, Any]:
            published.append(FeedbackRun.of_outcome(
                outcome, at=now, seconds=time.perf_counter() - started,
                observations=observations, deployments=len(deployments), replay_s=window,
                proposed_version=version, applied=applied))
            return published[-1].to_json()

        proposed = self.store.record_run(proposal=outcome.proposal, auto_apply=auto,
                                         author=AUTHOR, applier=AUTO_APPLIER,
                                         actor=self.identity, now=now,
                                         run_for=run_for)
        run = published[-1]
        self.last_run = run
        self.last = outcome
        log.info("feedback run: %s", f"proposed v{proposed}" if proposed
                 else outcome.why_not)
        return outcome


class FeedbackStep(OnEachSample):
    """Starts a feedback run in the background once per stored sample, when one is due."""

    name = "feedback"

    def __init__(self, runner: FeedbackRunner, monitor: Monitor) -> None:
        super().__init__(monitor)
        self.runner = runner

    def on_sample(self, telemetry: FleetTelemetry, *, now: float) -> None:
        self.runner.maybe_start(telemetry, now=now)

    def on_leadership(self, leading: bool) -> None:
        if not leading:
            self.runner.lost_leadership()

    def close(self, *, timeout_s: float) -> None:
        self.runner.join(timeout=timeout_s)

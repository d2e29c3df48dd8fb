"""The controller's feedback step (SPEC §3.7), run by the leader in a background thread.

Every ``[feedback] interval_s`` (the first run ``first_run_after_s`` after a
controller starts leading): observe the placed replicas against the
performance model's predictions, calibrate the model with the observed
ratios, build a replay of the fleet's recent traffic (its stored QPS series)
over the live deployments, score the active weights and the candidates near
them on that replay, and store a proposal with its evidence when one clears
the margin — approving it at once when auto-apply is on and it stays within
the auto-apply bounds. Each run's outcome (proposal or why none) is published
in the store (flag ``feedback.last_run``) for the Scheduler weights page.

A replay of a simulated hour takes about a second per candidate; the thread
keeps that off the controller's placement loop.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from core.feedback import (
    CandidateScore,
    FeedbackOutcome,
    calibrate,
    calibrated_perf_model,
    observe,
    run_feedback,
    within_auto_apply_bounds,
)
from core.model import SchedulerWeights
from core.ports import Cluster
from core.settings import Settings
from core.sim.evaluate import Deployment, evaluate_weights, latency_sla_s
from core.sim.perf_model import PerfModel
from core.sim.traffic import RateReplay, TokenDistribution
from core.telemetry import FleetTelemetry
from db import repo
from db import weights as weight_store

log = logging.getLogger(__name__)

LAST_RUN_FLAG = "feedback.last_run"
AUTHOR = "controller (feedback)"


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
    def __init__(self, *, factory: sessionmaker[Session], cluster: Cluster,
                 settings: Settings, identity: str) -> None:
        self.factory = factory
        self.cluster = cluster
        self.settings = settings
        self.policy = settings.feedback
        self.identity = identity
        self.perf = PerfModel.for_catalog(settings.catalog)
        self._thread: threading.Thread | None = None
        self._led_since: float | None = None
        self.last: FeedbackOutcome | None = None

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
        with self.factory() as s:
            last = repo.get_flag(s, LAST_RUN_FLAG)
        if last is not None and now - float(last.value.get("at", 0.0)) < self.policy.interval_s:
            return False
        self._thread = threading.Thread(target=self._run_logged, args=(telemetry, now),
                                        name="gsc-feedback", daemon=True)
        self._thread.start()
        return True

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run_logged(self, telemetry: FleetTelemetry, now: float) -> None:
        try:
            self.run(telemetry, now=now)
        except Exception:  # a failed run is retried at the next interval
            log.exception("feedback run failed")

    def run(self, telemetry: FleetTelemetry, *, now: float) -> FeedbackOutcome:
        """One feedback run, synchronously (the thread's body; tests call it directly)."""
        started = time.perf_counter()
        at = datetime.fromtimestamp(now, UTC)
        window = self.policy.replay_window_s
        with self.factory() as s:
            placed = weight_store.placed_replicas(s)
            active = repo.active_weights(s)
            series = repo.series(s, metric="qps_1m", key="fleet", since=now - window,
                                 until=now)
        weights = active.weights if active else self.settings.placement.weights
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
                                   active_version=active.version if active else None,
                                   calibration=calibration)
        applied = None
        with self.factory.begin() as s:
            proposed = None
            if outcome.proposal is not None:
                proposed = weight_store.record_proposal(s, outcome.proposal, author=AUTHOR,
                                                        now=at)
                if self.policy.auto_apply and within_auto_apply_bounds(
                        weights, outcome.proposal, policy=self.policy):
                    weight_store.approve(s, version=proposed.version,
                                         actor="controller (auto-apply)",
                                         reason="within the auto-apply bounds", now=at)
                    applied = proposed.version
            result = outcome.result
            repo.set_flag(s, key=LAST_RUN_FLAG, actor=self.identity, now=at, value={
                "at": now, "seconds": round(time.perf_counter() - started, 2),
                "observations": len(observations),
                "comparable": sum(1 for o in observations if o.comparable),
                "deployments": len(deployments), "replay_s": window,
                "candidates": len(result.scored) if result else 0,
                "baseline_cost_per_1k": (float(result.baseline.cost_per_1k)
                                         if result else None),
                "baseline_sla": result.baseline.sla_attainment if result else None,
                "proposed_version": proposed.version if proposed else None,
                "auto_applied": applied is not None,
                "why_not": outcome.why_not,
                "scored": [{"candidate": sc.candidate.label,
                            "cost_per_1k": float(sc.score.cost_per_1k),
                            "sla": sc.score.sla_attainment,
                            "improvement": sc.improvement, "eligible": sc.eligible}
                           for sc in (result.scored if result else ())],
            })
        self.last = outcome
        log.info("feedback run: %s", f"proposed v{proposed.version}" if proposed
                 else outcome.why_not)
        return outcome

"""The replay itself: ``evaluate_policy`` (one placement policy on the twin over a period)
and ``evaluate_weights`` (the scheduler with a weight vector, the standard deployments
unless told otherwise).

Why: one entry point for the feedback loop and the placement-quality bench; the
harness (``harness``) runs the fleet, the books (``results``) measure it.

Invariants: pure (no I/O; no wall clock — decisions/s is measured only when the
caller injects a timer); the same inputs and seed give the same result; a
window is a whole number of control intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from core.errors import ValidationError
from core.model import Node, SchedulerWeights
from core.placement.baselines import PlacementPolicy
from core.scheduling import build_scheduler
from core.settings import Settings
from core.sim.evaluate.deployments import Deployment, ScalingRule, standard_deployments
from core.sim.evaluate.harness import Harness
from core.sim.evaluate.results import Books, PolicyResult
from core.sim.perf_model import PerfModel
from core.sim.trace import Trace, TraceReplay
from core.sim.traffic import ArrivalSource
from core.sim.twin import TwinConfig, fleet_from_settings


def _source(traffic: ArrivalSource | Trace, *, start: float, scale: float, offset_s: float,
            seed: int) -> ArrivalSource:
    if not isinstance(traffic, Trace):
        return traffic
    return TraceReplay(traffic, start=start - offset_s, scale=scale, seed=seed)


def _traffic_totals(source: ArrivalSource, *, start: float, end: float
                    ) -> tuple[int, float, float]:
    """Requests, prompt tokens and output tokens arriving in ``[start, end)``, read an hour
    at a time so a long period never sits in memory at once."""
    count, prompt, output = 0, 0.0, 0.0
    t = start
    while t < end:
        chunk = source.arrivals(t, min(end, t + 3600.0))
        count += len(chunk)
        prompt += float(chunk.prefill_tokens.sum())
        output += float(chunk.decode_tokens.sum())
        t += 3600.0
    return count, prompt, output


def evaluate_policy(
    settings: Settings,
    *,
    policy: PlacementPolicy,
    traffic: ArrivalSource | Trace,
    deployments: Sequence[Deployment],
    duration_s: float,
    nodes: Sequence[Node] | None = None,
    window_s: float = 60.0,
    seed: int = 0,
    start: float = 0.0,
    trace_scale: float = 1.0,
    trace_offset_s: float = 0.0,
    autoscale: bool = True,
    warm_start: bool = True,
    rule: ScalingRule | None = None,
    perf: PerfModel | None = None,
    twin_config: TwinConfig | None = None,
    timer: Callable[[], float] | None = None,
    name: str = "",
    autoscaler: str = "slo",
) -> PolicyResult:
    """Replay ``traffic`` from ``start`` for ``duration_s`` with replicas placed by ``policy``.

    ``traffic`` is an arrival source, or a parsed ``Trace`` replayed at
    ``trace_scale`` × its request count, its offset ``trace_offset_s`` arriving at
    ``start``. ``nodes`` default to the settings' fleet
    (emptied). With ``warm_start`` the fleet starts sized for the period's average
    traffic (as an operator sizes deployments from history; the same for every placement
    policy): under ``slo`` by its planner, with its burst headroom at the cap (burstiness
    is not measured yet), otherwise by the scaling rule; without it, at ``min_replicas``;
    with ``autoscale=False`` it keeps that size. ``timer`` (e.g. ``time.perf_counter``)
    times the policy's decisions.
    ``autoscaler`` is the policy that scales: ``slo`` (the default, what the controller
    ships), ``seed`` (SPEC §3.6's queue rule) or ``target`` (a capacity target).
    """
    rule = rule or ScalingRule()
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise ValidationError("duration_s", "must be a number > 0")
    step = rule.control_interval_s
    per_window = round(window_s / step)
    if per_window < 1 or not math.isclose(per_window * step, window_s):
        raise ValidationError("window_s", f"must be a whole multiple of the control interval "
                              f"({step:g} s)")
    if not deployments:
        raise ValidationError("deployments", "needs at least one deployment")
    if len({d.name for d in deployments}) != len(deployments):
        raise ValidationError("deployments", "names must be unique")
    source = _source(traffic, start=start, scale=trace_scale, offset_s=trace_offset_s,
                     seed=seed)
    perf = perf or PerfModel.for_catalog(settings.catalog)
    initial_rps: list[float] | None = None
    initial_tokens: tuple[float, float] | None = None
    if warm_start:
        count, prompt, output = _traffic_totals(source, start=start, end=start + duration_s)
        weights = np.array([d.traffic_weight for d in deployments], dtype=np.float64)
        if count and weights.sum() > 0:
            initial_rps = list(count / duration_s * weights / weights.sum())
            initial_tokens = (prompt / count, output / count)
    run = Harness(settings, policy=policy, traffic=source, deployments=deployments,
               nodes=nodes if nodes is not None else fleet_from_settings(settings),
               start=start, seed=seed, rule=rule, perf=perf, twin_config=twin_config,
               timer=timer, initial_rps=initial_rps, initial_tokens=initial_tokens,
               autoscaler=autoscaler)
    books = Books(run, settings=settings, steps=math.ceil(duration_s / step - 1e-9),
                   per_window=per_window)
    if autoscale:
        run.prime(run.clock.now(), books.telemetry)
    for _ in range(books.steps):
        books.interval(step)
        if autoscale:
            run.act(run.clock.now(), books.telemetry)
    return books.result(name=name or getattr(policy, "name", type(policy).__name__),
                        window_s=window_s)


def evaluate_weights(
    settings: Settings,
    weights: SchedulerWeights,
    *,
    traffic: ArrivalSource | Trace,
    duration_s: float,
    seed: int = 0,
    start: float = 0.0,
    trace_scale: float = 1.0,
    trace_offset_s: float = 0.0,
    deployments: Sequence[Deployment] | None = None,
    nodes: Sequence[Node] | None = None,
    window_s: float = 60.0,
    rule: ScalingRule | None = None,
    perf: PerfModel | None = None,
    weight_version: int | None = None,
    timer: Callable[[], float] | None = None,
    autoscaler: str = "slo",
    twin_config: TwinConfig | None = None,
    settings_objectives: bool = True,
) -> PolicyResult:
    """Score a weight vector: the Scheduler with ``weights`` under ``evaluate_policy``.

    A deployment that states no objectives of its own is held to the ones the
    settings give it (``[slo]``, with ``settings_objectives``): a candidate is
    judged on the SLO attainment the console reports, under the ``slo``
    autoscaler the controller runs, at the fleet's total cost.

    ``perf`` is where a calibrated performance model goes. Without ``deployments``
    the three ``STANDARD_MODELS`` are used, with SLAs sized on the first ten
    minutes of ``traffic``.
    """
    perf = perf or PerfModel.for_catalog(settings.catalog)
    source = _source(traffic, start=start, scale=trace_scale, offset_s=trace_offset_s,
                     seed=seed)
    if deployments is None:
        sample = source.arrivals(start, start + min(duration_s, 600.0))
        if not len(sample):
            sample = source.arrivals(start, start + duration_s)
        if not len(sample):
            raise ValidationError("traffic", "has no requests in the period to evaluate")
        deployments = standard_deployments(settings, prompt_tokens=sample.prefill_tokens,
                                           output_tokens=sample.decode_tokens, perf=perf)
    if settings_objectives:
        deployments = tuple(d if d.objectives is not None else
                            replace(d, objectives=settings.slo.objectives_for(d.key))
                            for d in deployments)
    scheduler = build_scheduler(settings, weights=weights, weight_version=weight_version)
    return evaluate_policy(settings, policy=scheduler, traffic=source, deployments=deployments,
                           duration_s=duration_s, nodes=nodes, window_s=window_s, seed=seed,
                           start=start, rule=rule, perf=perf, timer=timer, name="scheduler",
                           autoscaler=autoscaler, twin_config=twin_config)

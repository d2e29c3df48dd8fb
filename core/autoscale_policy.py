"""One implementation of the ``slo`` policy for the controller and the evaluation alike.

Why: what is evaluated must be what ships (SPEC §3.6). The controller's
autoscaling step (``core.controller.autoscale``) and the evaluation harness
(``core.sim.evaluate``) both feed this class the same things — a telemetry
reading, the nodes and the replica pods — and act on the plans it returns;
neither has its own sizing rule.

Per deployment and sample: the forecaster (``core.autoscale_forecast``)
learns the request counter; the mean request size comes from the token
counters over the last few minutes; the size at the SLO quantile from the
deployment's spec when it knows it (the evaluation does: it has the trace),
else from the TTFT histogram's quantile-to-mean ratio, else an assumed
ratio (said so in the plan). The stabilizer turns the planned rate into a
need for scaling up and one for scaling in; ``core.autoscale_slo.Planner``
turns the needs into replicas and GPU types at the lowest fleet $/h.

Pure: no I/O, no clock. Invariants: a deployment without counters or with
fewer than two samples has no forecast and is held (unknown is not zero);
min/max replicas hold.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core.autoscale_forecast import DailyLookup, Forecast, Forecaster
from core.autoscale_slo import (
    CapacityTable,
    DeploymentNeed,
    DeploymentPlan,
    FleetState,
    Planner,
    RequestShape,
    Stabilizer,
)
from core.model import Node, WorkloadClass
from core.ports import ReplicaPod
from core.settings import Settings
from core.sim.perf_model import PerfModel
from core.slo_settings import LatencySlo, SloSettings
from core.telemetry import FleetTelemetry, Histogram

# Tail-to-mean prompt size assumed when neither the spec nor enough TTFT observations say.
ASSUMED_TAIL_RATIO = 3.0
_MIN_TAIL_OBSERVATIONS = 50
_SHAPE_WINDOW_S = 300.0
# The part of the TTFT target a burst's queue may take (the rest is the prefill itself).
ABSORB_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """What the policy must know about a deployment besides its telemetry."""

    key: str  # namespace/model
    memory_mib: int
    workload_class: WorkloadClass
    share_pct: int
    allowed_types: frozenset[str]
    min_replicas: int
    max_replicas: int
    objectives: LatencySlo
    # Request sizes at the objectives' quantile, when known (tokens).
    tail_prompt_tokens: float | None = None
    tail_output_tokens: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    plan: DeploymentPlan
    forecast: Forecast | None
    shape: RequestShape | None
    shape_note: str


def spec_for(settings: Settings, *, key: str, memory_mib: int, min_replicas: int,
             max_replicas: int, tail_prompt_tokens: float | None = None,
             tail_output_tokens: float | None = None) -> DeploymentSpec:
    policy = settings.classes.classify(memory_mib / 1024)
    return DeploymentSpec(key=key, memory_mib=memory_mib, workload_class=policy.workload_class,
                          share_pct=policy.share_pct, allowed_types=policy.allowed_types,
                          min_replicas=min_replicas, max_replicas=max_replicas,
                          objectives=settings.slo.objectives_for(key),
                          tail_prompt_tokens=tail_prompt_tokens,
                          tail_output_tokens=tail_output_tokens)


class SloPolicy:
    """Stateful over samples: forecasts, request sizes and stabilization windows."""

    def __init__(self, settings: Settings, perf: PerfModel, *,
                 slo: SloSettings | None = None, daily: DailyLookup | None = None) -> None:
        self.settings = settings
        self.slo = slo or settings.slo
        self.forecaster = Forecaster(self.slo, daily=daily)
        self.stabilizer = Stabilizer(up_window_s=self.slo.up_window_s,
                                     down_window_s=self.slo.down_window_s)
        self.table = CapacityTable(perf, max_utilization=self.slo.max_utilization)
        self.planner = Planner(settings.catalog, self.table)
        self._tokens: dict[str, deque[tuple[float, float, float, float]]] = {}
        self._tail: dict[str, float] = {}
        self._last_shape: dict[str, RequestShape] = {}
        self._hists: dict[str, deque[tuple[float, Histogram, Histogram | None, Histogram]]] = {}

    def reset(self) -> None:
        """Forget the stabilization windows (e.g. while autoscaling is paused)."""
        self.stabilizer.reset()

    def observe(self, telemetry: FleetTelemetry, *, now: float) -> None:
        """Learn rates, request sizes and the tail ratio from one reading."""
        for d in telemetry.deployments:
            c = d.counters
            if c is None:
                continue
            key = f"{d.namespace}/{d.model}"
            hists = self._hists.setdefault(key, deque())
            hists.append((now, c.ttft, c.itl, c.e2e_latency))
            while len(hists) > 2 and hists[1][0] <= now - _SHAPE_WINDOW_S:
                hists.popleft()
            self.forecaster.observe(key, now=now, requests_total=c.requests_total)
            tokens = self._tokens.setdefault(key, deque())
            tokens.append((now, float(c.success_total), float(c.prompt_tokens_total),
                           float(c.generation_tokens_total)))
            while len(tokens) > 2 and tokens[1][0] <= now - _SHAPE_WINDOW_S:
                tokens.popleft()
            hist = c.ttft
            if hist.count >= _MIN_TAIL_OBSERVATIONS and hist.sum > 0:
                q = hist.quantile(self.slo.objectives_for(key).quantile)
                mean = hist.sum / hist.count
                if q is not None and mean > 0:
                    self._tail[key] = min(max(q / mean, 1.0), 10.0)

    def attainment(self, key: str) -> dict[str, float | None]:
        """Over the last minutes, per stated target: the share of observations within it
        (TTFT and e2e per request, TPOT per token, from the histograms, interpolated inside
        a bucket); None where there were none or the source exports no such histogram.
        The exporters give no per-request joint figure; the lowest of these bounds it."""
        hists = self._hists.get(key)
        goal = self.slo.objectives_for(key)
        out: dict[str, float | None] = {}
        if not hists or len(hists) < 2:
            return {"ttft": None, "tpot": None, "e2e": None}
        _, t0, i0, e0 = hists[0]
        _, t1, i1, e1 = hists[-1]
        for name, target, new, old in (("ttft", goal.ttft_s, t1, t0), ("tpot", goal.tpot_s, i1, i0),
                                       ("e2e", goal.e2e_s, e1, e0)):
            if target is None:
                continue
            out[name] = None if new is None or old is None else share_within(new, old, target)
        return out

    def shape(self, spec: DeploymentSpec) -> tuple[RequestShape | None, str]:
        tokens = self._tokens.get(spec.key)
        if not tokens or len(tokens) < 2:
            return None, "no request sizes yet"
        _, s0, p0, g0 = tokens[0]
        _, s1, p1, g1 = tokens[-1]
        ok = s1 - s0
        if ok <= 0:
            return None, "no request finished in the last minutes"
        prompt, output = (p1 - p0) / ok, max((g1 - g0) / ok, 1.0)
        if spec.tail_prompt_tokens is not None:
            tail_p = max(spec.tail_prompt_tokens, prompt)
            tail_o = max(spec.tail_output_tokens or output, output)
            note = "tail sizes from the traffic's own quantiles"
        elif spec.key in self._tail:
            ratio = self._tail[spec.key]
            tail_p, tail_o = prompt * ratio, output * ratio
            note = f"tail ×{ratio:.2f} from the TTFT histogram"
        else:
            tail_p, tail_o = prompt * ASSUMED_TAIL_RATIO, output * ASSUMED_TAIL_RATIO
            note = f"tail ×{ASSUMED_TAIL_RATIO:g} assumed (too few TTFT observations)"
        return RequestShape(prompt, output, tail_p, tail_o), note

    def decide(self, *, now: float, nodes: Sequence[Node], pods: Sequence[ReplicaPod],
               specs: Mapping[str, DeploymentSpec]) -> list[Decision]:
        """Plans for every deployment in ``specs`` over the current fleet."""
        needs: list[DeploymentNeed] = []
        extras: dict[str, tuple[Forecast | None, RequestShape | None, str]] = {}
        for key, spec in specs.items():
            ttft = spec.objectives.ttft_s
            forecast = self.forecaster.forecast(
                key, now=now, absorb_s=ABSORB_SHARE * ttft if ttft is not None else 0.0)
            shape, note = self.shape(spec)
            if shape is None and key in self._last_shape:
                shape, note = self._last_shape[key], f"{note}: the last sizes seen"
            elif shape is not None:
                self._last_shape[key] = shape
            if shape is None and forecast is not None and forecast.planned_rps == 0:
                shape = RequestShape(1.0, 1.0, 1.0, 1.0)  # no traffic: sizes do not matter
            extras[key] = (forecast, shape, note)
            up = down = None
            if forecast is not None and shape is not None:
                up, down = self.stabilizer.observe(key, now=now, need=forecast.planned_rps)
                if not self.stabilizer.covered(key, now=now):
                    down = None  # not a whole down window of history yet: no scale-in
            needs.append(DeploymentNeed(
                key=key, workload_class=spec.workload_class, share_pct=spec.share_pct,
                memory_mib=spec.memory_mib, allowed_types=spec.allowed_types,
                min_replicas=spec.min_replicas, max_replicas=spec.max_replicas,
                need_rps=up, keep_rps=down,
                shape=shape or RequestShape(1.0, 1.0, 1.0, 1.0),
                objectives=spec.objectives))
        plans = self.planner.plan(needs, FleetState.of(nodes, pods))
        return [Decision(plan=p, forecast=extras[p.key][0], shape=extras[p.key][1],
                         shape_note=extras[p.key][2]) for p in plans]


def share_within(new: Histogram, old: Histogram, limit: float) -> float | None:
    """The share of the observations between two readings of a histogram that are
    ≤ ``limit`` (interpolated inside its bucket); None without observations."""
    if new.bounds != old.bounds:
        return None
    counts = [max(0, a - b) for a, b in zip(new.counts, old.counts, strict=True)]
    total = sum(counts)
    if total <= 0:
        return None
    below, lower = 0.0, 0.0
    for i, bound in enumerate(new.bounds):
        if limit >= bound - 1e-12:
            below += counts[i]
            lower = bound
            continue
        below += counts[i] * max(0.0, limit - lower) / (bound - lower)
        break
    return min(1.0, below / total)

"""The load forecast the ``slo`` autoscaling policy sizes replicas for (SPEC §3.6).

Why: a replica takes a minute or more to start, so the policy must size for
the load one horizon ahead, not for the load now, and for the bursts inside a
minute that a per-minute mean hides. The forecast combines

- the recent rate (requests/s over ``rate_window_s``) and its trend (the
  least-squares slope of the per-sample rates over ``trend_window_s``),
  extrapolated one horizon ahead;
- the daily pattern from stored history: how the rate one day ago changed
  over the same horizon, applied to today's rate (only when the store has
  that history; otherwise it is unused, and the forecast says so);
- burst headroom: the highest peak-to-mean ratio of the sampled rates inside
  each of the last few minutes, capped at ``max_burst_factor``, less what the
  queueing the TTFT objective allows absorbs of a peak of that length.

The plan is the forecast mean × the burst headroom: the peaks inside the next
minutes ride on the mean the horizon brings. (Taking only the larger of the
forecast mean and the measured rate × the headroom sizes a ramp's peaks for
today's mean, and misses them: on the code trace, SLO attainment 97.5 % instead
of 99.1 %, measured with ``bench.placement_quality``.)

Pure and clock-free: samples come in with their time; nothing reads a clock.
Invariants: rates are ≥ 0; the burst factor is within [1, max_burst_factor];
a deployment with fewer than two samples forecasts nothing (unknown, not 0).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

from core.slo_settings import SloSettings

# The rate of a deployment between two epoch times one day back, or None (no history).
DailyLookup = Callable[[str, float, float], float | None]
_DAY_S = 86_400.0
_BURST_MINUTES = 5


@dataclass(frozen=True, slots=True)
class Forecast:
    """One deployment's forecast at one instant; rates in requests/s."""

    recent_rps: float
    trend_rps_per_min: float
    trend_rps: float  # recent + slope × horizon
    daily_rps: float | None  # None: no history a day back
    burst_factor: float
    expected_rps: float  # what the horizon is expected to bring (mean)
    planned_rps: float  # expected × burst: what the replicas must sustain within the SLO
    horizon_s: float
    note: str

    def to_json(self) -> dict[str, float | str | None]:
        return {"recent_rps": round(self.recent_rps, 4),
                "trend_rps_per_min": round(self.trend_rps_per_min, 4),
                "trend_rps": round(self.trend_rps, 4),
                "daily_rps": None if self.daily_rps is None else round(self.daily_rps, 4),
                "burst_factor": round(self.burst_factor, 4),
                "expected_rps": round(self.expected_rps, 4),
                "planned_rps": round(self.planned_rps, 4), "horizon_s": self.horizon_s,
                "note": self.note}


class Forecaster:
    """Per deployment: the request counter's samples, and the forecast from them."""

    def __init__(self, settings: SloSettings, *, daily: DailyLookup | None = None) -> None:
        self.settings = settings
        self.daily = daily
        self._counts: dict[str, deque[tuple[float, float]]] = {}
        self._keep_s = max(settings.trend_window_s, settings.rate_window_s,
                           60.0 * (_BURST_MINUTES + 1))

    def observe(self, key: str, *, now: float, requests_total: float) -> None:
        """One reading of the deployment's cumulative request counter at ``now``."""
        samples = self._counts.setdefault(key, deque())
        if samples and now <= samples[-1][0]:
            return
        if samples and requests_total < samples[-1][1]:
            samples.clear()  # the counter was reset (a restarted source): start over
        samples.append((now, float(requests_total)))
        while len(samples) > 2 and samples[1][0] <= now - self._keep_s:
            samples.popleft()

    def forget(self, key: str) -> None:
        self._counts.pop(key, None)

    def forecast(self, key: str, *, now: float, horizon_s: float | None = None,
                 absorb_s: float = 0.0) -> Forecast | None:
        """The forecast for ``key`` (None with fewer than two samples: unknown).

        ``absorb_s``: how long a request may wait in the queue within the deployment's
        objectives (the policy passes half its TTFT target). A peak lasting one sample
        interval ``d`` then needs only ``1 + (peak − 1) · d / (d + absorb_s)`` times the
        mean: the excess queues and drains within the target."""
        s = self.settings
        samples = self._counts.get(key)
        if not samples or len(samples) < 2:
            return None
        horizon = s.horizon_s if horizon_s is None else horizon_s
        points = list(samples)
        recent = _rate_over(points, now=now, window_s=s.rate_window_s)
        # Per-interval rates, stamped at their interval's midpoint.
        rates = [((t0 + t1) / 2, (c1 - c0) / (t1 - t0), t1 - t0)
                 for (t0, c0), (t1, c1) in pairwise(points) if t1 > t0]
        in_trend = [(t, r) for t, r, _ in rates if t >= now - s.trend_window_s]
        slope = _slope(in_trend)
        trend = max(0.0, recent + slope * horizon)
        burst = _burst(rates, now=now, cap=s.max_burst_factor, absorb_s=max(0.0, absorb_s))
        notes = [f"recent {recent:.2f}/s", f"trend {slope * 60:+.2f}/s per min"]
        daily_rps = None
        if self.daily is not None and s.daily_weight > 0:
            then = self.daily(key, now - _DAY_S - s.rate_window_s, now - _DAY_S)
            ahead = self.daily(key, now - _DAY_S + horizon - s.rate_window_s,
                               now - _DAY_S + horizon)
            if then is not None and ahead is not None and then > 0:
                daily_rps = recent * ahead / then
        if daily_rps is None:
            expected = trend
            notes.append("no history a day back: daily pattern unused")
        else:
            w = s.daily_weight
            expected = (1 - w) * trend + w * daily_rps
            notes.append(f"a day ago the next {horizon:.0f} s brought ×"
                         f"{daily_rps / recent if recent > 0 else 1.0:.2f}")
        notes.append(f"burst ×{burst:.2f} (peak-to-mean inside a minute, less what "
                     f"{absorb_s:.1f} s of queueing absorbs)")
        # The peaks inside the horizon ride on the mean it is forecast to bring.
        return Forecast(recent_rps=recent, trend_rps_per_min=slope * 60, trend_rps=trend,
                        daily_rps=daily_rps, burst_factor=burst, expected_rps=expected,
                        planned_rps=expected * burst, horizon_s=horizon,
                        note="; ".join(notes))


def _rate_over(points: list[tuple[float, float]], *, now: float, window_s: float) -> float:
    """The counter's rate from the last sample at or before ``now − window_s`` to the last."""
    t1, c1 = points[-1]
    t0, c0 = points[0]
    for t, c in points:
        if t <= now - window_s + 1e-9:
            t0, c0 = t, c
    return max(0.0, (c1 - c0) / (t1 - t0)) if t1 > t0 else 0.0


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of rate against time (0 with fewer than three points)."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mr = sum(r for _, r in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var <= 0:
        return 0.0
    return sum((t - mt) * (r - mr) for t, r in points) / var


def _burst(rates: list[tuple[float, float, float]], *, now: float, cap: float,
           absorb_s: float = 0.0) -> float:
    """The highest peak-to-mean ratio of the interval rates inside one minute, over the last
    few minutes (1 when the samples are a minute or more apart: nothing to see inside),
    each peak discounted by the queueing ``absorb_s`` allows over its interval."""
    best = 1.0
    for k in range(_BURST_MINUTES):
        lo, hi = now - 60.0 * (k + 1), now - 60.0 * k
        inside = [(r, d) for t, r, d in rates if lo <= t < hi and d < 60.0]
        if len(inside) < 2:
            continue
        total_s = sum(d for _, d in inside)
        mean = sum(r * d for r, d in inside) / total_s if total_s > 0 else 0.0
        if mean > 0:
            for r, d in inside:
                best = max(best, 1.0 + (r / mean - 1.0) * d / (d + absorb_s))
    return min(max(best, 1.0), cap) if math.isfinite(best) else cap

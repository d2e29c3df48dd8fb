"""Synthetic traffic for the twin: a diurnal pattern with bursts, split across deployments.

Why: the embedded fleet must look alive (low at night, peaks in business
hours, occasional bursts), and evaluations need reproducible load.

The default hourly profile follows the design notes: the lowest QPS at
02:00–04:00 (20–30), a morning peak near 300 QPS, the secondary low at
14:00–16:00 (40–60), an evening peak, then the night decline. Token counts are
lognormal (prompt median 128 tokens, output median 12): short chat and
completion turns, sized so that the default fleet serves the profile's
300 QPS peak at roughly 55 % of its capacity (the Azure code trace, with
~2 k-token prompts, is replayed through ``core.sim.trace`` instead).

Invariants: arrivals are sorted and fall inside the window asked for;
``arrivals(a, b)`` and ``arrivals(b, c)`` together equal ``arrivals(a, c)``
(the process is generated per hour of simulated time from a seed that
depends only on the source's seed and that hour), so chunking never changes
the traffic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from core.errors import ValidationError

# Expected fleet QPS at each hour of the day (UTC + offset), interpolated linearly.
DEFAULT_HOURLY_QPS: tuple[float, ...] = (
    70, 45, 30, 25, 28, 40, 70, 130, 200, 260, 295, 300,
    270, 180, 70, 55, 90, 170, 240, 275, 250, 190, 130, 95,
)
_BLOCK_S = 3600


@dataclass(frozen=True, slots=True)
class Arrivals:
    """Requests arriving in a window: epoch times (sorted) and token counts."""

    times: np.ndarray  # float64 epoch seconds
    prefill_tokens: np.ndarray  # int64
    decode_tokens: np.ndarray  # int64

    def __len__(self) -> int:
        return int(self.times.shape[0])

    @classmethod
    def empty(cls) -> Arrivals:
        return cls(np.empty(0), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))

    @classmethod
    def concat(cls, parts: Sequence[Arrivals]) -> Arrivals:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(np.concatenate([p.times for p in parts]),
                   np.concatenate([p.prefill_tokens for p in parts]),
                   np.concatenate([p.decode_tokens for p in parts]))

    def window(self, start: float, end: float) -> Arrivals:
        """The arrivals in ``[start, end)`` (``times`` must be sorted)."""
        lo, hi = np.searchsorted(self.times, [start, end], side="left")
        return Arrivals(self.times[lo:hi], self.prefill_tokens[lo:hi], self.decode_tokens[lo:hi])


class ArrivalSource(Protocol):
    """Anything that yields the requests arriving in a time window."""

    def arrivals(self, start: float, end: float) -> Arrivals:
        """Requests arriving in ``[start, end)``, sorted by time."""
        ...


@dataclass(frozen=True, slots=True)
class TokenDistribution:
    """Lognormal prompt and output lengths (median and σ of the log), clipped."""

    prompt_median: float = 128.0
    prompt_sigma: float = 0.8
    prompt_max: int = 2048
    output_median: float = 12.0
    output_sigma: float = 0.7
    output_max: int = 512

    def __post_init__(self) -> None:
        for name in ("prompt_median", "output_median", "prompt_sigma", "output_sigma"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValidationError(f"traffic.tokens.{name}", "must be a number > 0")
        if self.prompt_max < 1 or self.output_max < 1:
            raise ValidationError("traffic.tokens", "maxima must be ≥ 1")

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        prompt = rng.lognormal(math.log(self.prompt_median), self.prompt_sigma, n)
        output = rng.lognormal(math.log(self.output_median), self.output_sigma, n)
        return (np.clip(np.rint(prompt), 1, self.prompt_max).astype(np.int64),
                np.clip(np.rint(output), 1, self.output_max).astype(np.int64))


class DiurnalTraffic:
    """Poisson arrivals whose rate follows an hourly profile, with random bursts."""

    def __init__(
        self,
        *,
        hourly_qps: Sequence[float] = DEFAULT_HOURLY_QPS,
        scale: float = 1.0,
        utc_offset_h: float = 0.0,
        bursts_per_hour: float = 1.0,
        burst_factor: tuple[float, float] = (1.2, 1.8),
        burst_duration_s: tuple[float, float] = (30.0, 240.0),
        tokens: TokenDistribution | None = None,
        seed: int = 0,
    ) -> None:
        if len(hourly_qps) != 24:
            raise ValidationError("traffic.hourly_qps", "needs 24 values, one per hour")
        values = np.array([float(v) for v in hourly_qps])
        if not np.isfinite(values).all() or (values < 0).any():
            raise ValidationError("traffic.hourly_qps", "values must be finite and ≥ 0")
        if not math.isfinite(scale) or scale < 0:
            raise ValidationError("traffic.scale", "must be a finite number ≥ 0")
        if not math.isfinite(bursts_per_hour) or bursts_per_hour < 0:
            raise ValidationError("traffic.bursts_per_hour", "must be ≥ 0")
        if not (1.0 <= burst_factor[0] <= burst_factor[1]):
            raise ValidationError("traffic.burst_factor", "must be (low, high) with 1 ≤ low ≤ high")
        if not (0 < burst_duration_s[0] <= burst_duration_s[1]):
            raise ValidationError("traffic.burst_duration_s", "must be (low, high), 0 < low ≤ high")
        if not isinstance(seed, int) or seed < 0:
            raise ValidationError("traffic.seed", "must be an integer ≥ 0")
        # Anchors at every hour plus the wrap-around to midnight for np.interp.
        self._anchor_h = np.arange(25, dtype=np.float64)
        self._anchor_qps = np.append(values, values[0]) * scale
        self._offset_s = utc_offset_h * 3600.0
        self._bursts_per_hour = bursts_per_hour
        self._burst_factor = burst_factor
        self._burst_duration = burst_duration_s
        self._tokens = tokens or TokenDistribution()
        self._seed = seed
        self._blocks: dict[int, Arrivals] = {}

    def rate(self, t: np.ndarray | float) -> np.ndarray:
        """Expected QPS at epoch time(s) ``t``, bursts excluded."""
        hour = np.mod((np.asarray(t, dtype=np.float64) + self._offset_s) / 3600.0, 24.0)
        return np.interp(hour, self._anchor_h, self._anchor_qps)

    def arrivals(self, start: float, end: float) -> Arrivals:
        if end <= start:
            return Arrivals.empty()
        first, last = math.floor(start / _BLOCK_S), math.floor((end - 1e-9) / _BLOCK_S)
        parts = [self._block(b).window(start, end) for b in range(first, last + 1)]
        return Arrivals.concat(parts)

    def _block(self, block: int) -> Arrivals:
        cached = self._blocks.get(block)
        if cached is not None:
            return cached
        rng = np.random.default_rng([self._seed, block + (1 << 40)])
        t0 = float(block * _BLOCK_S)
        seconds = t0 + np.arange(_BLOCK_S, dtype=np.float64)
        rate = self.rate(seconds + 0.5)
        for _ in range(rng.poisson(self._bursts_per_hour)):
            begin = rng.uniform(0, _BLOCK_S)
            length = rng.uniform(*self._burst_duration)
            factor = rng.uniform(*self._burst_factor)
            lo, hi = int(begin), min(_BLOCK_S, int(begin + length) + 1)
            rate[lo:hi] *= factor
        counts = rng.poisson(rate)
        times = np.repeat(seconds, counts) + rng.random(int(counts.sum()))
        times.sort()
        prompt, output = self._tokens.sample(rng, times.shape[0])
        arrivals = Arrivals(times, prompt, output)
        if len(self._blocks) >= 2:
            self._blocks.pop(next(iter(self._blocks)))
        self._blocks[block] = arrivals
        return arrivals


def constant_traffic(qps: float, *, tokens: TokenDistribution | None = None,
                     seed: int = 0) -> DiurnalTraffic:
    """Poisson arrivals at a constant ``qps``, without bursts."""
    return DiurnalTraffic(hourly_qps=(qps,) * 24, bursts_per_hour=0.0, tokens=tokens, seed=seed)


def assign_deployments(count: int, *, weights: np.ndarray, rng: np.random.Generator
                       ) -> np.ndarray:
    """Split ``count`` requests across deployments in proportion to ``weights``."""
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum()
    if w.size == 0 or total <= 0:
        raise ValidationError("traffic.weights", "at least one deployment needs a weight > 0")
    cumulative = np.cumsum(w / total)
    cumulative[-1] = 1.0
    return np.searchsorted(cumulative, rng.random(count), side="right").clip(0, w.size - 1)


class RateReplay:
    """Poisson arrivals at rates read from a series: replays recent traffic (feedback, §3.7).

    ``times`` (ascending epoch seconds) and ``rates`` (req/s) define a step
    function: the rate at ``t`` is that of the latest sample at or before ``t``
    (the first sample's before it). Deterministic for a seed and window.
    """

    def __init__(self, times: Sequence[float], rates: Sequence[float], *,
                 tokens: TokenDistribution | None = None, seed: int = 0) -> None:
        t = np.asarray(times, dtype=np.float64)
        r = np.asarray(rates, dtype=np.float64)
        if t.size == 0 or t.shape != r.shape:
            raise ValidationError("traffic.rates", "needs one rate per time, at least one")
        if not np.isfinite(r).all() or (r < 0).any():
            raise ValidationError("traffic.rates", "rates must be finite and ≥ 0")
        if (np.diff(t) < 0).any():
            raise ValidationError("traffic.times", "must be ascending")
        self._t, self._r = t, r
        self._tokens = tokens or TokenDistribution()
        self._seed = seed

    def rate(self, t: np.ndarray | float) -> np.ndarray:
        i = np.searchsorted(self._t, np.asarray(t, dtype=np.float64), side="right") - 1
        return self._r[np.clip(i, 0, self._r.size - 1)]

    def arrivals(self, start: float, end: float) -> Arrivals:
        if end <= start:
            return Arrivals.empty()
        rng = np.random.default_rng([self._seed, int(start * 1000) & ((1 << 62) - 1)])
        first = math.floor(start)
        seconds = np.arange(first, math.ceil(end), dtype=np.float64)
        counts = rng.poisson(self.rate(seconds + 0.5))
        times = np.repeat(seconds, counts) + rng.random(int(counts.sum()))
        times = np.sort(times[(times >= start) & (times < end)])
        prompt, output = self._tokens.sample(rng, times.shape[0])
        return Arrivals(times, prompt, output)

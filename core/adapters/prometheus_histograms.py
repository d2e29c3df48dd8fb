"""Histograms from Prometheus' cumulative ``le`` buckets, and vLLM's two ITL names.

Why a module of its own: the Prometheus adapter reads four vLLM histograms the
same way; the inter-token latency one exists under two names (current vLLM:
``vllm:inter_token_latency_seconds``; releases before it:
``vllm:time_per_output_token_seconds``), and a fleet mid-upgrade has both.
Invariants: counts are per bucket (not cumulative), never negative; a
histogram no series exports is None (unknown), never an empty one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from core.telemetry import ITL_BUCKETS_S, Histogram

DeploymentKey = tuple[str, str]  # (namespace, model)


# vLLM's inter-token latency histogram, current name first; releases before it exported
# ``time_per_output_token`` (one server exports one of them).
ITL_METRICS = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")


def itl_of(buckets: Mapping[str, Mapping[DeploymentKey, Mapping[str, float]]],
           totals: Mapping[str, float], key: DeploymentKey) -> Histogram | None:
    """The inter-token latency histogram under either name; None where neither is
    exported (unknown, not zero)."""
    for metric in ITL_METRICS:
        cumulative = buckets.get(metric, {}).get(key)
        if cumulative:
            return histogram_of(cumulative, default_bounds=ITL_BUCKETS_S,
                                total_sum=totals.get(f"{metric}_sum", 0.0))
    return None


def histogram_of(cumulative: Mapping[str, float], *, default_bounds: tuple[float, ...],
                 total_sum: float) -> Histogram:
    """Per-bucket counts from Prometheus' cumulative ``le`` buckets."""
    if not cumulative:
        return Histogram(default_bounds, (0,) * (len(default_bounds) + 1), 0.0)
    points = sorted((float(le), value) for le, value in cumulative.items())
    if not math.isinf(points[-1][0]):
        points.append((math.inf, points[-1][1]))
    bounds = tuple(le for le, _ in points[:-1])
    counts: list[int] = []
    previous = 0.0
    for _, value in points:
        counts.append(max(0, round(value - previous)))
        previous = max(previous, value)
    return Histogram(bounds, tuple(counts), total_sum)

"""History charts from Prometheus range queries, when the console reads a real Prometheus.

Why: Prometheus is the fleet's time-series database. Storing every sample of every
GPU in SQL to draw a 30-day chart (about 4 GB a day at 5,000 GPUs) duplicates it
with the wrong tool; with Prometheus configured, the Overview's history comes from
``/api/v1/query_range`` over the series the shipped recording rules
(``deploy/prometheus/rules.yml``) name, and the store keeps only what decisions need.

Invariants:
- a chart never asks for more than ``max_points`` points: the step is the range
  divided into ``max_points - 1`` whole seconds, at least ``min_step_s`` (and a
  caller's own step is widened to that, never narrowed);
- a point is the mean over its step (``avg_over_time``), like the store's bucket
  means, once the step is at least ``min_window_s`` (a few scrapes); a finer step
  reads the series as it is at each instant (Prometheus' lookback);
- a step with no data is left out (NaN is unknown, not zero); a store metric with no
  Prometheus counterpart (cost, TOPS/W need the cluster's layout) is refused with a
  ``ValidationError`` naming it, and callers read those from the store.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from core.errors import ValidationError

# The store's fleet metric (``core.monitor.metric_points``) → the PromQL that gives it.
HISTORY_QUERIES: Mapping[str, str] = MappingProxyType({
    "qps_1m": "fleet:vllm_requests:rate1m",
    "success_rate": "fleet:vllm_request_success:ratio_rate5m",
    # The Overview's p99 is the worst model's, as the monitor stores it.
    "p99_ms": "1000 * max(namespace_model_name:vllm_e2e_request_latency_seconds:p99_5m)",
    "power_w": "sum(DCGM_FI_DEV_POWER_USAGE)",
    "queue_waiting": "fleet:vllm_num_requests_waiting:sum",
})
_SERIES_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


class RangeQueries(Protocol):
    def query_range(self, expr: str, *, start: float, end: float, step: float
                    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]: ...


def range_step(*, start: float, end: float, max_points: int, step: float | None = None,
               min_step_s: float = 1.0) -> float:
    """The step (whole seconds) that keeps ``[start, end]`` within ``max_points``."""
    if max_points < 2:
        raise ValidationError("max_points", "must be at least 2")
    fit = math.ceil(max(end - start, 0.0) / (max_points - 1))
    return float(max(fit, math.ceil(step or 0.0), math.ceil(min_step_s), 1))


def range_expr(expr: str, *, step: float, min_window_s: float) -> str:
    """``expr`` averaged over each step (a subquery unless it is one recorded series)."""
    if step < min_window_s:
        return expr
    window = f"{step:g}s"
    if _SERIES_NAME.fullmatch(expr):
        return f"avg_over_time({expr}[{window}])"
    resolution = f"{max(1.0, math.ceil(step / 10)):g}s"
    return f"avg_over_time(({expr})[{window}:{resolution}])"


def range_series(client: RangeQueries, metric: str, *, start: float, end: float,
                 step: float | None = None, max_points: int = 500, min_step_s: float = 1.0,
                 min_window_s: float = 60.0) -> list[tuple[float, float]]:
    """(ts, value) points of the fleet ``metric`` over ``[start, end]``, oldest first,
    from one range query; ``TransientError`` when Prometheus does not answer."""
    expr = HISTORY_QUERIES.get(metric)
    if expr is None:
        raise ValidationError("metric", f"{metric!r} has no Prometheus series; expected "
                                        f"one of {', '.join(sorted(HISTORY_QUERIES))}")
    if end < start:
        return []
    width = range_step(start=start, end=end, max_points=max_points, step=step,
                       min_step_s=min_step_s)
    result = client.query_range(range_expr(expr, step=width, min_window_s=min_window_s),
                                start=start, end=end, step=width)
    if not result:
        return []
    # The expressions aggregate to one series; a rule file recording it twice (two
    # label sets) would give more: the one with the most points is the chart's.
    _, values = max(result, key=lambda r: len(r[1]))
    return [(t, v) for t, v in sorted(values) if math.isfinite(v)][:max_points]

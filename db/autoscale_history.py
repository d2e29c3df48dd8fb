"""The ``slo`` autoscaler's daily pattern: a deployment's stored request rate a day back.

``core.autoscale_forecast`` asks for the mean rate of a deployment over a span of
time one day ago (``DailyLookup``); the monitor stores ``qps_1m`` per model every
sample (with roll-ups for older ranges), so this reads that series. No stored
point in the span is None (unknown: the forecast then leaves the daily pattern
out and says so), never 0.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from core.monitor import model_key
from db import metrics


def daily_rate_lookup(factory: sessionmaker[Session]
                      ) -> Callable[[str, float, float], float | None]:
    """A ``DailyLookup`` over the store's ``qps_1m`` series ("namespace/model" keys)."""

    def lookup(deployment: str, since: float, until: float) -> float | None:
        model = deployment.split("/", 1)[-1]
        with factory() as s:
            points = metrics.series(s, metric="qps_1m", key=model_key(model), since=since,
                                    until=until)
        values = [v for _, v in points]
        return sum(values) / len(values) if values else None

    return lookup

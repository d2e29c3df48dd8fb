"""The daily pattern the ``slo`` forecast reads: the stored rate of a deployment a day back."""

from __future__ import annotations

from core.autoscale_forecast import Forecaster
from core.monitor import model_key
from core.ports import MetricPoint
from core.slo_settings import SloSettings
from db import metrics
from db.autoscale_history import daily_rate_lookup
from tests.db.conftest import Store

DAY = 86_400.0
NOW = 1_800_000_000.0


def test_the_rate_a_day_back_is_read_from_the_stored_series(store: Store) -> None:
    with store.factory.begin() as s:
        metrics.add_samples(s, [MetricPoint(ts=NOW - DAY + t, metric="qps_1m",
                                            key=model_key("coder"), value=10.0 + t / 30)
                                for t in range(-120, 181, 30)])
    lookup = daily_rate_lookup(store.factory)
    then = lookup("default/coder", NOW - DAY - 60, NOW - DAY)
    ahead = lookup("default/coder", NOW - DAY + 60, NOW - DAY + 120)
    assert then is not None and ahead is not None and ahead > then
    assert lookup("default/other", NOW - DAY - 60, NOW - DAY) is None  # unknown, not 0
    # The forecast scales today's rate by how the same horizon went a day ago.
    f = Forecaster(SloSettings(daily_weight=1.0, horizon_s=120), daily=lookup)
    for i in range(12):
        f.observe("default/coder", now=NOW - 165 + 15 * i, requests_total=150.0 * i)
    fc = f.forecast("default/coder", now=NOW)
    assert fc is not None and fc.daily_rps is not None and fc.daily_rps > fc.recent_rps

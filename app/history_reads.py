"""The console's cached history reads: a chart's series from the store (the roll-up
tier that fits its range, averaged in SQL) or, with Prometheus configured, from one
range query. ``app.services.fleet_series`` picks the source and keys the cache.

Each result is cached (``st.cache_data``) under its source, series, range and the
range's end in refresh intervals (``app.history.refresh_s``), so one open tab reads a
30-day chart once every 5 minutes, not on every rerun; while the backfill writes, its
progress is part of the key and the charts fill in batch by batch. The factory and
the adapter are passed with a leading underscore: they are used, never hashed.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy.orm import Session, sessionmaker

from core.retention_settings import RetentionSettings
from db import metrics


def _frame(points: list[tuple[float, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(points, columns=["ts", "value"])
    frame["time"] = pd.to_datetime(frame["ts"], unit="s", utc=True)
    return frame


@st.cache_data(ttl=600, max_entries=256, show_spinner=False)
def store_series(_factory: sessionmaker[Session], store_url: str, metric: str, key: str, *,
                 hours: float, until: float, retention: RetentionSettings,
                 written: int) -> pd.DataFrame:
    """``[until - hours, until]`` of one stored series, at most ``chart_max_points``
    points. ``store_url`` and ``written`` (the backfill's progress) key the cache; a
    store error propagates, and is not cached."""
    with _factory() as s:
        return _frame(metrics.series(s, metric=metric, key=key, since=until - hours * 3600,
                                     until=until, retention=retention,
                                     max_points=retention.chart_max_points))


@st.cache_data(ttl=600, max_entries=64, show_spinner=False)
def prometheus_series(_prometheus: Any, source: str, metric: str, *, hours: float,
                      until: float, max_points: int) -> pd.DataFrame:
    """The same from Prometheus (``PrometheusMetrics.range_series``); ``source`` keys
    the cache; ``TransientError`` when it does not answer (not cached)."""
    return _frame(_prometheus.range_series(metric, start=until - hours * 3600, end=until,
                                           max_points=max_points))

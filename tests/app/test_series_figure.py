"""The Overview's line charts: the series, and SPEC's QPS risk bands behind QPS."""

from __future__ import annotations

import pandas as pd

from app.widgets.charts import QPS_BANDS, series_figure


def _frame(values: list[float]) -> pd.DataFrame:
    frame = pd.DataFrame({"ts": [1.7e9 + 60 * i for i in range(len(values))],
                          "value": values})
    frame["time"] = pd.to_datetime(frame["ts"], unit="s", utc=True)
    return frame


def test_qps_bands_reach_just_above_the_busiest_point_and_are_labelled() -> None:
    fig = series_figure(_frame([10.0, 120.0, 80.0]), title="QPS", unit="req/s",
                        qps_bands=True)
    shapes = fig.layout.shapes
    # Peak 120: safe, caution and high risk are drawn; "do not update" (from 200) is not.
    assert [(s.y0, s.y1) for s in shapes] == [(0, 50), (50, 100), (100, 138.0)]
    assert [s.fillcolor for s in shapes] == [b[2] for b in QPS_BANDS[:3]]
    assert all(s.xref == "x domain" and (s.x0, s.x1) == (0, 1) for s in shapes)
    assert [a.text for a in fig.layout.annotations] == ["safe", "caution", "high risk"]
    assert list(fig.data[0].y) == [10.0, 120.0, 80.0]
    assert fig.layout.title.text == "QPS" and fig.layout.yaxis.title.text == "req/s"


def test_a_quiet_fleet_still_shows_the_safe_and_caution_bands() -> None:
    fig = series_figure(_frame([1.0, 2.0]), title="QPS", unit="req/s", qps_bands=True)
    assert [(s.y0, s.y1) for s in fig.layout.shapes] == [(0, 50), (50, 60)]


def test_other_series_have_no_bands_and_keep_a_fixed_range_when_given() -> None:
    fig = series_figure(_frame([0.99, 1.0]), title="Success", unit="",
                        y_range=(0.0, 1.02))
    assert not fig.layout.shapes and not fig.layout.annotations
    assert tuple(fig.layout.yaxis.range) == (0.0, 1.02)
    empty = series_figure(_frame([]), title="Power", unit="W")
    assert len(empty.data) == 1 and not empty.layout.shapes

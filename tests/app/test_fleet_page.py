"""AppTest: the Fleet page summarizes, filters, searches and pages the fleet, and shows MPS
layouts only for the nodes chosen; at 5,000 GPUs it shows a page of the table, not all."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app import services
from app.widgets import fleet as fw
from tests.app.conftest import open_page

BIG_FLEET = "[fleet]\nH100 = 200\nA100 = 425\ngpus_per_node = 8\n"


def _table(at: AppTest) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "threads used %" in d.value.columns)


def _frames_with(at: AppTest, column: str) -> list[pd.DataFrame]:
    return [d.value for d in at.dataframe if column in d.value.columns]


def _layout_charts(at: AppTest) -> list[set[str]]:
    """The GPUs (``node/gpuN``) each MPS layout chart on the page draws."""
    charts = []
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        if spec["layout"].get("title", {}).get("text") == "MPS layout per GPU":
            charts.append({str(y).split(" ")[0] for trace in spec["data"]
                           for y in trace["y"]})
    return charts


@pytest.fixture()
def big_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(BIG_FLEET, encoding="utf-8")
    monkeypatch.setenv("GSC_SETTINGS_FILE", str(path))
    monkeypatch.setenv("GSC_BACKFILL_HOURS", "0")


def test_default_fleet_shows_summary_heatmap_busiest_and_no_layout_until_chosen() -> None:
    at = open_page("fleet")
    (summary,) = _frames_with(at, "unhealthy GPUs")
    assert set(zip(summary["pool"], summary["type"], strict=True)) == {("H100", "H100"),
                                                                      ("A100", "A100")}
    assert summary["GPUs"].sum() == 12 and summary["nodes"].sum() == 12
    (busiest,) = [f for f in _frames_with(at, "utilization") if "memory total GiB"
                  not in f.columns]
    assert len(busiest) == fw.BUSIEST and busiest["utilization"].is_monotonic_decreasing
    assert len(_table(at)) == 12
    assert any(c.value == "Refreshes every 5 s." for c in at.caption)
    charts = [str(c.proto.spec) for c in at.get("plotly_chart")]
    assert any(t["type"] == "heatmap" for c in charts for t in json.loads(c)["data"])
    assert not _layout_charts(at)

    at.multiselect(key=fw.LAYOUT_NODES_KEY).set_value(["h100-0", "a100-3"])
    at.run()
    assert not at.exception
    (layout,) = _layout_charts(at)
    assert layout == {"h100-0/gpu0", "a100-3/gpu0"}


def test_filters_narrow_the_table_and_the_summary_stays_whole() -> None:
    at = open_page("fleet")
    at.multiselect(key=fw.TYPES_KEY).set_value(["H100"])
    at.run()
    assert set(_table(at)["type"]) == {"H100"} and len(_table(at)) == 4
    at.multiselect(key=fw.TYPES_KEY).set_value([])
    at.multiselect(key=fw.STATES_KEY).set_value(["cordoned"])
    at.run()
    assert not at.exception
    assert any("No GPU matches the filter" in i.value for i in at.info)
    assert _table(at).empty
    (summary,) = _frames_with(at, "unhealthy GPUs")
    assert summary["GPUs"].sum() == 12


def test_a_search_that_finds_one_node_shows_its_layout() -> None:
    at = open_page("fleet")
    at.text_input(key=fw.SEARCH_KEY).set_value("A100-7")
    at.run()
    assert not at.exception
    assert list(_table(at)["node"]) == ["a100-7"]
    assert any("1 nodes match" in c.value and "a100-7" in c.value for c in at.caption)
    (layout,) = _layout_charts(at)
    assert layout == {"a100-7/gpu0"}


def test_a_5000_gpu_fleet_renders_a_page_and_search_finds_a_node(big_fleet: None) -> None:
    started = time.perf_counter()
    at = open_page("fleet")
    first = time.perf_counter() - started
    assert sum(len(n.gpus) for n in services.fleet_nodes()) == 5000
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Nodes"], metrics["GPUs"]) == ("625", "5000")
    table = _table(at)
    assert len(table) == fw.NODES_PER_PAGE * 8 and table["node"].nunique() == fw.NODES_PER_PAGE
    assert at.number_input(key=fw.PAGE_KEY).value == 1
    assert not _layout_charts(at)
    # Too big to redraw the details every few seconds: they wait for the person.
    assert any("press Refresh" in c.value for c in at.caption)
    at.button(key=fw.REFRESH_KEY).click()

    at.session_state[fw.READ_KEY] = None  # a rerun that reads the cluster again
    started = time.perf_counter()
    at.run()
    rerun = time.perf_counter() - started
    print(f"\nFleet page at 5,000 GPUs (AppTest, server side): first render incl. runtime "
          f"start {first:.2f} s, rerun {rerun:.2f} s")

    at.number_input(key=fw.PAGE_KEY).set_value(25)
    at.run()
    assert not at.exception
    assert list(_table(at)["node"].unique())[-1] == "h100-199"

    at.text_input(key=fw.SEARCH_KEY).set_value("h100-123")
    at.run()
    assert not at.exception
    # The filter left one page: the page selector went back to it.
    assert at.number_input(key=fw.PAGE_KEY).value == 1
    assert list(_table(at)["node"].unique()) == ["h100-123"]
    (layout,) = _layout_charts(at)
    assert layout == {f"h100-123/gpu{g}" for g in range(8)}
    # The cordon form still lists every node.
    assert len(at.selectbox(key="fleet.node").options) == 625


def test_after_a_cordon_the_page_reads_the_cluster_again() -> None:
    at = open_page("fleet")
    at.selectbox(key="fleet.node").set_value("h100-2")
    at.text_input(key="fleet.reason").set_value("fan noise")
    at.button(key="FormSubmitter:fleet.cordon-Cordon").click()
    at.run()
    assert any(s.value == "h100-2 cordoned." for s in at.success)
    at.multiselect(key=fw.STATES_KEY).set_value(["cordoned"])
    at.run()  # at once: not the read from before the cordon
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Cordoned"] == "1"
    assert list(_table(at)["node"].unique()) == ["h100-2"]
    (summary,) = _frames_with(at, "unhealthy GPUs")
    assert summary.set_index("pool").loc["H100", "cordoned"] == 1

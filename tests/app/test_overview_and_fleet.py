"""AppTest: the Overview and Fleet pages render live data from the twin, and cordon works."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from app import services
from core.cost import fleet_cost
from tests.app.conftest import open_page


def test_overview_is_the_default_page_and_shows_live_figures_and_charts() -> None:
    at = open_page()
    assert at.title[0].value == "Overview"
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["QPS (1 m)"]) > 0
    assert metrics["Power"].endswith("kW") and float(metrics["Power"].split()[0]) > 0
    # The QPS band banner names the band's advice.
    banners = [e.value for e in (*at.success, *at.info, *at.warning, *at.error)]
    assert any("QPS" in b and ("safe" in b or "caution" in b or "risk" in b
                               or "do not update" in b) for b in banners)
    deployments = next(d.value for d in at.dataframe if "replicas" in d.value.columns)
    assert len(deployments) >= 10 and (deployments["QPS 1m"] >= 0).all()
    # History simulated at start-up (in the background) feeds the charts.
    backfill = services.runtime().backfill
    assert backfill is not None
    backfill.join(timeout=60)
    frame = services.fleet_series("qps_1m", hours=1)
    assert len(frame) >= 20 and (frame["value"] > 0).all()


def test_overview_says_metrics_unavailable_instead_of_crashing() -> None:
    at = open_page()
    rt = services.runtime()
    from core.sim.faults import metrics_down

    assert rt.twin is not None
    rt.twin.inject(metrics_down())
    rt.monitor.sample_once()
    at.run()
    assert not at.exception
    assert any("Metrics unavailable" in w.value for w in at.warning)


def test_fleet_page_lists_every_gpu_and_cordon_is_audited() -> None:
    at: AppTest = open_page("fleet")
    assert at.title[0].value == "Fleet"
    table = next(d.value for d in at.dataframe if "threads used %" in d.value.columns)
    assert len(table) == 12 and set(table["type"]) == {"H100", "A100"}
    assert {m.label: m.value for m in at.metric}["Cordoned"] == "0"

    at.selectbox(key="fleet.node").set_value("a100-7")
    at.button(key="FormSubmitter:fleet.cordon-Cordon").click()
    at.run()
    assert any("reason" in e.value for e in at.error)  # a reason is required

    at.text_input(key="fleet.reason").set_value("driver upgrade")
    at.button(key="FormSubmitter:fleet.cordon-Cordon").click()
    at.run()
    assert not at.exception
    assert any(s.value == "a100-7 cordoned." for s in at.success)
    nodes = {n.name: n for n in services.runtime().cluster.nodes()}
    assert nodes["a100-7"].schedulable is False
    from db import audit

    with services.runtime().factory() as s:
        (event,) = audit.list_audit(s, action="cordon")
    assert (event.object_id, event.reason) == ("a100-7", "driver upgrade")


def test_overview_cost_is_the_one_formula_over_the_clusters_layout_idle_included() -> None:
    at = open_page()
    rt = services.runtime()
    latest = services.monitor_state().latest
    assert latest is not None
    cost = fleet_cost(latest, rt.cluster.nodes(), services.settings().catalog)
    assert cost.cost_per_1k is not None and cost.idle_cost_per_hour > 0
    shown = {m.label: m.value for m in at.metric}["Cost / 1k inferences"]
    # The page read a sample moments earlier (the monitor may have sampled since).
    assert float(shown.removeprefix("$")) == pytest.approx(float(cost.cost_per_1k), rel=0.05)
    caption = next(c.value for c in at.caption if c.value.startswith("Cost rate"))
    assert f"for {cost.gpus_in_use} GPUs in use" in caption and "idle" in caption
    # Where the success rate comes from is said in words (the twin counts every request).
    assert "Success rate: every simulated request." in caption


def test_the_panels_of_a_page_share_one_read_of_the_twin_and_an_action_reads_it_again(
        ) -> None:
    at = open_page("overview")
    assert not at.exception, at.exception
    services.forget_nodes_read()
    read = services.nodes_this_run()
    assert services.nodes_this_run() is read  # the live panel and the gates: one read
    services.forget_nodes_read()  # what an action that changes the cluster does
    again = services.nodes_this_run()
    assert again is not read and [n.name for n in again] == [n.name for n in read]

"""The MPS planner page on the twin: proposals, diffs, the gate table, the best update time,
creating a rollout plan (and a refused one); gates fail closed when the metrics are down."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest

from app import mps_services, services
from core.auth import Actor, Forbidden, Role
from core.states import RolloutState
from db import audit, rollouts
from tests.app.conftest import open_page
from tests.integration.fake_kube import FakeKube

GATE_COLUMNS = ["gate", "value", "threshold", "result", "reason"]


def _table(at, first_column: str) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if list(d.value.columns)[:1] == [first_column])


@pytest.fixture()
def probe_every_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """No dependency outcome is reused between page loads."""
    monkeypatch.setattr(services, "HEALTH_TTL_S", 0.0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_planner_shows_proposals_diffs_and_the_gate_table_on_the_twin() -> None:
    at = open_page("mps")
    proposals = _table(at, "node")
    by_node = proposals.set_index("node")
    # The twin runs mps-4 everywhere; its H100s each hold one large model (100 % of SM
    # threads, more memory than a quarter GPU): each needs a whole GPU.
    assert (by_node.loc["h100-0", "from"], by_node.loc["h100-0", "to"]) == ("mps-4", "exclusive")
    assert "mps-4 gives each client 25 %" in by_node.loc["h100-0", "why"]
    # A node holding three tiny models is served by mps-4 as it is: no proposal for it.
    assert "a100-2" not in by_node.index
    diffs = [c.value for c in at.code if c.language == "diff"]
    assert any("+  nvidia.com/device-plugin.config: exclusive" in d for d in diffs)
    gates = _table(at, "gate")
    assert list(gates.columns) == GATE_COLUMNS
    assert len(gates) == 11 and set(gates["result"]) <= {"pass", "FAIL"}
    assert (gates["value"] != "").all() and (gates["threshold"] != "").all()
    # Fifteen minutes of backfill is not history enough for a best time.
    assert any("Best update time unknown" in w.value and "needs at least 3 days" in w.value
               for w in at.warning)
    assert any(m.label == "Fleet $/h before" for m in at.metric)


def test_creating_a_rollout_plan_stores_it_awaiting_approval_with_what_was_shown() -> None:
    at = open_page("mps")
    at.multiselect(key="mps.plan.nodes").set_value(["a100-0"])
    at.selectbox(key="mps.plan.strategy").set_value("rolling")
    at.selectbox(key="mps.plan.update_type").set_value("routine_optimization")
    at.text_input(key="mps.plan.reason").input("give llama-2-13b its full share")
    at.button(key="FormSubmitter:mps.plan-Create rollout plan").click()
    at.run()
    assert not at.exception, at.exception
    assert any("Rollout plan" in s.value and "created" in s.value for s in at.success), \
        [e.value for e in at.error]
    with services.runtime().factory() as s:
        (view,) = rollouts.list_plans(s)
        entries = [e for e in audit.list_audit(s, limit=20)
                   if e.action == "create-rollout-plan"]
    assert view.state is RolloutState.AWAITING_APPROVAL
    assert [(c.node, c.from_config, c.to_config) for c in view.plan.changes] == [
        ("a100-0", "mps-4", "mps-2")]
    assert view.gate_results["update_type"] == "routine_optimization"
    assert len(view.gate_results["checks"]) == 11
    assert "+  nvidia.com/device-plugin.config: mps-2" in view.config_diff["a100-0"]["diff"]
    (entry,) = entries
    assert entry.reason == "give llama-2-13b its full share"


def test_a_plan_that_disrupts_too_much_is_refused_with_the_reason() -> None:
    at = open_page("mps")
    # Every proposed node at once (blue-green) disrupts far more than 10 %.
    at.selectbox(key="mps.plan.strategy").set_value("blue_green")
    at.selectbox(key="mps.plan.update_type").set_value("routine_optimization")
    at.text_input(key="mps.plan.reason").input("all at once")
    at.button(key="FormSubmitter:mps.plan-Create rollout plan").click()
    at.run()
    assert not at.exception
    assert any("refused" in e.value and "predicted_disruption" in e.value
               and "allows at most 10%" in e.value for e in at.error), \
        [e.value for e in at.error]
    with services.runtime().factory() as s:
        assert rollouts.list_plans(s) == []


def test_a_viewer_may_not_create_a_rollout_plan() -> None:
    open_page("mps")
    viewer = Actor("vera", Role.VIEWER, "test")
    with pytest.raises(Forbidden):
        mps_services.create_rollout_plan(viewer, nodes=["a100-0"], strategy="rolling",
                                         update_type="routine_optimization", reason="try")
    with services.runtime().factory() as s:
        assert rollouts.list_plans(s) == []
        refused = [e for e in audit.list_audit(s, limit=20)
                   if e.action == "create-rollout-plan"]
    assert refused and refused[0].details["outcome"] == "refused"


def test_with_the_metrics_down_every_gate_on_metrics_fails_closed_and_the_page_says_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    monkeypatch.setenv("PROMETHEUS_URL", f"http://ops:hunter2@127.0.0.1:{port}")
    at = open_page()
    rt = services.runtime()
    assert rt.sampler is not None
    rt.sampler.stop()  # this test takes the sample
    rt.monitor.sample_once(persist=False)
    at.switch_page("../pages/mps.py")
    at.run()
    assert not at.exception, at.exception
    gates = _table(at, "gate").set_index("gate")
    assert gates.loc["metrics-source", "result"] == "FAIL"
    assert "unreachable" in gates.loc["metrics-source", "reason"]
    for gate in ("traffic", "error-rate", "gpu-utilization", "no-critical-alert", "qps-band"):
        assert gates.loc[gate, "result"] == "FAIL"
        assert gates.loc[gate, "value"] == "unknown"
        assert gates.loc[gate, "reason"].startswith("unknown: ")
    assert "the metrics source is down" in gates.loc["traffic", "reason"]
    closed = [e.value for e in at.error if "Update gates closed" in e.value]
    assert closed and "metrics-source" in closed[0] and "unreachable" in closed[0]
    assert not any("hunter2" in e.value for e in at.error)
    # The proposals still come: they need the cluster, not the metrics.
    assert "h100-0" in set(_table(at, "node")["node"])


@pytest.mark.usefixtures("probe_every_run")
def test_with_the_cluster_api_down_the_planner_says_so_and_the_gates_close(
        fake_cluster: FakeKube) -> None:
    at = open_page("mps")
    assert any(m.label == "Nodes to change" for m in at.metric), [e.value for e in at.error]
    fake_cluster.stop()  # the API server goes away while the console runs
    at.run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any("Could not plan MPS layouts" in e and "Kubernetes API server" in e
               for e in errors), errors
    gates = _table(at, "gate").set_index("gate")
    assert gates.loc["cluster-api", "result"] == "FAIL"
    assert gates.loc["free-capacity", "reason"].startswith("unknown: the cluster API is down")
    assert any("No proposal to roll out" in i.value for i in at.info)


@pytest.mark.usefixtures("probe_every_run")
def test_with_the_store_down_the_planner_plans_the_running_fleet_and_says_what_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{store / 'console.db'}")
    monkeypatch.setenv("GSC_BACKFILL_HOURS", "0")
    at = open_page()
    rt = services.runtime()
    assert rt.sampler is not None
    rt.sampler.stop()
    shutil.rmtree(store)  # the database file, its journal and its directory are gone
    rt.engine.dispose()
    at.switch_page("../pages/mps.py")
    at.run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any("Could not read the queued requests" in e for e in errors), errors
    assert any("Could not read the stored QPS history" in e for e in errors), errors
    # The cluster still answers: the proposals are there, and the 15-minute figures that
    # live in the store are unknown, saying so.
    assert "h100-0" in set(_table(at, "node")["node"])
    gates = _table(at, "gate").set_index("gate")
    assert gates.loc["qps-peak-15m", "reason"].startswith("unknown: the store is down")


def test_a_big_fleet_opens_at_most_ten_proposals_and_lists_them_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.toml"
    path.write_text("[fleet]\nH100 = 8\nA100 = 16\ngpus_per_node = 2\n", encoding="utf-8")
    monkeypatch.setenv("GSC_SETTINGS_FILE", str(path))
    at = open_page("mps")
    opened = at.multiselect(key="mps.proposal.open")
    assert len(opened.options) > 10  # every proposal can be opened …
    assert len(opened.value) == 10  # … ten at a time


def test_the_page_reuses_a_plan_only_while_the_layout_it_was_made_for_stands() -> None:
    from dataclasses import replace

    at = open_page("mps")
    assert not at.exception, at.exception
    nodes = services.fleet_nodes()
    # Utilization and power move with every reading: the same layout, the same plan.
    busy = tuple(replace(n, gpus=tuple(replace(g, utilization=1.0, power_w=g.power_w + 50)
                                       for g in n.gpus)) for n in nodes)
    assert mps_services.layout_signature(busy) == mps_services.layout_signature(nodes)
    # Another device-plugin config, a cordon or a slice less: another layout.
    first = nodes[0]
    changed = [replace(first, device_plugin_config="exclusive"),
               replace(first, schedulable=not first.schedulable),
               replace(first, gpus=(replace(first.gpus[0], slices=first.gpus[0].slices[1:]),
                                    *first.gpus[1:]))]
    for other in changed:
        assert other != first
        assert mps_services.layout_signature((other, *nodes[1:])) != \
            mps_services.layout_signature(nodes)
    plan = mps_services.page_proposals(include_queue=False)
    assert mps_services.page_proposals(include_queue=False) is plan
    services.forget_nodes_read()
    assert {p.node for p in mps_services.page_proposals(include_queue=False).proposals} == \
        {p.node for p in plan.proposals}


def test_a_layout_signature_is_kept_for_the_same_read_only() -> None:
    """The 5,000-GPU signature is computed once per read: the same tuple gives the kept
    value; an equal but new read, or a list (which could change), is computed again."""
    calls: list[int] = []

    def compute(ns: object) -> int:
        calls.append(1)
        return len(calls)

    read = ("a", "b")
    assert services.per_read("t", read, compute) == 1
    assert services.per_read("t", read, compute) == 1
    assert services.per_read("t", tuple(["a", "b"]), compute) == 2  # equal, not the same
    listed = ["a", "b"]
    assert services.per_read("u", listed, compute) == 3
    listed.append("c")
    assert services.per_read("u", listed, compute) == 4
    assert services.per_read("t", read, compute) == 5  # the kept read was replaced

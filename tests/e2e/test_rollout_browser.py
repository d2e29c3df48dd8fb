"""The signature flow in a real browser (Playwright driving Debian's Chromium) against the
running console on the twin: open the MPS planner, create a plan, see its gates, approve
it, watch it progress node by node; and a failing canary (a twin fault) rolls itself back.

The plans are emergency fixes, whose gates (SPEC §4.2: max QPS 1000, any time, no
QPS-aware band) the twin's traffic passes at any hour; a routine optimization would
wait for its 02:00-04:00 UTC window and for traffic under 50 QPS. The twin's day is
flat here (``[sim] hourly_qps``, 100 QPS, no bursts), so the autoscaler sizes the same
fleet whenever the test runs and the emergency fix's free-capacity gate (≥ 10 %) sees
the same 28-31 % free. A CI run at 12:08 UTC (the built-in day near its peak) found
under 10 % free and waited 300 s on that gate: its autoscaler had booked replicas for
bursts it misread from late readings (fixed: rates are timed by the readings).
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.console import console_with_settings

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
SETTINGS = """
# Spare A100 nodes: room for the copies a migration makes before a node is drained, even
# after the autoscaler's first decisions took a fresh GPU or two (a CI run's rolling update
# found no room for a copy with 12).
[fleet]
H100 = 4
A100 = 14

# SPEC's 1 h canary analysis, cut to the shortest allowed; a quick plugin restart and pod
# start (migration copies and returned replicas wait for Running).
[rollouts.canary]
analysis_window_s = 60
# The fault below makes every iteration 4× as long; how slow that makes p99 depends on
# the twin's traffic (1.7 s at 70 QPS, under the default 2,000 ms): a bound well under the
# faulted p99 at any traffic level.
max_p99_ms = 600

[sim]
device_plugin_restart_s = 2
pod_startup_s = 5
# The same traffic at every hour, so the gates see the same fleet whenever the test runs.
hourly_qps = 100
bursts_per_hour = 0
"""


CONSOLE_DIR: list[Path] = []  # where the module's console keeps its store and log


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("rollout")
    CONSOLE_DIR[:] = [base]
    with console_with_settings(base, SETTINGS, {"GSC_BACKFILL_HOURS": "0.25",
                                                "GSC_MONITOR_INTERVAL_S": "5"}) as url:
        yield url


def diagnosis() -> str:
    """What the console did, for a failure message: its last audit events (the
    controller's postponements say which gate failed) and the tail of its log."""
    if not CONSOLE_DIR:
        return ""
    base = CONSOLE_DIR[0]
    lines = []
    try:
        with sqlite3.connect(f"file:{base / 'console.db'}?mode=ro", uri=True,
                             timeout=5) as db:
            rows = db.execute("SELECT at, actor, action, object_id, reason, "
                              "substr(details, 1, 600) FROM audit_events "
                              "ORDER BY id DESC LIMIT 20").fetchall()
        lines += ["audit (newest first):", *(" | ".join(map(str, r)) for r in rows)]
    except sqlite3.Error as exc:
        lines.append(f"audit unreadable: {exc}")
    log = base / "streamlit.log"
    if log.exists():
        lines += ["console log (tail):", log.read_text(errors="replace")[-3000:]]
    return "\n".join(lines)


def choose(page: Any, label: str, option: str, *, nth: int = 0) -> None:
    """Pick ``option`` in a select box (tried again if a rerun closed the list)."""
    for attempt in range(4):
        page.get_by_label(label).nth(nth).click()
        choice = page.get_by_role("option", name=option, exact=True)
        try:
            choice.wait_for(timeout=5_000)
            choice.click()
            return
        except Exception:
            if attempt == 3:
                raise
            page.keyboard.press("Escape")


def state_of(page: Any) -> str:
    metric = page.get_by_test_id("stMetric").filter(has_text="State").first
    return metric.get_by_test_id("stMetricValue").inner_text().strip()


def wait_for_state(page: Any, wanted: set[str], *, timeout_s: float, seen: list[str]) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = state_of(page)
        except Exception:  # the fragment is re-rendering
            state = ""
        text = page.get_by_test_id("stProgress").first.inner_text() \
            if page.get_by_test_id("stProgress").count() else ""
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if state in wanted:
            return state
        time.sleep(1)
    raise AssertionError(f"the plan stayed {state_of(page)!r}; progress seen: {seen}\n"
                         f"{diagnosis()}")


def pick_nodes(page: Any) -> list[str]:
    """Keep the first two proposed A100 nodes of the form's multiselect (their small
    models have room elsewhere while one is changed), removing the others."""
    select = page.get_by_test_id("stForm").get_by_test_id("stMultiSelect")
    tags = select.locator("[data-tag]")
    tags.first.wait_for(timeout=30_000)
    proposed = [tags.nth(i).get_attribute("aria-label") for i in range(tags.count())]
    keep = [n for n in proposed if n and n.startswith("a100-")][:2]
    assert len(keep) == 2, proposed
    for node in proposed:
        if node not in keep:
            select.get_by_label(f"Remove {node}", exact=True).click()
    return keep


def create_plan(page: Any, url: str, *, strategy: str, reason: str) -> int:
    from playwright.sync_api import expect

    page.goto(f"{url}/mps")
    expect(page.get_by_role("heading", name="MPS planner")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("gates").first).to_be_visible(timeout=30_000)  # the gate report
    pick_nodes(page)
    choose(page, "Strategy", strategy)
    choose(page, "Update type", "emergency fix", nth=1)
    page.get_by_label("Reason (kept in the audit trail)").fill(reason)
    page.get_by_role("button", name="Create rollout plan").click()
    created = page.get_by_text(re.compile(r"Rollout plan \d+ .*created"))
    expect(created).to_be_visible(timeout=30_000)
    return int(re.search(r"Rollout plan (\d+)", created.inner_text()).group(1))


def approve(page: Any, url: str, plan_id: int) -> None:
    from playwright.sync_api import expect

    page.goto(f"{url}/rollouts?plan={plan_id}")
    expect(page.get_by_role("heading", name="Rollouts")).to_be_visible(timeout=60_000)
    page.get_by_role("tab", name="Gates").click()
    expect(page.get_by_text("At creation")).to_be_visible()
    page.get_by_role("tab", name="Actions").click()
    page.get_by_text("approve", exact=True).click()
    page.get_by_label("Reason (required, goes to the audit trail)").fill("gates reviewed")
    page.get_by_text("I have checked the gates and the progress above").click()
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_text(f"Plan {plan_id}: approve applied.")).to_be_visible(timeout=30_000)


def test_a_failing_canary_rolls_itself_back_then_a_rolling_update_goes_node_by_node(
        console: str, page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    plan_id = create_plan(page, console, strategy="canary", reason="e2e canary")
    page.goto(f"{console}/rollouts?plan={plan_id}")
    expect(page.get_by_role("heading", name="Rollouts")).to_be_visible(timeout=60_000)
    caption = page.get_by_text(re.compile(r"nodes .* created by")).first.inner_text()
    nodes = re.search(r"nodes (.*?) · created by", caption).group(1).split(", ")
    assert len(nodes) == 2 and all(n.startswith("a100-") for n in nodes), nodes
    # Requests get slow: a twin fault (every iteration 4× as long) on every node, from
    # before the canary starts, so every sample of its analysis window sees it. The
    # canary's health is attributed from its deployments' telemetry (the twin has no
    # per-node request counters), so a fault on the canary node alone shows only in
    # proportion to that node's share of each deployment.
    page.get_by_text("Simulate a fault on the twin").click()  # the expander
    choose(page, "Fault", "latency_spike")
    choose(page, "Node", "(every node)")
    page.get_by_role("button", name="Start the fault").click()
    # Said inside the expander, which a rerun of the changed page may fold again.
    expect(page.get_by_text("latency_spike started on (every node)")).to_be_attached(
        timeout=30_000)
    approve(page, console, plan_id)
    seen: list[str] = []
    final = wait_for_state(page, {"rolled-back", "failed", "succeeded", "paused",
                                  "awaiting-promotion"}, timeout_s=300, seen=seen)
    page.screenshot(path=str(tmp_path / "canary.png"), full_page=True)
    assert final == "rolled-back", seen
    assert any("Rolling back" in s for s in seen) or "rolled-back" in final
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=30_000)  # analysis

    plan_id = create_plan(page, console, strategy="rolling", reason="e2e rolling")
    approve(page, console, plan_id)
    seen = []
    final = wait_for_state(page, {"succeeded", "rolled-back", "failed", "paused"},
                           timeout_s=420, seen=seen)
    page.screenshot(path=str(tmp_path / "rolling.png"), full_page=True)
    assert final == "succeeded", seen
    assert len(seen) >= 3, seen  # progress was watched moving, step by step
    assert page.get_by_text("Traceback").count() == 0

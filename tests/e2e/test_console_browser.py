"""A real browser (Playwright driving Debian's Chromium) against the running console."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.console import running_console

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def console_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Sample every 5 s and act on a 10 s window, so the autoscaler is watched acting in a
    # test-sized time (the defaults are 30 s and 60 s).
    with running_console(tmp_path_factory.mktemp("console"),
                         {"GSC_MONITOR_INTERVAL_S": "5",
                          "GSC__AUTOSCALING__UP_STABILIZATION_S": "10"}) as url:
        yield url


def test_operator_previews_a_placement_in_a_real_browser(
    console_url: str, page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page.goto(f"{console_url}/placement")
    expect(page.get_by_role("heading", name="Placement")).to_be_visible(
        timeout=30_000)
    memory = page.get_by_label("Model memory (GB)")
    memory.fill("40")
    memory.press("Tab")
    page.get_by_label("Latency SLA (ms)").fill("90")
    page.get_by_role("button", name="Preview placement").click()
    # Priority stays MEDIUM: a 40 GB model still prefers the empty H100.
    expect(page.get_by_text("placed on h100-3/gpu0")).to_be_visible(timeout=30_000)
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=30_000)
    page.screenshot(path=str(tmp_path / "placement.png"), full_page=True)
    assert (tmp_path / "placement.png").stat().st_size > 10_000


def test_a_traffic_surge_makes_the_running_console_scale_up(
    console_url: str, page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page.goto(f"{console_url}/autoscaling")
    expect(page.get_by_role("heading", name="Autoscaling")).to_be_visible(
        timeout=30_000)
    page.get_by_text("Simulate a traffic surge").click()
    page.get_by_role("button", name="Start the surge").click()
    # Said inside the expander, which a rerun of a page that changed meanwhile (the history
    # filling in) may fold again: attached is what counts.
    expect(page.get_by_text("traffic ×6 for 10 min")).to_be_attached(timeout=30_000)
    # The embedded controller samples, sees the queue, waits out the window, acts;
    # the history chart and table appear with the scale-up.
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        page.reload()
        expect(page.get_by_role("heading", name="History")).to_be_visible(
            timeout=30_000)
        if page.get_by_text("Replicas after each scaling action").count():
            break
        time.sleep(5)
    expect(page.get_by_text("Replicas after each scaling action")).to_be_visible(
        timeout=5_000)
    page.screenshot(path=str(tmp_path / "autoscaling.png"), full_page=True)
    for path, heading in (("weights", "Scheduler weights"),
                          ("costs", "Cost reports")):
        page.goto(f"{console_url}/{path}")
        expect(page.get_by_role("heading", name=heading)).to_be_visible(
            timeout=30_000)
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=30_000)
        assert page.get_by_text("Traceback").count() == 0

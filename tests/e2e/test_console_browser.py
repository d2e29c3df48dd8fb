"""A real browser (Playwright driving Debian's Chromium) against the running console."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def console_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("console") / "streamlit.log"
    store = tmp_path_factory.mktemp("store") / "console.db"
    # Sample every 5 s and act on a 10 s window, so the autoscaler is watched acting in a
    # test-sized time (the defaults are 30 s and 60 s).
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DATABASE_URL": f"sqlite:///{store}",
           "GSC_MONITOR_INTERVAL_S": "5", "GSC__AUTOSCALING__UP_STABILIZATION_S": "10"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "streamlit_app.py"),
             "--server.address", "127.0.0.1", "--server.port", str(port),
             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"console did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture()
def page() -> Iterator[Any]:
    """A page in headless Chromium (Debian's), closed after the test."""
    chromium = require_binary("chromium", "needed to drive the console in a real browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


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
    expect(page.get_by_text("traffic ×6 for 10 min")).to_be_visible(timeout=30_000)
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

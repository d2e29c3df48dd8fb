"""The Fleet page in a real browser (Playwright driving Debian's Chromium) against the
console on a 5,000-GPU twin (625 nodes × 8 GPUs): the page draws a summary and a page of
the table, a search finds nodes by name, the busiest GPUs are listed, and choosing a node
draws its MPS layout."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.console import console_with_settings

pytestmark = pytest.mark.e2e
SETTINGS = """
# 5,000 GPUs: 200 H100 and 425 A100 nodes of 8 GPUs each.
[fleet]
H100 = 200
A100 = 425
gpus_per_node = 8
"""


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # No simulated history: this test is about the Fleet page, not the charts of the past.
    with console_with_settings(tmp_path_factory.mktemp("fleet"), SETTINGS,
                               {"GSC_BACKFILL_HOURS": "0"}) as url:
        yield url


def test_fleet_page_at_5000_gpus_searches_lists_the_busiest_and_draws_a_chosen_layout(
    console: str, page: Any
) -> None:
    from playwright.sync_api import expect

    started = time.monotonic()
    page.goto(f"{console}/fleet")
    # The runtime (twin, store, controller) is built on the first visit.
    expect(page.get_by_role("heading", name="Fleet", exact=True)).to_be_visible(
        timeout=60_000)
    expect(page.get_by_test_id("stMetric").filter(has_text="GPUs").first).to_contain_text(
        "5000", timeout=60_000)
    expect(page.get_by_text("Page 1 of 25")).to_be_visible(timeout=30_000)
    print(f"\nFleet page at 5,000 GPUs in Chromium: first content (summary and a page of "
          f"the table) {time.monotonic() - started:.1f} s after the first visit")
    # A second visit finds the runtime built: what remains is the page itself.
    started = time.monotonic()
    page.reload()
    expect(page.get_by_text("Page 1 of 25")).to_be_visible(timeout=30_000)
    print(f"Fleet page at 5,000 GPUs in Chromium: first content on a reload "
          f"{time.monotonic() - started:.1f} s")
    expect(page.get_by_role("heading", name="Busiest GPUs")).to_be_visible()
    expect(page.get_by_role("heading", name="By pool and GPU type")).to_be_visible()

    search = page.get_by_label("Search nodes by name")
    search.fill("h100-12")
    search.press("Enter")
    expect(page.get_by_text("11 nodes match “h100-12”")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("h100-123", exact=False).first).to_be_visible()
    expect(page.get_by_text("Page 1 of 1")).to_be_visible(timeout=30_000)
    layouts = page.locator(".js-plotly-plot").filter(has_text="MPS layout per GPU")
    assert layouts.count() == 0  # eleven nodes found: none drawn until chosen

    chooser = page.get_by_label("Show the MPS layout of")
    chooser.click()
    chooser.fill("h100-123")
    page.get_by_role("option", name="h100-123", exact=True).click()
    page.keyboard.press("Escape")
    expect(layouts).to_have_count(1, timeout=30_000)
    expect(layouts.first).to_contain_text("h100-123/gpu7")

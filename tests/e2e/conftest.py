"""Browser fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.console import chromium


@pytest.fixture()
def page() -> Iterator[Any]:
    """A page in headless Chromium (Debian's), closed after the test."""
    with chromium() as browser:
        yield browser.new_page(viewport={"width": 1400, "height": 1100})

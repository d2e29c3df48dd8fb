"""Start the console the way `make run` does (``python -m app.serve`` on loopback) for a
browser test, wait until it answers, and stop it afterwards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_console(base: Path, env: Mapping[str, str]) -> Iterator[str]:
    """The console's URL, serving a fresh SQLite store under ``base`` with ``env`` set."""
    port = free_port()
    log = base / "streamlit.log"
    full = {**os.environ, "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": f"sqlite:///{base / 'console.db'}", **env}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.serve", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=ROOT, env=full, stdout=out,
                                stderr=subprocess.STDOUT)
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


@contextmanager
def console_with_settings(base: Path, settings_toml: str, env: Mapping[str, str]
                          ) -> Iterator[str]:
    """``running_console`` with a settings file of ``settings_toml`` (GSC_SETTINGS_FILE)."""
    settings = base / "settings.toml"
    settings.write_text(settings_toml, encoding="utf-8")
    with running_console(base, {"GSC_SETTINGS_FILE": str(settings), **env}) as url:
        yield url


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (skips, or fails under
    REQUIRE_INTEGRATION=1, when it is not installed)."""
    path = require_binary("chromium", "needed to drive the console in a real browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()

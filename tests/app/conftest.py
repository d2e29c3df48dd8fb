"""AppTest fixtures: every test gets its own store file and fresh process caches."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
import yaml
from streamlit.testing.v1 import AppTest

from tests.integration.fake_kube import FakeKube, demo_fleet, kubeconfig

ENTRY = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")


@pytest.fixture(autouse=True)
def restore_main_module() -> Iterator[None]:
    """AppTest leaves the app script as ``sys.modules["__main__"]``; put pytest's back.

    Otherwise a later test that spawns processes (multiprocessing "spawn") makes each
    child re-import the app script as its main module, and start a console there.
    """
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(autouse=True)
def temp_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'console.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("GSC_BACKFILL_HOURS", "0.25")
    # Tests drive placement passes themselves (the Placement page's button).
    monkeypatch.setenv("GSC_EMBEDDED_CONTROLLER", "0")
    monkeypatch.delenv("PROMETHEUS_URL", raising=False)
    st.cache_resource.clear()
    yield url
    st.cache_resource.clear()


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=60)
    at.run()
    if page is not None:
        at.switch_page(f"../pages/{page}.py")
        at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture()
def fake_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    """A fake Kubernetes API server with the demo fleet; the console is pointed at it."""
    fake = FakeKube(pod_start_delay_s=0.2, plugin_restart_delay_s=0.2,
                    termination_delay_s=0.1)
    url = fake.start(0)
    try:
        demo_fleet(fake)
        config = tmp_path / "kubeconfig"
        config.write_text(yaml.safe_dump(kubeconfig(url)), encoding="utf-8")
        monkeypatch.setenv("GSC_CLUSTER", "kubernetes")
        monkeypatch.setenv("KUBECONFIG", str(config))
        yield fake
    finally:
        fake.stop()

"""AppTest: drive the Placement page's form and check the decision it shows."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.app.conftest import open_page


def new_app() -> AppTest:
    return open_page("placement")


@pytest.fixture()
def app() -> AppTest:
    return new_app()


def submit(at: AppTest, **values: object) -> AppTest:
    for key, value in values.items():
        at_widget(at, key).set_value(value)
    at.button(key="FormSubmitter:placement.form-Preview placement").click()
    at.run()
    assert not at.exception
    return at


def test_page_asks_for_a_request_before_anything_is_submitted(app: AppTest) -> None:
    assert app.title[0].value == "Placement"
    assert any("Preview placement" in i.value for i in app.info)


def test_large_high_priority_request_is_shown_on_the_empty_h100(app: AppTest) -> None:
    at = submit(app, model_name="llama-70b", memory_gb=40.0, priority="HIGH", sla_ms=90.0)
    assert at.success[0].value.startswith("placed on h100-3/gpu0")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Chosen GPU"] == "h100-3/gpu0"
    assert metrics["GPU type"] == "H100"
    assert metrics["Class / MPS share"] == "large / 100 %"
    table = at.dataframe[0].value
    chosen = table[table[""] == "★"]
    assert list(chosen["gpu"]) == ["h100-3/gpu0"]
    # The rejected GPUs are listed with their reasons.
    assert (table["reason"].str.contains("insufficient|needs|free", regex=True)).any()
    codes = [c.value for c in at.code]
    assert any("sharing" not in c and "version: v1" in c for c in codes)  # exclusive config
    assert any("kind: Pod" in c and "h100-3" in c for c in codes)


def test_small_low_priority_request_shares_an_a100_and_shows_mps_env(app: AppTest) -> None:
    at = submit(app, model_name="mistral-7b", memory_gb=8.0, priority="LOW", sla_ms=2000.0)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["GPU type"] == "A100"
    assert metrics["Class / MPS share"] == "medium / 50 %"
    pod = next(c.value for c in at.code if "kind: Pod" in c.value)
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" in pod and "'50'" in pod
    assert "0=8192M" in pod


def test_impossible_request_explains_zero_of_n_and_what_would_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An operator's setting allows large models on A100s only; a 60 GB model fits none.
    monkeypatch.setenv("GSC__CLASSES__LARGE__ALLOWED", '["A100"]')
    st.cache_resource.clear()
    at = submit(new_app(), model_name="big-model", memory_gb=60.0, priority="HIGH")
    assert at.error[0].value == ("0/12 nodes fit: 8 insufficient GPU memory, "
                                 "4 GPU type or mode cannot run the class")
    advice = " ".join(m.value for m in at.markdown)
    assert "largest free GPU memory among them is" in advice
    assert "allow more GPU types for this class" in advice
    assert {m.label: m.value for m in at.metric}["Chosen GPU"] == "—"


def test_bad_input_is_refused_naming_the_field(app: AppTest) -> None:
    at = submit(app, model_name="Bad Name", memory_gb=8.0)
    assert "model_name" in at.error[0].value
    at = submit(at, model_name="ok-model", memory_gb=0.0)
    assert "model_memory_gb" in at.error[0].value
    at = submit(at, memory_gb=8.0, sla_ms=0.0)
    assert "latency_sla_ms" in at.error[0].value


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_submitted_request_is_queued_placed_and_kept_across_restarts(app: AppTest) -> None:
    for k, v in {"model_name": "mistral-7b", "memory_gb": 8.0, "priority": "LOW"}.items():
        at_widget(app, k).set_value(v)
    app.button(key="FormSubmitter:placement.form-Submit to queue").click()
    app.run()
    assert not app.exception
    assert any(i.value.startswith("Queued req-") for i in app.info)
    assert metrics(app)["Queued"] == "1"

    app.button(key="placement.place_now").click()
    app.run()
    assert not app.exception
    assert metrics(app)["Bound"] == "1" and metrics(app)["Queued"] == "0"
    history = frame_with(app, "decision")
    assert list(history["model"]) == ["mistral-7b"]
    assert bool(history["placed"].iloc[0]) and history["type"].iloc[0] == "A100"
    assert history["weights v"].iloc[0] == 1

    # A restarted console (fresh caches, same store) still shows the history, and the
    # preview now sees the slice that was bound.
    st.cache_resource.clear()
    again = new_app()
    history = frame_with(again, "decision")
    assert list(history["model"]) == ["mistral-7b"]
    # The stored matrix of that decision is shown with its chosen GPU starred.
    stored = [d.value for d in again.dataframe if {"", "reason"} <= set(d.value.columns)]
    assert any((m[""] == "★").sum() == 1 for m in stored)


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if column in d.value.columns)


def at_widget(at: AppTest, key: str) -> Any:
    if key == "priority":
        return at.selectbox(key=f"placement.{key}")
    if key in ("model_name", "namespace"):
        return at.text_input(key=f"placement.{key}")
    return at.number_input(key=f"placement.{key}")


def test_place_now_leaves_the_queue_to_a_controller_that_leads(app: AppTest) -> None:
    from datetime import UTC, datetime

    from app import services
    from db import leases

    for k, v in {"model_name": "mistral-7b", "memory_gb": 8.0, "priority": "LOW"}.items():
        at_widget(app, k).set_value(v)
    app.button(key="FormSubmitter:placement.form-Submit to queue").click()
    app.run()
    with services.runtime().factory.begin() as s:
        assert leases.acquire_lease(s, name="controller", holder="controller@elsewhere/1",
                                    now=datetime.now(UTC), ttl_seconds=300) is not None
    app.button(key="placement.place_now").click()
    app.run()
    assert not app.exception
    assert metrics(app)["Queued"] == "1" and metrics(app)["Bound"] == "0"
    shown = [m.value for m in (*app.info, *app.success)]
    assert any("controller@elsewhere/1" in text and "placed nothing" in text for text in shown)

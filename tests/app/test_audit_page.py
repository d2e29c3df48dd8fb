"""AppTest: the Audit page lists actions, refusals and decisions with who, what, why and
what was shown; filters narrow it in the store; its CSV holds the rows shown, neutralized."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import pytest
import streamlit as st

from app import autoscaling_services, services
from core.auth import LOCAL_APPROVER, Actor, Forbidden, Role
from core.model import PlacementRequest, Priority
from db.audit import list_audit
from tests.app.conftest import open_page


@pytest.fixture()
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    seen: list[str] = []
    original = st.download_button

    def capture(label: str, data: Any = None, **kwargs: Any) -> bool:
        made = data() if callable(data) else data  # what the click runs on the server
        seen.append(made.decode() if isinstance(made, bytes) else made)
        return original(label, made, **kwargs)

    monkeypatch.setattr(st, "download_button", capture)
    yield seen


def table(at: Any) -> Any:
    return next(d.value for d in at.dataframe if "actor" in d.value.columns)


def test_actions_refusals_and_what_was_shown_appear_with_their_actor(
        exported: list[str]) -> None:
    open_page()
    node = services.fleet_nodes()[0].name
    services.set_schedulable(LOCAL_APPROVER, node, False, reason="=HYPERLINK(\"x\")",
                             shown={"utilization": 0.42})
    with pytest.raises(Forbidden):
        autoscaling_services.set_autoscaling_paused(Actor("vic", Role.VIEWER, "test"), True,
                                        reason="forged")
    at = open_page("audit")
    frame = table(at)
    mine = frame[frame["action"] == "cordon"].iloc[0]
    assert (mine["actor"], mine["object"], mine["outcome"]) == ("local-approver",
                                                                f"node:{node}", "done")
    assert '"utilization": 0.42' in mine["shown"]
    refused = frame[frame["outcome"] == "refused"].iloc[0]
    assert (refused["actor"], refused["action"]) == ("vic", "pause-or-resume-autoscaling")

    at.selectbox(key="audit.actor").set_value("vic")
    at.run()
    assert set(table(at)["actor"]) == {"vic"}

    at.selectbox(key="audit.actor").set_value("(anyone)")
    at.text_input(key="audit.object").set_value(node)
    at.run()
    shown = table(at)
    assert len(shown) >= 1 and all(node in o for o in shown["object"])
    rows = list(csv.DictReader(io.StringIO(exported[-1])))
    assert len(rows) == len(shown)
    assert rows[0]["reason"].startswith("'=HYPERLINK")  # neutralized in the file
    with services.runtime().factory() as s:
        (export,) = list_audit(s, action="export-csv", limit=1)
    assert export.object_id == "audit" and export.details["rows"] == len(shown)


def test_placement_decisions_are_in_the_trail() -> None:
    open_page()
    (rid,) = services.submit(LOCAL_APPROVER, [PlacementRequest(
        model_name="audit-me", model_memory_gb=7, priority=Priority.MEDIUM,
        latency_sla_ms=500, expected_qps=5)], source="test", reason="audit test")
    services.place_queued(LOCAL_APPROVER, reason="audit test")
    at = open_page("audit")
    frame = table(at)
    assert {"submit-requests", "place-queued", "place"} <= set(frame["action"])
    decision = frame[frame["action"] == "place"].iloc[0]
    assert decision["source"] == "placement" and decision["object"].endswith(rid)

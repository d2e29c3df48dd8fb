"""AppTest: the Scheduler weights page shows versions and evidence; approve, reject, roll back."""

from __future__ import annotations

from decimal import Decimal

from streamlit.testing.v1 import AppTest

from app import services
from core import feedback as fb
from core.model import SchedulerWeights
from db import repo
from db import weights as weight_store
from tests.app.conftest import open_page


def seed_proposal() -> int:
    """A proposal built the way the controller builds one: observed on the running twin,
    scored by a (synthetic) replay that finds more MPS packing cheaper."""
    rt = services.runtime()
    assert rt.twin is not None
    observations = fb.observe(replicas=[], nodes=rt.cluster.nodes(),
                              telemetry=rt.metrics.telemetry(), perf=rt.twin.perf,
                              catalog=rt.settings.catalog)
    with rt.factory() as s:
        active = repo.active_weights(s)
    assert active is not None

    def replay(w: SchedulerWeights) -> fb.CandidateScore:
        gain = w.mps - active.weights.mps
        return fb.CandidateScore(cost_per_1k=Decimal(str(round(0.02 * (1 - 2 * gain), 10))),
                                 sla_attainment=0.99)

    proposal = fb.feedback_step(active=active.weights, observations=observations,
                                evaluate=replay, now=services.now(),
                                active_version=active.version)
    assert proposal is not None
    with rt.factory.begin() as s:
        return weight_store.record_proposal(s, proposal, author="feedback-loop",
                                            now=services.now()).version


def versions() -> dict[int, str]:
    with services.runtime().factory() as s:
        return {v.version: v.status for v in repo.list_weight_versions(s)}


def audit_actions() -> list[tuple[str, str, str]]:
    with services.runtime().factory() as s:
        return [(e.action, e.object_id, e.reason) for e in repo.list_audit(s)
                if e.object_type == "weight_version"]


def click(at: AppTest, form: str, label: str, *, reason: str, reason_key: str) -> AppTest:
    at.text_area(key=reason_key).set_value(reason)
    at.button(key=f"FormSubmitter:{form}-{label}").click()
    at.run()
    assert not at.exception, at.exception
    return at


def test_page_shows_the_initial_version_without_evidence() -> None:
    at = open_page("weights")
    assert at.title[0].value == "Scheduler weights"
    table = at.dataframe[0].value
    assert list(table["status"]) == ["active"]
    assert any("No evidence recorded" in i.value for i in at.info)
    assert not at.error


def test_a_proposal_appears_with_evidence_and_approving_it_makes_it_active() -> None:
    open_page()  # starts the runtime (store, twin) that the proposal is observed on
    version = seed_proposal()
    at = open_page("weights")
    assert any("waiting for an approver" in i.value for i in at.info)
    assert at.selectbox(key="weights.selected").value == version
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Simulated $/1k, proposed"] != "—"
    charts = at.get("plotly_chart")
    assert len(charts) >= 4  # weights, two predicted-vs-actual, candidates, calibration

    # Approving needs a reason.
    at = click(at, "weights.decide", "Approve", reason=" ", reason_key="weights.decide_reason")
    assert any("reason" in e.value for e in at.error)
    assert versions()[version] == "proposed"

    at = click(at, "weights.decide", "Approve", reason="replay shows cheaper packing",
               reason_key="weights.decide_reason")
    assert not at.error
    assert any(f"Version {version} approved" in s.value for s in at.success)
    assert versions() == {version: "active", 1: "superseded"}
    assert ("approve-weights", str(version), "replay shows cheaper packing") in audit_actions()

    # Roll back to the initial weights.
    at.selectbox(key="weights.selected").set_value(1)
    at.run()
    at = click(at, "weights.rollback", "Roll back", reason="p99 regressed after v2",
               reason_key="weights.rollback_reason")
    assert not at.error
    assert versions() == {version: "rolled-back", 1: "active"}
    assert ("rollback-weights", "1", "p99 regressed after v2") in audit_actions()
    with services.runtime().factory() as s:
        event = next(e for e in repo.list_audit(s) if e.action == "rollback-weights")
    assert event.actor == services.current_actor()
    assert event.details["from_version"] == version


def test_rejecting_a_proposal_keeps_the_active_version() -> None:
    open_page()
    version = seed_proposal()
    at = open_page("weights")
    at = click(at, "weights.decide", "Reject", reason="not during the freeze",
               reason_key="weights.decide_reason")
    assert not at.error
    assert versions() == {version: "rejected", 1: "active"}
    assert ("reject-weights", str(version), "not during the freeze") in audit_actions()
    # A rejected version offers no action.
    assert not [b for b in at.button if "weights.decide" in (b.key or "")]

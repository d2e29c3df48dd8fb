"""AppTest: the Scheduler weights page shows versions and evidence; approve, reject, roll back."""

from __future__ import annotations

from decimal import Decimal

from streamlit.testing.v1 import AppTest

from app import services
from core import feedback as fb
from core.controller.feedback import FeedbackRunner
from core.model import SchedulerWeights
from db import audit as audit_log
from db import flags
from db import versions as weight_versions
from db import weights as weight_store
from db.stores import SqlFeedbackStore
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
        active = weight_versions.active_weights(s)
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
        return {v.version: v.status for v in weight_versions.list_weight_versions(s)}


def audit_actions() -> list[tuple[str, str, str]]:
    with services.runtime().factory() as s:
        return [(e.action, e.object_id, e.reason) for e in audit_log.list_audit(s)
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
        event = next(e for e in audit_log.list_audit(s) if e.action == "rollback-weights")
    assert event.actor == "local-approver"
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


def publish_last_run(value: object) -> None:
    with services.runtime().factory.begin() as s:
        flags.set_flag(s, key=fb.LAST_RUN_FLAG, value=value,  # type: ignore[arg-type]
                       actor="controller", now=services.now())


def test_a_garbled_last_run_reads_as_unknown_and_the_page_still_works() -> None:
    open_page()
    publish_last_run({"at": "noon", "proposed_version": "v3", "scored": 7})
    at = open_page("weights")
    assert not at.error
    (warning,) = [w.value for w in at.warning if "Last feedback run" in w.value]
    assert "**unknown**" in warning and "feedback.last_run" in warning
    assert not at.expander  # no half-read run
    assert list(at.dataframe[0].value["status"]) == ["active"]  # the rest renders


def test_the_last_run_shows_its_outcome_and_comparison() -> None:
    open_page()
    run = fb.FeedbackRun(at=services.now().timestamp(), outcome=fb.RunOutcome.NO_CHANGE,
                         why_not="no candidate lowers the simulated cost per 1k inferences",
                         seconds=4.5, observations=12, comparable=9, deployments=5,
                         replay_s=7200.0, baseline_cost_per_1k=Decimal("0.0213"),
                         baseline_sla=0.97,
                         scored=(fb.ScoredRow(candidate="mps +0.050, power -0.050",
                                              cost_per_1k=Decimal("0.0211"), sla=0.97,
                                              improvement=0.0094, eligible=False),))
    publish_last_run(run.to_json())
    at = open_page("weights")
    # Nothing warns but the sidebar's banner of a console without sign-in.
    assert [w for w in at.warning if "No sign-in configured" not in w.value] == []
    assert not at.error
    (expander,) = at.expander
    assert expander.label.endswith("— no proposal")
    text = " ".join(m.value for m in expander.markdown)
    assert "no proposal: no candidate lowers" in text and "9 of 12 replicas" in text
    assert "over 2 h of recent traffic" in text and "1 candidates" in text
    table = expander.dataframe[0].value
    assert list(table["candidate"]) == ["active (baseline)", "mps +0.050, power -0.050"]

    publish_last_run(fb.FeedbackRun.failed(at=services.now().timestamp(), seconds=1.0,
                                           error=RuntimeError("replay diverged")).to_json())
    at = open_page("weights")
    (expander,) = at.expander
    assert expander.label.endswith("— failed")
    assert any("failed: RuntimeError: replay diverged" in m.value for m in expander.markdown)


def test_evidence_that_does_not_read_is_shown_as_unknown() -> None:
    open_page()
    with services.runtime().factory.begin() as s:
        version = weight_versions.propose_weights(
            s, SchedulerWeights(efficiency=0.25, affinity=0.25, utilization=0.20, power=0.15,
                                mps=0.15),
            author="alice", reason="by hand", evidence={"window_h": 24}, now=services.now())
    at = open_page("weights")
    assert not at.error
    assert at.selectbox(key="weights.selected").value == version.version
    assert any("evidence of this version is **unknown**" in w.value
               and "evidence.schema" in w.value for w in at.warning)
    assert not at.metric  # no figures from a payload that did not read


class _Unreachable:
    """A cluster whose node list fails, as an API server that went away."""

    def nodes(self) -> list[object]:
        raise ConnectionError("api server unreachable")


def test_a_run_that_fails_is_published_as_failed_and_the_next_waits_an_interval() -> None:
    open_page()
    rt = services.runtime()
    runner = FeedbackRunner(store=SqlFeedbackStore(rt.factory), cluster=_Unreachable(),  # type: ignore[arg-type]
                            settings=rt.settings, identity="controller")
    telemetry, t0 = rt.metrics.telemetry(), services.now().timestamp()
    first = rt.settings.feedback.first_run_after_s
    assert not runner.maybe_start(telemetry, now=t0)  # starts leading
    assert runner.maybe_start(telemetry, now=t0 + first)
    runner.join(timeout=60)
    assert runner.last_run is not None and runner.last_run.outcome is fb.RunOutcome.FAILED
    with rt.factory() as s:
        flag = flags.get_flag(s, fb.LAST_RUN_FLAG)
    assert flag is not None
    assert fb.FeedbackRun.from_json(flag.value) == runner.last_run
    # Not retried at once: the failure counts as the run of this interval.
    assert not runner.maybe_start(telemetry, now=t0 + first + 1)
    at = open_page("weights")
    (expander,) = at.expander
    assert expander.label.endswith("— failed")
    assert any("ConnectionError: api server unreachable" in m.value for m in expander.markdown)

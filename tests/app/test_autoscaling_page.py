"""AppTest: the Autoscaling page shows the controller's recommendations, pauses, surges."""

from __future__ import annotations

from app import services
from app.bootstrap import build_controller
from core.clock import SystemClock
from core.states import FlagKey
from db import audit as audit_log
from db import flags
from tests.app.conftest import open_page


def one_controller_pass() -> None:
    """What the embedded controller does every 30 s: sample, then autoscale on the sample."""
    rt = services.runtime()
    loop = build_controller(factory=rt.factory, cluster=rt.cluster, clock=SystemClock(),
                          settings=rt.settings, identity="test-controller",
                          monitor=rt.monitor)
    loop.step()


def test_the_page_says_when_the_controller_has_not_recommended_yet() -> None:
    at = open_page("autoscaling")
    assert at.title[0].value == "Autoscaling"
    assert any("No recommendation yet" in i.value for i in at.info)


def test_the_page_lists_every_deployment_with_its_recommendation() -> None:
    at = open_page("autoscaling")
    one_controller_pass()
    at.run()
    assert not at.exception
    table = next(d.value for d in at.dataframe if "recommendation" in d.value.columns)
    assert len(table) >= 10
    assert set(table["recommendation"]) <= {"up", "down", "hold"}
    assert (table["running"] >= 1).all()


def test_the_slo_policy_shows_capacity_per_gpu_type_and_why_that_type() -> None:
    at = open_page("autoscaling")
    one_controller_pass()
    at.run()
    assert not at.exception
    slo = next(d.value for d in at.dataframe if "why this GPU type" in d.value.columns)
    assert len(slo) >= 10  # every deployment runs the default policy, slo
    per_type = [c for c in slo.columns if str(c).startswith("per replica on ")]
    assert {"per replica on H100 /s", "per replica on A100 /s"} & set(per_type)
    assert (slo["why this GPU type"].str.len() > 0).all()
    assert slo["SLO"].str.contains("TTFT").all()
    assert len(at.get("plotly_chart")) >= 1


def test_pausing_needs_a_reason_and_is_durable_and_audited() -> None:
    at = open_page("autoscaling")
    at.button(key="FormSubmitter:autoscaling.pause-Pause autoscaling").click()
    at.run()
    assert any("reason" in e.value for e in at.error)
    at.text_input(key="autoscaling.reason").set_value("GPU driver rollout")
    at.button(key="FormSubmitter:autoscaling.pause-Pause autoscaling").click()
    at.run()
    assert not at.exception
    assert any("paused" in w.value and "GPU driver rollout" in w.value for w in at.warning)
    with services.runtime().factory() as s:
        flag = flags.get_flag(s, FlagKey.AUTOSCALING_PAUSED)
        audit = audit_log.list_audit(s, limit=5)
    assert flag is not None and flag.value["paused"] is True
    assert audit[0].action == "pause-autoscaling" and audit[0].reason == "GPU driver rollout"


def test_a_simulated_surge_starts_on_the_twin() -> None:
    at = open_page("autoscaling")
    at.button(key="FormSubmitter:autoscaling.surge-Start the surge").click()
    at.run()
    assert not at.exception
    twin = services.runtime().twin
    assert twin is not None
    assert [f.fault.kind.value for f in twin.faults()] == ["traffic_surge"]
    assert any("traffic ×" in s.value for s in at.success)

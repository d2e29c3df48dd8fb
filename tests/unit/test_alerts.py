"""The embedded alerts: each fires past its boundary and not at it, waits its `for`
duration, resolves, and agrees with deploy/prometheus/rules.yml."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.alerts import (
    HISTORY_S,
    QPS_WINDOWS_S,
    SUCCESS_FINISHED_REASONS,
    AlertEvaluator,
    AlertName,
    AlertStatus,
    AlertThresholds,
    Evaluation,
    ModelCounters,
    ModelKey,
    Sample,
    Severity,
    alert_rules,
    both_spellings,
    evaluate_series,
    prometheus_duration,
    render_template,
)
from core.errors import ValidationError

ROOT = Path(__file__).resolve().parents[2]
RULES_YML = ROOT / "deploy" / "prometheus" / "rules.yml"
RUNBOOKS_MD = ROOT / "docs" / "runbooks.md"
STEP = 30.0
NS = "inference"


def key(model: str, namespace: str = NS) -> ModelKey:
    return ModelKey(namespace, model)

# (requests/s, successful requests/s) per model, as a function of time.
Plan = Callable[[float], Mapping[str, tuple[float, float]]]


def replay(plan: Plan, *, until: float, thresholds: AlertThresholds | None = None,
           waiting: Mapping[str, float] | None = None) -> dict[float, Evaluation]:
    """Samples every 30 s from t=0 to ``until``; requests of (t, t+30] use plan(t)."""
    totals: dict[str, list[float]] = {}
    samples = []
    t = 0.0
    while t <= until:
        current = plan(t)
        for model in current:
            totals.setdefault(model, [0.0, 0.0])
        samples.append(Sample(at=t, models={
            key(m): ModelCounters(requests_total=c[0], requests_succeeded=c[1],
                             requests_waiting=(waiting or {}).get(m, 0.0))
            for m, c in totals.items() if m in current}))
        for model, (qps, ok) in current.items():
            totals[model][0] += qps * STEP
            totals[model][1] += ok * STEP
        t += STEP
    return {e.at: e for e in evaluate_series(samples, thresholds=thresholds)}


def status(evaluation: Evaluation, name: AlertName, **labels: str) -> AlertStatus | None:
    if "model_name" in labels:
        labels = {"namespace": NS, **labels}
    for alert in evaluation.named(name):
        if dict(alert.labels) == labels:
            return alert.status
    return None


def first(evals: dict[float, Evaluation], name: AlertName, wanted: AlertStatus) -> float | None:
    return next((at for at, e in sorted(evals.items()) if status(e, name) is wanted), None)


def steady(qps: float, *, success: float | None = None, model: str = "m") -> Plan:
    return lambda _t: {model: (qps, qps if success is None else success)}


# ------------------------------------------------------------------ thresholds


def test_threshold_defaults_are_the_spec_numbers() -> None:
    t = AlertThresholds()
    assert (t.high_qps, t.high_qps_for_s) == (200, 120)
    assert (t.min_success_rate, t.low_success_rate_for_s) == (0.95, 300)
    assert (t.spike_extra_requests, t.spike_for_s) == (1000, 60)
    assert t.zero_qps_for_s == 120
    assert (t.update_window_max_qps, t.update_window_for_s) == (30, 600)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"high_qps": -1}, "alerts.high_qps"),
        ({"high_qps": math.nan}, "alerts.high_qps"),
        ({"high_qps": True}, "alerts.high_qps"),
        ({"min_success_rate": 1.5}, "alerts.min_success_rate"),
        ({"spike_for_s": 1.5}, "alerts.spike_for_s"),
        ({"zero_qps_for_s": -30}, "alerts.zero_qps_for_s"),
        ({"high_qs": 10}, "alerts.high_qs"),
    ],
)
def test_bad_thresholds_are_refused_naming_the_setting(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        AlertThresholds.from_mapping(raw)
    assert caught.value.field == field


def test_thresholds_from_a_settings_table_are_typed() -> None:
    t = AlertThresholds.from_mapping({"high_qps": "150", "high_qps_for_s": 60.0})
    assert t.high_qps == 150.0
    assert t.high_qps_for_s == 60 and isinstance(t.high_qps_for_s, int)


# ------------------------------------------------------------------ HighQPS


def test_high_qps_fires_above_200_only_after_two_minutes() -> None:
    evals = replay(steady(201), until=600)
    # The 1-minute rate exists from t=60 s: pending there, firing 2 minutes later.
    assert status(evals[30], AlertName.HIGH_QPS) is None
    assert status(evals[60], AlertName.HIGH_QPS) is AlertStatus.PENDING
    assert status(evals[150], AlertName.HIGH_QPS) is AlertStatus.PENDING
    assert status(evals[180], AlertName.HIGH_QPS) is AlertStatus.FIRING
    alert = evals[180].named(AlertName.HIGH_QPS)[0]
    assert alert.severity is Severity.WARNING
    assert alert.active_since == 60
    assert alert.value == pytest.approx(201)
    # Word for word what promtool renders for the same value (rules_test.yml).
    assert alert.summary == "Fleet QPS above 200 for 2m: do not start updates"
    assert alert.description == (
        "The fleet served 201.0 requests/s over the last minute (threshold 200). MPS "
        "configuration changes are unsafe at this load; planned updates wait until traffic "
        "falls.")
    assert alert.runbook_url.endswith("docs/runbooks.md#highqps")


def test_high_qps_stays_silent_at_exactly_200() -> None:
    evals = replay(steady(200), until=900)
    assert all(not e.named(AlertName.HIGH_QPS) for e in evals.values())


def test_high_qps_resolves_when_traffic_falls_and_reports_the_resolution() -> None:
    evals = replay(lambda t: {"m": (250, 250) if t < 600 else (150, 150)}, until=900)
    assert status(evals[600], AlertName.HIGH_QPS) is AlertStatus.FIRING
    # (600, 630] ran at 150: the 1-minute rate at 630 is (250 + 150) / 2 = 200, not above.
    assert status(evals[630], AlertName.HIGH_QPS) is None
    assert [a.name for a in evals[630].resolved] == [AlertName.HIGH_QPS]
    assert evals[660].resolved == ()


def test_high_qps_sums_every_model() -> None:
    evals = replay(lambda _t: {"a": (100, 100), "b": (101, 101)}, until=300)
    assert status(evals[180], AlertName.HIGH_QPS) is AlertStatus.FIRING


def test_a_dip_restarts_the_for_clock() -> None:
    evals = replay(lambda t: {"m": (150, 150) if 90 <= t < 120 else (250, 250)}, until=600)
    # Above 200 at 60 s, not at 120 s (the dip), above again from 180 s.
    assert status(evals[120], AlertName.HIGH_QPS) is None
    assert status(evals[270], AlertName.HIGH_QPS) is AlertStatus.PENDING
    assert status(evals[300], AlertName.HIGH_QPS) is AlertStatus.FIRING
    assert evals[300].named(AlertName.HIGH_QPS)[0].active_since == 180


# ------------------------------------------------------------------ LowSuccessRate


def test_low_success_rate_fires_per_model_below_095_after_five_minutes() -> None:
    evals = replay(lambda _t: {"a": (100, 94), "b": (100, 95), "c": (10, 0)}, until=900)
    # The 5-minute ratio exists from 300 s: pending there, firing at 600 s.
    assert status(evals[570], AlertName.LOW_SUCCESS_RATE, model_name="a") is AlertStatus.PENDING
    assert status(evals[600], AlertName.LOW_SUCCESS_RATE, model_name="a") is AlertStatus.FIRING
    assert status(evals[600], AlertName.LOW_SUCCESS_RATE, model_name="c") is AlertStatus.FIRING
    assert status(evals[900], AlertName.LOW_SUCCESS_RATE, model_name="b") is None
    a, c = evals[600].named(AlertName.LOW_SUCCESS_RATE)
    assert a.severity is Severity.CRITICAL
    assert a.value == pytest.approx(0.94)
    assert a.summary == "inference/a: success rate below 95% for 5m"
    assert a.description == (
        "Only 0.940 of the requests to inference/a finished with a complete answer over the last 5 "
        "minutes (threshold 0.95). This is an incident: rollouts are blocked while it fires.")
    assert c.value == 0
    assert c.runbook_url.endswith("#lowsuccessrate")


def test_low_success_rate_ignores_an_idle_model_and_resolves_on_recovery() -> None:
    evals = replay(lambda t: {"a": (100, 90) if t < 900 else (100, 100), "idle": (0, 0)},
                   until=1500)
    assert status(evals[900], AlertName.LOW_SUCCESS_RATE, model_name="a") is AlertStatus.FIRING
    assert all(status(e, AlertName.LOW_SUCCESS_RATE, model_name="idle") is None
               for e in evals.values())
    assert evals[900].recorded.models[key("idle")].success_rate is None
    # Recovered traffic dilutes the 90 % window until the ratio reaches 0.95 at +150 s.
    assert status(evals[1020], AlertName.LOW_SUCCESS_RATE, model_name="a") is not None
    assert status(evals[1050], AlertName.LOW_SUCCESS_RATE, model_name="a") is None
    assert [dict(a.labels) for a in evals[1050].resolved] == [{"namespace": NS, "model_name": "a"}]


# ------------------------------------------------------------------ QPSSpike


def test_qps_spike_fires_on_a_step_of_10_qps_and_resolves() -> None:
    evals = replay(lambda t: {"m": (100, 100) if t < 600 else (110, 110)}, until=1500)
    # Extra requests = 10 × seconds since the step, up to 3000, then back down;
    # the same timeline as the promtool test.
    assert status(evals[690], AlertName.QPS_SPIKE) is None  # 900 extra
    assert status(evals[720], AlertName.QPS_SPIKE) is AlertStatus.PENDING  # 1200
    assert status(evals[750], AlertName.QPS_SPIKE) is AlertStatus.PENDING
    assert status(evals[780], AlertName.QPS_SPIKE) is AlertStatus.FIRING
    spike = evals[780].named(AlertName.QPS_SPIKE)[0]
    assert spike.value == pytest.approx(1800)
    assert spike.description.startswith("The fleet finished 1800 more requests in the last 5 ")
    assert status(evals[1080], AlertName.QPS_SPIKE) is AlertStatus.FIRING  # 1200
    assert status(evals[1110], AlertName.QPS_SPIKE) is None  # 900
    assert [a.name for a in evals[1110].resolved] == [AlertName.QPS_SPIKE]


def test_qps_spike_boundary_is_strictly_more_than_1000_extra_requests() -> None:
    def counts(last_step: float) -> list[Sample]:
        # 3000 requests per 30 s for 5 minutes, then 3100 (3000 + 1000/10) per 30 s.
        steps = [3000.0] * 10 + [3100.0] * 9 + [last_step]
        total = 0.0
        out = [Sample(at=0, models={key("m"): ModelCounters(0, 0)})]
        for i, n in enumerate(steps, start=1):
            total += n
            out.append(Sample(at=i * STEP, models={key("m"): ModelCounters(total, total)}))
        return out

    at_1000 = evaluate_series(counts(3100))[-1]
    assert at_1000.recorded.extra_requests == pytest.approx(1000)
    assert not at_1000.named(AlertName.QPS_SPIKE)
    at_1001 = evaluate_series(counts(3101))[-1]
    assert at_1001.recorded.extra_requests == pytest.approx(1001)
    assert status(at_1001, AlertName.QPS_SPIKE) is AlertStatus.PENDING


def test_qps_spike_needs_ten_minutes_of_history() -> None:
    # Huge traffic from the first second is not a spike: there is nothing to compare with.
    evals = replay(steady(500), until=900)
    assert all(e.recorded.extra_requests is None for at, e in evals.items() if at < 600)
    assert all(not e.named(AlertName.QPS_SPIKE) for e in evals.values())


@pytest.mark.parametrize(("qps_per_hour", "fires"), [(45, True), (35, False)])
def test_qps_spike_fires_on_ramps_steeper_than_40_qps_per_hour(qps_per_hour: float,
                                                               fires: bool) -> None:
    evals = replay(steady_ramp(qps_per_hour), until=1800)
    assert (first(evals, AlertName.QPS_SPIKE, AlertStatus.FIRING) is not None) is fires


def steady_ramp(qps_per_hour: float) -> Plan:
    return lambda t: {"m": (50 + qps_per_hour * t / 3600,) * 2}


# ------------------------------------------------------------------ QPSDroppedToZero


def test_qps_dropped_to_zero_fires_when_traffic_stops_but_series_remain() -> None:
    evals = replay(lambda t: {"m": (10, 10) if t < 600 else (0, 0)}, until=1200)
    # The last requests counted at 600 s; the 5-minute rate is 0 from 900 s.
    assert evals[870].recorded.fleet.qps[300] == pytest.approx(1)
    assert evals[900].recorded.fleet.qps[300] == 0
    assert status(evals[990], AlertName.QPS_DROPPED_TO_ZERO) is AlertStatus.PENDING
    assert status(evals[1020], AlertName.QPS_DROPPED_TO_ZERO) is AlertStatus.FIRING
    alert = evals[1020].named(AlertName.QPS_DROPPED_TO_ZERO)[0]
    assert alert.severity is Severity.CRITICAL
    assert "(0.0 requests/s)" in alert.description


def test_qps_dropped_to_zero_stays_silent_without_series() -> None:
    evaluator = AlertEvaluator()
    evals = [evaluator.observe(Sample(at=t * STEP, models={})) for t in range(60)]
    assert all(not e.alerts for e in evals)
    assert evals[-1].recorded.fleet.qps[300] is None
    assert evals[-1].recorded.fleet.waiting is None


def test_qps_dropped_to_zero_stays_silent_when_the_series_disappear() -> None:
    # The model server goes away at 600 s: absence, not zero.
    evals = replay(lambda t: {"m": (10, 10)} if t <= 600 else {}, until=4500)
    assert all(status(e, AlertName.QPS_DROPPED_TO_ZERO) is None for e in evals.values())
    assert evals[1800].recorded.fleet.qps[300] is None
    # An hour on, only the 1-hour window still holds its requests, as in Prometheus.
    at_hour = evals[3600].recorded.models[key("m")]
    assert at_hour.qps[300] is None
    assert at_hour.qps[3600] == pytest.approx(10 * 600 / 3600)
    assert key("m") not in evals[4500].recorded.models


def test_a_model_seen_for_the_first_time_has_no_rate_yet() -> None:
    # Nothing deployed for 10 minutes, then a busy model appears: absent, then busy,
    # never a moment of "zero traffic".
    evals = replay(lambda t: {"m": (50, 50)} if t >= 600 else {}, until=1200)
    assert evals[600].recorded.fleet.qps[300] is None
    assert key("m") in evals[600].recorded.models
    assert evals[600].recorded.models[key("m")].qps[60] is None
    # Its first 30 s of requests over a 1-minute window (Prometheus reads the same:
    # a counter that starts at 0 is not extrapolated back), then the full rate.
    assert evals[630].recorded.fleet.qps[60] == pytest.approx(25)
    assert evals[660].recorded.fleet.qps[60] == pytest.approx(50)
    assert all(not e.named(AlertName.QPS_DROPPED_TO_ZERO) for e in evals.values())


def test_qps_dropped_to_zero_stays_silent_for_a_trickle() -> None:
    evals = replay(steady(1 / 60), until=1800)  # one request a minute
    assert all(status(e, AlertName.QPS_DROPPED_TO_ZERO) is None for e in evals.values())


# ------------------------------------------------------------------ OptimalUpdateWindow


def test_optimal_update_window_fires_below_30_qps_after_ten_minutes() -> None:
    evals = replay(steady(29), until=1200)
    # The 5-minute rate exists from 300 s: pending there, firing 10 minutes later.
    assert status(evals[300], AlertName.OPTIMAL_UPDATE_WINDOW) is AlertStatus.PENDING
    assert status(evals[870], AlertName.OPTIMAL_UPDATE_WINDOW) is AlertStatus.PENDING
    assert status(evals[900], AlertName.OPTIMAL_UPDATE_WINDOW) is AlertStatus.FIRING
    alert = evals[900].named(AlertName.OPTIMAL_UPDATE_WINDOW)[0]
    assert alert.severity is Severity.INFO
    assert alert.summary == "Fleet QPS below 30 for 10m: a good time for updates"


def test_optimal_update_window_stays_silent_at_exactly_30() -> None:
    evals = replay(steady(30), until=1800)
    assert all(not e.named(AlertName.OPTIMAL_UPDATE_WINDOW) for e in evals.values())


# ------------------------------------------------------------------ recording rules


def test_recorded_values_per_model_and_fleet() -> None:
    evals = replay(lambda _t: {"a": (200, 150), "b": (40, 40)}, until=3600,
                   waiting={"a": 10, "b": 2})
    last = evals[3600].recorded
    for window in QPS_WINDOWS_S:
        assert last.models[key("a")].qps[window] == pytest.approx(200)
        assert last.models[key("b")].qps[window] == pytest.approx(40)
        assert last.fleet.qps[window] == pytest.approx(240)
    assert last.models[key("a")].success_rate == pytest.approx(0.75)
    assert last.models[key("b")].success_rate == pytest.approx(1)
    assert last.fleet.success_rate == pytest.approx(190 / 240)
    assert (last.models[key("a")].waiting, last.fleet.waiting) == (10, 12)
    # A window the history does not cover yet is absent, never a guess.
    early = evals[600].recorded
    assert early.fleet.qps[900] is None and early.fleet.qps[3600] is None
    assert early.fleet.qps[300] == pytest.approx(240)


def test_a_counter_reset_is_read_as_a_restart_not_negative_traffic() -> None:
    samples = [Sample(at=i * STEP, models={key("m"): ModelCounters(3000 * i, 3000 * i)})
               for i in range(20)]
    # The model server restarts: its counters start again from a small value.
    samples += [Sample(at=(20 + i) * STEP, models={key("m"): ModelCounters(3000 * (i + 1),
                                                                      3000 * (i + 1))})
                for i in range(20)]
    evals = evaluate_series(samples)
    for e in evals[1:]:
        qps = e.recorded.fleet.qps[60]
        assert qps is None or qps == pytest.approx(100)
    assert all(not e.named(AlertName.QPS_SPIKE) and not e.named(AlertName.QPS_DROPPED_TO_ZERO)
               for e in evals)


def test_samples_must_come_in_time_order() -> None:
    evaluator = AlertEvaluator()
    evaluator.observe(Sample(at=60, models={}))
    with pytest.raises(ValidationError) as caught:
        evaluator.observe(Sample(at=60, models={}))
    assert caught.value.field == "at"


def test_history_is_bounded() -> None:
    evaluator = AlertEvaluator()
    for i in range(int(3 * HISTORY_S / STEP)):
        evaluator.observe(Sample(at=i * STEP, models={key(f"m{i % 7}"): ModelCounters(i, i)}))
    # Private state, checked on purpose: the controller feeds this for weeks.
    assert len(evaluator._points) <= HISTORY_S / STEP + 1
    assert len(evaluator._tracks) <= 7


def test_counters_from_vllm_finish_reasons() -> None:
    c = ModelCounters.from_finished_reasons(
        {"stop": 90, "length": 5, "abort": 3, "error": 1, "repetition": 1}, waiting=4)
    assert (c.requests_total, c.requests_succeeded, c.requests_waiting) == (100, 95, 4)
    with pytest.raises(ValidationError):
        ModelCounters(requests_total=1, requests_succeeded=2)


def test_custom_thresholds_change_the_behaviour() -> None:
    t = AlertThresholds(high_qps=50, high_qps_for_s=0)
    evals = replay(steady(51), until=120, thresholds=t)
    assert status(evals[60], AlertName.HIGH_QPS) is AlertStatus.FIRING
    assert evals[60].named(AlertName.HIGH_QPS)[0].summary.startswith("Fleet QPS above 50 for 0s")


def test_templates_other_than_the_two_supported_are_refused() -> None:
    assert render_template('{{ $labels.x }}={{ printf "%.2f" $value }}', value=1.234,
                           labels={"x": "y"}) == "y=1.23"
    with pytest.raises(ValueError, match="unsupported"):
        render_template("{{ $value | humanize }}", value=1.0, labels={})


# ------------------------------------------------------------------ rules.yml agreement


def _rules_yml() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES_YML.read_text(encoding="utf-8"))["groups"]


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)([smh])", duration)
    assert match, duration
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


def test_rules_yml_alerts_match_the_python_rules_exactly() -> None:
    yml = {r["alert"]: r for g in _rules_yml() for r in g["rules"] if "alert" in r}
    python = {r.name.value: r for r in alert_rules()}
    assert list(yml) == list(python)
    for name, rule in python.items():
        y = yml[name]
        assert " ".join(y["expr"].split()) == rule.expr, name
        assert y["for"] == rule.for_duration, name
        assert y["labels"] == {"severity": rule.severity.value}, name
        assert y["annotations"] == {"summary": rule.summary, "description": rule.description,
                                    "runbook_url": rule.runbook_url}, name


@pytest.mark.parametrize(
    ("alert", "threshold", "for_s"),
    [
        ("HighQPS", "high_qps", "high_qps_for_s"),
        ("LowSuccessRate", "min_success_rate", "low_success_rate_for_s"),
        ("QPSSpike", "spike_extra_requests", "spike_for_s"),
        ("QPSDroppedToZero", None, "zero_qps_for_s"),
        ("OptimalUpdateWindow", "update_window_max_qps", "update_window_for_s"),
    ],
)
def test_rules_yml_thresholds_and_durations_are_the_spec_defaults(
    alert: str, threshold: str | None, for_s: str
) -> None:
    rule = next(r for g in _rules_yml() for r in g["rules"] if r.get("alert") == alert)
    defaults = AlertThresholds()
    literal = float(rule["expr"].split()[-1])
    assert literal == (0.0 if threshold is None else getattr(defaults, threshold))
    assert _seconds(rule["for"]) == getattr(defaults, for_s)


def test_each_alert_reads_series_recorded_earlier_in_its_own_group() -> None:
    # Same group, earlier position: evaluated at the same instant, before the alert.
    for group in _rules_yml():
        recorded: set[str] = set()
        for rule in group["rules"]:
            if "record" in rule:
                recorded.add(rule["record"])
                continue
            reads = set(re.findall(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b", rule["expr"]))
            assert reads <= recorded, (rule["alert"], reads - recorded)


def test_rules_yml_records_every_window_and_the_python_success_reasons() -> None:
    rules = {r["record"]: " ".join(r["expr"].split())
             for g in _rules_yml() for r in g["rules"] if "record" in r}
    for window in QPS_WINDOWS_S:
        for level in ("fleet", "namespace_model_name"):
            assert f"{level}:vllm_requests:rate{prometheus_duration(window)}" in rules
    matcher = f'finished_reason=~"{"|".join(SUCCESS_FINISHED_REASONS)}"'
    for level in ("fleet", "namespace_model_name"):
        assert matcher in rules[f"{level}:vllm_request_success:ratio_rate5m"]
    assert "namespace_model_name:vllm_e2e_request_latency_seconds:p99_5m" in rules


def test_every_runbook_link_has_its_section() -> None:
    headings = {line[3:].strip().lower()
                for line in RUNBOOKS_MD.read_text(encoding="utf-8").splitlines()
                if line.startswith("## ")}
    for rule in alert_rules():
        assert rule.runbook_url.rsplit("#", 1)[1] in headings, rule.name


# ------------------------------------------------------------------ namespaces, spellings


def test_one_model_in_two_namespaces_is_two_deployments() -> None:
    # The rules group by (namespace, model_name), as the adapter keys deployments.
    samples = [Sample(at=i * STEP, models={
        key("a", "prod"): ModelCounters(3000 * i, 3000 * i),
        key("a", "staging"): ModelCounters(300 * i, 150 * i)}) for i in range(31)]
    last = evaluate_series(samples)[-1]
    assert last.recorded.models[key("a", "prod")].success_rate == pytest.approx(1)
    assert last.recorded.models[key("a", "staging")].success_rate == pytest.approx(0.5)
    assert last.recorded.fleet.qps[300] == pytest.approx(110)
    (alert,) = last.named(AlertName.LOW_SUCCESS_RATE)
    assert dict(alert.labels) == {"namespace": "staging", "model_name": "a"}
    assert alert.summary == "staging/a: success rate below 95% for 5m"


def test_a_sample_keyed_by_model_alone_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        Sample(at=0, models={"a": ModelCounters(1, 1)})  # type: ignore[dict-item]
    assert caught.value.field == "models"
    assert Sample(at=0, models={("ns", "a"): ModelCounters(1, 1)}).models == {
        key("a", "ns"): ModelCounters(1, 1)}


def test_every_vllm_selector_in_rules_yml_reads_both_spellings() -> None:
    # prometheus-client escapes vllm: to vllm_ for a Prometheus 2.x: a rule that read
    # only one spelling would be empty on a scrape without the relabel.
    for group in _rules_yml():
        for rule in group["rules"]:
            expr = " ".join(rule["expr"].split())
            calls = re.findall(r"(\w+)\(vllm:(\w+)(\{[^}]*\})?\[(\w+)\]( offset \w+)?\)", expr)
            raw = re.findall(r"(?<![\w:])vllm[:_]\w+", expr)
            assert len(raw) == 2 * len(calls) or "num_requests_waiting" in expr, rule
            for function, metric, matcher, window, offset in calls:
                colon = f"{function}(vllm:{metric}{matcher}[{window}]{offset})"
                escaped = f"{function}(vllm_{metric}{matcher}[{window}]{offset})"
                assert f"{colon} or {escaped}" in expr, (rule, colon)
            if "num_requests_waiting" in expr:
                assert "vllm:num_requests_waiting or vllm_num_requests_waiting" in expr
    assert both_spellings("rate", "x", "1m", offset="5m") == (
        "rate(vllm:x[1m] offset 5m) or rate(vllm_x[1m] offset 5m)")

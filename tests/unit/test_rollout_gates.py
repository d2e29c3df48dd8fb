"""The update gates of SPEC §4.2: every check, its value and threshold; unknown fails closed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from core.alerts import Alert, AlertName, AlertStatus, Severity
from core.errors import ValidationError
from core.model import Gpu, MpsSlice, Node
from core.rollout.gates import (
    GATE_NAMES,
    GateInputs,
    GateReport,
    evaluate_gates,
    free_capacity,
    gate_inputs,
    qps_band,
    qps_window_stats,
)
from core.rollout_settings import RolloutSettings, UpdateType
from core.settings import QpsBands
from core.telemetry import FleetTelemetry, FleetTotals, GpuTelemetry

ROUTINE = RolloutSettings().update_type("routine_optimization")
# Wide limits (max QPS 1000, any time) to probe the QPS-aware gate on its own: the real
# emergency_fix does not apply it (see the test below), so it is switched on here.
EMERGENCY = replace(RolloutSettings().update_type("emergency_fix"), qps_aware=True)
BANDS = QpsBands()
# Tuesday 2026-12-01 03:00 UTC: inside routine_optimization's 02:00-04:00 window.
IN_WINDOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC).timestamp()
QUIET = GateInputs(now=IN_WINDOW, qps=20.0, qps_avg_15m=18.0, qps_peak_15m=30.0,
                   qps_rising=False, error_rate=0.001, gpu_util=0.3, free_capacity=0.5,
                   firing_critical=())


def _check(inputs: GateInputs, name: str, update_type=ROUTINE):
    return evaluate_gates(inputs, update_type=update_type, bands=BANDS).check(name)


def test_a_quiet_observed_fleet_in_its_window_passes_every_gate() -> None:
    report = evaluate_gates(QUIET, update_type=ROUTINE, bands=BANDS)
    assert report.passed and report.failed == ()
    assert tuple(c.name for c in report.checks) == GATE_NAMES
    assert report.summary == "all 11 gates pass"
    assert all(c.value and c.threshold for c in report.checks)


@pytest.mark.parametrize(("change", "gate", "value", "threshold"), [
    ({"qps": 50.0}, "traffic", "50.0 QPS", "< 50 QPS"),
    ({"error_rate": 0.02}, "error-rate", "2.0%", "< 1.0%"),
    ({"gpu_util": 0.75}, "gpu-utilization", "75%", "< 70%"),
    ({"free_capacity": 0.2}, "free-capacity", "20%", "≥ 30%"),
    ({"firing_critical": ("LowSuccessRate",)}, "no-critical-alert", "1 firing", "none firing"),
    ({"metrics_problem": "Prometheus unreachable"}, "metrics-source", "down", "answering"),
    ({"cluster_problem": "API server refused"}, "cluster-api", "down", "answering"),
    ({"qps_peak_15m": 240.0}, "qps-peak-15m", "240.0 QPS", "≤ 200 QPS"),
])
def test_each_gate_fails_over_its_threshold_and_shows_value_and_threshold(
        change: dict, gate: str, value: str, threshold: str) -> None:
    report = evaluate_gates(replace(QUIET, **change), update_type=ROUTINE, bands=BANDS)
    assert report.failed == (gate,)
    check = report.check(gate)
    assert (check.value, check.threshold, check.passed) == (value, threshold, False)
    assert check.reason


def test_the_alert_check_names_the_incident() -> None:
    check = _check(replace(QUIET, firing_critical=("LowSuccessRate", "QPSDroppedToZero")),
                   "no-critical-alert")
    assert "LowSuccessRate, QPSDroppedToZero" in check.reason


def test_outside_the_window_the_time_gate_fails_and_any_window_always_passes() -> None:
    noon = datetime(2026, 12, 1, 12, 30, tzinfo=UTC).timestamp()
    check = _check(replace(QUIET, now=noon), "time-window")
    assert (check.passed, check.value) == (False, "12:30 UTC")
    assert "02:00-04:00, 14:00-16:00" in check.threshold
    assert _check(replace(QUIET, now=noon), "time-window", EMERGENCY).passed
    # 04:00 is the end of the window, not in it.
    edge = datetime(2026, 12, 1, 4, 0, tzinfo=UTC).timestamp()
    assert not _check(replace(QUIET, now=edge), "time-window").passed


def test_the_update_type_sets_the_limits() -> None:
    busy = replace(QUIET, qps=120.0, qps_avg_15m=110.0, qps_peak_15m=130.0)
    assert not _check(busy, "traffic").passed
    assert _check(busy, "traffic", EMERGENCY).passed


@pytest.mark.parametrize(("qps", "band", "passed"), [
    (10.0, "safe", True), (50.0, "caution", True), (100.0, "caution", True),
    (150.0, "high-risk", True), (200.0, "high-risk", True), (201.0, "do-not-update", False),
])
def test_the_qps_band_gate_follows_the_bands(qps: float, band: str, passed: bool) -> None:
    inputs = replace(QUIET, qps=qps, qps_avg_15m=qps, qps_peak_15m=qps)
    check = _check(inputs, "qps-band", EMERGENCY)
    assert check.passed is passed and band in check.value
    assert qps_band(qps, BANDS)[0] == band


def test_the_banner_band_is_unknown_without_qps() -> None:
    assert qps_band(None, BANDS)[0] == "unknown"
    assert qps_band(49.9, QpsBands(safe=50, caution=100, high_risk=200))[0] == "safe"


def test_rising_fast_means_above_one_and_a_half_times_the_average_while_increasing() -> None:
    fast = replace(QUIET, qps=31.0, qps_avg_15m=20.0, qps_rising=True)
    check = _check(fast, "qps-rising-fast")
    assert not check.passed and "rising fast" in check.reason and "1.55 ×" in check.value
    # The same figure while falling is not rising fast; 1.5 × exactly is not above it.
    assert _check(replace(fast, qps_rising=False), "qps-rising-fast").passed
    assert _check(replace(fast, qps=30.0), "qps-rising-fast").passed


def test_a_fifteen_minute_peak_over_the_limit_blocks_even_when_quiet_now() -> None:
    report = evaluate_gates(replace(QUIET, qps_peak_15m=260.0), update_type=EMERGENCY,
                            bands=BANDS)
    assert report.failed == ("qps-peak-15m",)
    assert "260.0 QPS" in report.check("qps-peak-15m").reason


def test_unknown_figures_fail_closed_and_say_why() -> None:
    down = GateInputs(now=IN_WINDOW, metrics_problem="Prometheus at http://***@prom is "
                                                     "unreachable", free_capacity=0.5,
                      why_unknown={"firing_critical": "alerts cannot be evaluated"})
    report = evaluate_gates(down, update_type=EMERGENCY, bands=BANDS)
    assert not report.passed
    assert set(report.failed) == {"traffic", "error-rate", "gpu-utilization",
                                  "no-critical-alert", "metrics-source", "qps-band",
                                  "qps-rising-fast", "qps-peak-15m"}
    for name in report.failed:
        check = report.check(name)
        if name == "metrics-source":
            assert "unreachable" in check.reason
            continue
        assert check.value == "unknown"
        assert check.reason.startswith("unknown: ")
    assert "the metrics source is down (Prometheus" in report.check("traffic").reason
    assert report.check("no-critical-alert").reason == \
        "unknown: alerts cannot be evaluated"


def test_no_data_is_never_read_as_zero_traffic() -> None:
    nothing = GateInputs(now=IN_WINDOW)
    report = evaluate_gates(nothing, update_type=EMERGENCY, bands=BANDS)
    assert report.check("traffic").value == "unknown"
    assert not report.check("traffic").passed
    assert report.check("free-capacity").reason == "unknown: not measured"
    # Only the dependency checks and the window can pass without figures.
    assert set(GATE_NAMES) - set(report.failed) == {"metrics-source", "cluster-api",
                                                    "time-window"}


def test_a_report_round_trips_through_json_and_refuses_bad_payloads() -> None:
    report = evaluate_gates(replace(QUIET, qps=80.0), update_type=ROUTINE, bands=BANDS)
    assert GateReport.from_json(report.to_json()) == report
    assert GateReport.from_json(report.to_json()).failed == ("traffic",)
    broken = report.to_json()
    broken["checks"][0]["passed"] = "yes"
    with pytest.raises(ValidationError) as err:
        GateReport.from_json(broken)
    assert err.value.field == "checks.passed"
    with pytest.raises(ValidationError):
        GateReport.from_json({"at": "now", "checks": []})


def test_inputs_refuse_negative_or_non_finite_figures() -> None:
    with pytest.raises(ValidationError) as err:
        GateInputs(now=IN_WINDOW, qps=float("nan"))
    assert err.value.field == "qps"
    with pytest.raises(ValidationError):
        GateInputs(now=IN_WINDOW, error_rate=-0.1)


def _node(name: str, slices: tuple[int, ...], *, schedulable: bool = True,
          healthy: bool = True) -> Node:
    gpu = Gpu(index=0, gpu_type="A100", memory_total_mib=40960, healthy=healthy,
              slices=tuple(MpsSlice(owner=f"{name}-{i}", thread_pct=p, memory_mib=1024)
                           for i, p in enumerate(slices)))
    return Node(name=name, gpus=(gpu,), schedulable=schedulable)


def test_free_capacity_counts_only_gpus_that_can_take_work() -> None:
    nodes = [_node("a", (50,)), _node("b", ()), _node("c", (), schedulable=False),
             _node("d", (), healthy=False)]
    # a: 50 free, b: 100 free; c and d are out: 150 of 400.
    assert free_capacity(nodes) == pytest.approx(150 / 400)
    assert free_capacity([]) is None


def test_qps_window_stats_needs_enough_coverage_and_sees_a_rise() -> None:
    now = 10_000.0
    rising = [(now - 900 + 30 * i, 10.0 + i) for i in range(31)]
    stats = qps_window_stats(rising, now=now)
    assert stats.unknown is None and stats.rising is True
    assert stats.peak == 40.0 and stats.average == pytest.approx(25.0)
    falling = [(ts, 100.0 - v) for ts, v in rising]
    assert qps_window_stats(falling, now=now).rising is False
    short = [(now - 60, 5.0), (now, 6.0)]
    stats = qps_window_stats(short, now=now)
    assert stats.average is None and "covers 1.0 min" in (stats.unknown or "")
    assert qps_window_stats([], now=now).unknown == "0 QPS sample(s) stored in the last 15 min"


def _reading(*, qps: float, success: float | None, utils: tuple[float, ...]) -> FleetTelemetry:
    gpus = tuple(GpuTelemetry(node=f"n{i}", gpu_index=0, gpu_type="A100", uuid=f"u{i}",
                              utilization=u, power_w=100.0, memory_used_mib=0,
                              memory_total_mib=40960, energy_j=0.0)
                 for i, u in enumerate(utils))
    return FleetTelemetry(timestamp=IN_WINDOW, gpus=gpus, deployments=(),
                          totals=FleetTotals(qps=qps, power_w=200.0, tops_per_w=1.0,
                                             success_rate=success))


def _alert(name: AlertName, severity: Severity) -> Alert:
    return Alert(name=name, status=AlertStatus.FIRING, severity=severity, labels={},
                 value=1.0, active_since=0.0, summary="", description="", runbook_url="")


def test_gate_inputs_are_built_from_what_was_read() -> None:
    points = [(IN_WINDOW - 900 + 60 * i, 20.0) for i in range(16)]
    inputs = gate_inputs(
        now=IN_WINDOW, telemetry=_reading(qps=22.0, success=0.995, utils=(0.2, 0.4)),
        metrics_problem=None, nodes=[_node("a", (50,)), _node("b", ())], cluster_problem=None,
        firing=[_alert(AlertName.HIGH_QPS, Severity.WARNING),
                _alert(AlertName.LOW_SUCCESS_RATE, Severity.CRITICAL)],
        qps_points=points)
    assert (inputs.qps, inputs.gpu_util, inputs.free_capacity) == (22.0, pytest.approx(0.3),
                                                                   0.75)
    assert inputs.error_rate == pytest.approx(0.005)
    assert inputs.firing_critical == ("LowSuccessRate",)  # warnings are no incident
    assert (inputs.qps_avg_15m, inputs.qps_peak_15m, inputs.qps_rising) == (20.0, 20.0, False)
    assert inputs.metrics_problem is None and inputs.cluster_problem is None


def test_gate_inputs_without_metrics_cluster_or_store_are_unknown_and_say_why() -> None:
    inputs = gate_inputs(now=IN_WINDOW, telemetry=None, metrics_problem="Prometheus down",
                         nodes=None, cluster_problem="API server refused",
                         firing=[_alert(AlertName.LOW_SUCCESS_RATE, Severity.CRITICAL)],
                         qps_points=None, store_problem="database locked")
    report = evaluate_gates(inputs, update_type=EMERGENCY, bands=BANDS)
    assert report.check("no-critical-alert").reason.startswith(
        "unknown: alerts cannot be evaluated while the metrics are unknown (Prometheus down)")
    assert report.check("free-capacity").reason == \
        "unknown: the cluster API is down (API server refused)"
    assert report.check("qps-peak-15m").reason == "unknown: the store is down (database locked)"
    assert report.check("cluster-api").reason == "the cluster API is down: API server refused"
    idle = gate_inputs(now=IN_WINDOW, telemetry=_reading(qps=0.0, success=None, utils=()),
                       metrics_problem=None, nodes=[], cluster_problem=None, firing=[],
                       qps_points=[])
    assert idle.error_rate is None and idle.why_unknown["error_rate"] == \
        "no request finished in the last 5 minutes"
    assert idle.why_unknown["gpu_util"] == "the reading holds no GPU"
    assert idle.why_unknown["free_capacity"] == "the cluster reports no GPU"


def test_an_emergency_fix_is_held_to_its_max_qps_not_the_qps_aware_gate() -> None:
    kind: UpdateType = RolloutSettings().update_type("emergency_fix")
    assert kind.qps_aware is False
    busy = replace(QUIET, qps=300.0, qps_avg_15m=150.0, qps_peak_15m=320.0, qps_rising=True)
    report = evaluate_gates(busy, update_type=kind, bands=BANDS)
    for name in ("qps-band", "qps-rising-fast", "qps-peak-15m"):
        check = report.check(name)
        assert check.passed and check.threshold == "not applied", check
    assert report.check("traffic").passed  # 300 < 1000
    over = evaluate_gates(replace(busy, qps=1200.0), update_type=kind, bands=BANDS)
    assert over.failed == ("traffic",)
    unknown = evaluate_gates(replace(busy, qps=None), update_type=kind, bands=BANDS)
    assert "traffic" in unknown.failed  # unknown QPS still fails closed

"""Gates: whether an MPS configuration change may run now (SPEC §4.2). All must pass.

Why: a reconfiguration restarts a node's MPS daemon and device plugin, so it
may only run when the fleet is quiet, healthy, observed and inside an allowed
window. ``evaluate_gates`` turns what is known now (``GateInputs``) and the
update type's limits into a ``GateReport``: one ``GateCheck`` per gate, each
with its value, its threshold and, when it fails, why. The report is a typed
payload (``to_json`` / ``from_json``): a plan stores the report its approver
was shown, and the audit keeps it. ``gate_inputs`` builds the inputs from what a
console or the controller read (the live reading, the cluster's nodes, the
firing alerts, the stored 15-minute QPS), so both judge the same way.

Invariants:
- unknown is not zero: every figure may be ``None`` (not measured, the metrics
  source down, too little history); a check over an unknown figure fails
  closed with a reason that starts ``"unknown: "`` and says why;
- a failing or unreachable dependency (metrics source, cluster API) fails its
  own check, naming it and the reason, and the figures read through it are
  unknown;
- checks come in a fixed order with fixed names (``GATE_NAMES``), so two
  reports compare check by check;
- pure: the caller passes the time (``GateInputs.now``, epoch seconds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from core.alerts import Alert, Severity
from core.errors import ValidationError
from core.model import Node
from core.monitor import UNKNOWN_BAND
from core.monitor import qps_band as _qps_band
from core.rollout_settings import UpdateType, windows_text
from core.settings import QpsBands
from core.telemetry import FleetTelemetry

__all__ = ["GATE_NAMES", "RISE_FACTOR", "GateCheck", "GateInputs", "GateReport", "QpsWindow",
           "UpdateType", "evaluate_gates", "free_capacity", "gate_inputs", "qps_band",
           "qps_window_stats"]

UNKNOWN = "unknown"
# SPEC §4.2: "rising fast" is the current QPS above this many times the 15-minute average
# while it increases.
RISE_FACTOR = 1.5
PEAK_WINDOW_S = 900.0

TRAFFIC = "traffic"
ERROR_RATE = "error-rate"
GPU_UTIL = "gpu-utilization"
FREE_CAPACITY = "free-capacity"
TIME_WINDOW = "time-window"
NO_CRITICAL_ALERT = "no-critical-alert"
METRICS_SOURCE = "metrics-source"
CLUSTER_API = "cluster-api"
QPS_BAND = "qps-band"
QPS_RISING = "qps-rising-fast"
QPS_PEAK = "qps-peak-15m"
GATE_NAMES = (TRAFFIC, ERROR_RATE, GPU_UTIL, FREE_CAPACITY, TIME_WINDOW, NO_CRITICAL_ALERT,
              METRICS_SOURCE, CLUSTER_API, QPS_BAND, QPS_RISING, QPS_PEAK)


@dataclass(frozen=True, slots=True)
class GateInputs:
    """What is known now. ``None`` = unknown; ``why_unknown`` may say why per field name
    (else the metrics source's problem is the reason, or "not measured").

    ``firing_critical``: names of the critical alerts firing now (``()`` none; ``None``
    when alerts cannot be evaluated). ``metrics_problem`` / ``cluster_problem``: why that
    dependency is down, ``None`` while it answers. ``free_capacity``: the fraction of the
    fleet's GPU capacity free to take moved workloads (``free_capacity``).
    """

    now: float
    qps: float | None = None
    qps_avg_15m: float | None = None
    qps_peak_15m: float | None = None
    qps_rising: bool | None = None
    error_rate: float | None = None
    gpu_util: float | None = None
    free_capacity: float | None = None
    firing_critical: tuple[str, ...] | None = None
    metrics_problem: str | None = None
    cluster_problem: str | None = None
    why_unknown: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.now, int | float) or not math.isfinite(self.now):
            raise ValidationError("now", "must be a finite time in epoch seconds")
        for name in ("qps", "qps_avg_15m", "qps_peak_15m", "error_rate", "gpu_util",
                     "free_capacity"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not math.isfinite(value)
                                      or value < 0):
                raise ValidationError(name, "must be a finite number ≥ 0, or None (unknown)")

    def unknown_because(self, name: str, *, source: str = "metrics") -> str:
        """``"unknown: <why>"`` for the figure ``name``."""
        if name in self.why_unknown:
            return f"{UNKNOWN}: {self.why_unknown[name]}"
        problem = self.metrics_problem if source == "metrics" else self.cluster_problem
        if problem:
            what = "the metrics source" if source == "metrics" else "the cluster API"
            return f"{UNKNOWN}: {what} is down ({problem})"
        return f"{UNKNOWN}: not measured"


@dataclass(frozen=True, slots=True)
class GateCheck:
    """One gate: its value and threshold as shown, whether it passed, and why."""

    name: str
    value: str
    threshold: str
    passed: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "threshold": self.threshold,
                "passed": self.passed, "reason": self.reason}

    @classmethod
    def from_json(cls, data: Any) -> GateCheck:
        if not isinstance(data, Mapping):
            raise ValidationError("checks", "each check must be a mapping")
        out = {}
        for key in ("name", "value", "threshold", "reason"):
            value = data.get(key)
            if not isinstance(value, str):
                raise ValidationError(f"checks.{key}", "must be text")
            out[key] = value
        passed = data.get("passed")
        if not isinstance(passed, bool):
            raise ValidationError("checks.passed", "must be true or false")
        return cls(passed=passed, **out)


@dataclass(frozen=True, slots=True)
class GateReport:
    """Every gate's check at ``at`` (epoch seconds) for ``update_type``."""

    checks: tuple[GateCheck, ...]
    at: float
    update_type: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks if not c.passed)

    def check(self, name: str) -> GateCheck:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def summary(self) -> str:
        if self.passed:
            return f"all {len(self.checks)} gates pass"
        failed = self.failed
        return f"{len(failed)} of {len(self.checks)} gates fail: {', '.join(failed)}"

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "update_type": self.update_type,
                "checks": [c.to_json() for c in self.checks]}

    @classmethod
    def from_json(cls, data: Any) -> GateReport:
        if not isinstance(data, Mapping):
            raise ValidationError("gate_report", "must be a mapping")
        at = data.get("at")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise ValidationError("gate_report.at", "must be a time in epoch seconds")
        update_type = data.get("update_type", "")
        if not isinstance(update_type, str):
            raise ValidationError("gate_report.update_type", "must be text")
        checks = data.get("checks")
        if not isinstance(checks, list):
            raise ValidationError("gate_report.checks", "must be a list")
        return cls(checks=tuple(GateCheck.from_json(c) for c in checks), at=float(at),
                   update_type=update_type)


def qps_band(qps: float | None, bands: QpsBands) -> tuple[str, str]:
    """The live banner's band and advice (SPEC §4.2); ``("unknown", …)`` without a figure."""
    if qps is None:
        return UNKNOWN_BAND, "QPS unknown: update gates are closed until data arrives"
    return _qps_band(qps, safe=bands.safe, caution=bands.caution, high_risk=bands.high_risk)


def _pct(x: float) -> str:
    return f"{x:.1%}" if x < 0.1 else f"{x:.0%}"


def _qps(x: float) -> str:
    return f"{x:.1f} QPS"


def _below(name: str, value: float | None, limit: float, *, inputs: GateInputs,
           show: Any, what: str) -> GateCheck:
    threshold = f"< {limit:g} QPS" if show is _qps else f"< {show(limit)}"
    if value is None:
        return GateCheck(name, UNKNOWN, threshold, False, inputs.unknown_because(what))
    passed = value < limit
    reason = "below the limit" if passed else f"{show(value)} is not {threshold}"
    return GateCheck(name, show(value), threshold, passed, reason)


def _dependency(name: str, problem: str | None, what: str) -> GateCheck:
    if problem is None:
        return GateCheck(name, "answering", "answering", True, f"{what} answers")
    return GateCheck(name, "down", "answering", False, f"{what} is down: {problem}")


def evaluate_gates(inputs: GateInputs, *, update_type: UpdateType, bands: QpsBands
                   ) -> GateReport:
    """Every gate of SPEC §4.2 for a change of ``update_type`` under ``inputs``."""
    i, t = inputs, update_type
    checks = [
        _below(TRAFFIC, i.qps, t.max_qps, inputs=i, show=_qps, what="qps"),
        _below(ERROR_RATE, i.error_rate, t.max_error_rate, inputs=i, show=_pct,
               what="error_rate"),
        _below(GPU_UTIL, i.gpu_util, t.max_gpu_util, inputs=i, show=_pct, what="gpu_util"),
        _free_capacity_check(i, t),
        _window_check(i, t),
        _alert_check(i),
        _dependency(METRICS_SOURCE, i.metrics_problem, "the metrics source"),
        _dependency(CLUSTER_API, i.cluster_problem, "the cluster API"),
        *((_band_check(i, bands), _rising_check(i), _peak_check(i, bands)) if t.qps_aware
          else _not_qps_aware(i, t)),
    ]
    return GateReport(checks=tuple(checks), at=float(i.now), update_type=t.name)


def _free_capacity_check(i: GateInputs, t: UpdateType) -> GateCheck:
    threshold = f"≥ {_pct(t.min_free_capacity)}"
    if i.free_capacity is None:
        return GateCheck(FREE_CAPACITY, UNKNOWN, threshold, False,
                         i.unknown_because("free_capacity", source="cluster"))
    passed = i.free_capacity >= t.min_free_capacity
    reason = "enough room to move workloads" if passed else (
        f"only {_pct(i.free_capacity)} of the fleet's GPU capacity is free")
    return GateCheck(FREE_CAPACITY, _pct(i.free_capacity), threshold, passed, reason)


def _window_check(i: GateInputs, t: UpdateType) -> GateCheck:
    at = datetime.fromtimestamp(i.now, UTC)
    value = f"{at:%H:%M} UTC"
    allowed = windows_text(t.windows)
    threshold = "any time" if t.windows is None else f"within {allowed} UTC"
    if t.windows is None:
        return GateCheck(TIME_WINDOW, value, threshold, True, "any time is allowed")
    minute = at.hour * 60 + at.minute
    inside = next((w for w in t.windows if w.contains(minute)), None)
    if inside is not None:
        return GateCheck(TIME_WINDOW, value, threshold, True, f"inside {inside} UTC")
    return GateCheck(TIME_WINDOW, value, threshold, False,
                     f"outside the allowed windows ({allowed} UTC)")


def _alert_check(i: GateInputs) -> GateCheck:
    threshold = "none firing"
    if i.firing_critical is None:
        return GateCheck(NO_CRITICAL_ALERT, UNKNOWN, threshold, False,
                         i.unknown_because("firing_critical"))
    if not i.firing_critical:
        return GateCheck(NO_CRITICAL_ALERT, "none", threshold, True,
                         "no critical alert is firing")
    names = ", ".join(i.firing_critical)
    return GateCheck(NO_CRITICAL_ALERT, f"{len(i.firing_critical)} firing", threshold, False,
                     f"an incident is ongoing: {names}")


def _not_qps_aware(i: GateInputs, t: UpdateType) -> tuple[GateCheck, ...]:
    """The QPS-aware gate, shown but not applied to this update type (an emergency fix):
    its traffic limit is ``max_qps`` alone (the traffic check, which fails closed on
    unknown QPS)."""
    why = f"not applied to {t.name.replace('_', ' ')} (held to max QPS {t.max_qps:g} only)"
    value = UNKNOWN if i.qps is None else _qps(i.qps)
    return tuple(GateCheck(name, value, "not applied", True, why)
                 for name in (QPS_BAND, QPS_RISING, QPS_PEAK))


def _band_check(i: GateInputs, bands: QpsBands) -> GateCheck:
    threshold = f"≤ {bands.high_risk:g} QPS"
    band, advice = qps_band(i.qps, bands)
    if i.qps is None:
        return GateCheck(QPS_BAND, UNKNOWN, threshold, False, i.unknown_because("qps"))
    return GateCheck(QPS_BAND, f"{_qps(i.qps)} ({band})", threshold, band != "do-not-update",
                     advice)


def _rising_check(i: GateInputs) -> GateCheck:
    threshold = f"not > {RISE_FACTOR:g} × the 15-min average while rising"
    for name in ("qps", "qps_avg_15m", "qps_rising"):
        if getattr(i, name) is None:
            return GateCheck(QPS_RISING, UNKNOWN, threshold, False, i.unknown_because(name))
    assert i.qps is not None and i.qps_avg_15m is not None
    ratio = math.inf if i.qps_avg_15m == 0 and i.qps > 0 else (
        0.0 if i.qps_avg_15m == 0 else i.qps / i.qps_avg_15m)
    trend = "rising" if i.qps_rising else "not rising"
    value = f"{_qps(i.qps)}, {ratio:.2f} × {i.qps_avg_15m:.1f} ({trend})"
    fast = bool(i.qps_rising) and i.qps > RISE_FACTOR * i.qps_avg_15m
    reason = (f"QPS is rising fast: {ratio:.2f} × the 15-min average" if fast else
              "QPS is not rising fast")
    return GateCheck(QPS_RISING, value, threshold, not fast, reason)


def _peak_check(i: GateInputs, bands: QpsBands) -> GateCheck:
    threshold = f"≤ {bands.high_risk:g} QPS"
    if i.qps_peak_15m is None:
        return GateCheck(QPS_PEAK, UNKNOWN, threshold, False, i.unknown_because("qps_peak_15m"))
    passed = i.qps_peak_15m <= bands.high_risk
    reason = "the 15-min peak stayed under the limit" if passed else (
        f"traffic peaked at {_qps(i.qps_peak_15m)} within 15 minutes")
    return GateCheck(QPS_PEAK, _qps(i.qps_peak_15m), threshold, passed, reason)


# ---- figures the caller derives from what it read


def free_capacity(nodes: Sequence[Node]) -> float | None:
    """The fraction of the fleet's SM-thread capacity that is free on GPUs that can take
    work now (node ready and schedulable, GPU healthy); ``None`` for a fleet without GPUs."""
    total = sum(len(n.gpus) for n in nodes) * 100
    if total == 0:
        return None
    free = sum(g.share_free_pct for n in nodes if n.ready and n.schedulable
               for g in n.gpus if g.healthy and not g.mig_enabled)
    return max(0.0, free / total)


@dataclass(frozen=True, slots=True)
class QpsWindow:
    """The stored QPS series over the last 15 minutes: mean, peak and trend, or why not."""

    average: float | None
    peak: float | None
    rising: bool | None
    unknown: str | None = None


def qps_window_stats(points: Sequence[tuple[float, float]], *, now: float,
                     window_s: float = PEAK_WINDOW_S, min_coverage: float = 0.5) -> QpsWindow:
    """Mean, peak and trend of ``points`` (``(ts, qps)``) within ``window_s`` before
    ``now``. Unknown when the points cover less than ``min_coverage`` of the window.
    Rising: the newest third of the points averages above the oldest third."""
    inside = sorted((ts, v) for ts, v in points if now - window_s <= ts <= now)
    if len(inside) < 2:
        return QpsWindow(None, None, None, f"{len(inside)} QPS sample(s) stored in the last "
                                           f"{window_s / 60:.0f} min")
    span = inside[-1][0] - inside[0][0]
    if span < min_coverage * window_s:
        return QpsWindow(None, None, None,
                         f"the stored QPS covers {span / 60:.1f} min of the last "
                         f"{window_s / 60:.0f} min (needs {min_coverage * window_s / 60:.1f})")
    values = [v for _, v in inside]
    third = max(1, len(values) // 3)
    rising = sum(values[-third:]) / third > sum(values[:third]) / third
    return QpsWindow(sum(values) / len(values), max(values), rising)


def gate_inputs(*, now: float, telemetry: FleetTelemetry | None, metrics_problem: str | None,
                nodes: Sequence[Node] | None, cluster_problem: str | None,
                firing: Sequence[Alert], qps_points: Sequence[tuple[float, float]] | None,
                store_problem: str | None = None) -> GateInputs:
    """``GateInputs`` from what a console or the controller read, each unknown with why.

    ``telemetry``: the current reading, ``None`` when unknown (``metrics_problem`` says
    why); ``nodes``: the cluster's nodes, ``None`` when it did not answer
    (``cluster_problem``); ``firing``: the alerts firing now (ignored without a current
    reading: alerts cannot be evaluated then); ``qps_points``: the stored fleet
    ``qps_1m`` series over the last 15 minutes, ``None`` when the store did not answer
    (``store_problem``)."""
    why: dict[str, str] = {}
    qps = error_rate = util = None
    critical: tuple[str, ...] | None = None
    if telemetry is not None:
        qps = telemetry.totals.qps
        if telemetry.totals.success_rate is None:
            why["error_rate"] = "no request finished in the last 5 minutes"
        else:
            error_rate = max(0.0, 1.0 - telemetry.totals.success_rate)
        values = [g.utilization for g in telemetry.gpus]
        util = sum(values) / len(values) if values else None
        if util is None:
            why["gpu_util"] = "the reading holds no GPU"
        critical = tuple(sorted({str(a.name) for a in firing
                                 if a.severity == Severity.CRITICAL}))
    else:
        metrics_problem = metrics_problem or "no current reading"
        why["firing_critical"] = (f"alerts cannot be evaluated while the metrics are "
                                  f"unknown ({metrics_problem})")
    window: QpsWindow | None = None
    if qps_points is None:
        for name in ("qps_avg_15m", "qps_peak_15m", "qps_rising"):
            why[name] = f"the store is down ({store_problem or 'it did not answer'})"
    else:
        window = qps_window_stats(qps_points, now=now)
        if window.unknown is not None:
            for name in ("qps_avg_15m", "qps_peak_15m", "qps_rising"):
                why[name] = window.unknown
    capacity = None if nodes is None else free_capacity(nodes)
    if nodes is not None and capacity is None:
        why["free_capacity"] = "the cluster reports no GPU"
    return GateInputs(
        now=now, qps=qps, qps_avg_15m=None if window is None else window.average,
        qps_peak_15m=None if window is None else window.peak,
        qps_rising=None if window is None else window.rising,
        error_rate=error_rate, gpu_util=util, free_capacity=capacity,
        firing_critical=critical, metrics_problem=None if telemetry is not None else
        metrics_problem, cluster_problem=cluster_problem if nodes is None else None,
        why_unknown=MappingProxyType(why))

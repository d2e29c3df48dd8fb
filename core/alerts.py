"""The SPEC §5 fleet alerts, evaluated in-process the way Prometheus evaluates them.

Why it exists: in embedded mode there is no Prometheus, yet the console, the
rollout gates ("no firing critical alert") and the notifications need the same
alerts that ``deploy/prometheus/rules.yml`` ships for production. This module is
that file's twin: the same alert names, conditions, thresholds, ``for``
durations, severities and annotation templates. ``alert_rules`` renders each
rule's PromQL expression from the thresholds, and ``tests/unit/test_alerts.py``
compares it, and everything else, with the YAML, so the two cannot drift.

Invariants:

- Pure: no I/O and no clock. Time is the ``at`` of the samples the caller
  feeds, in strictly increasing order (a controller feeds one every N seconds).
- Counters are cumulative and may reset (a restarted model server). A counter
  that goes down is read as a reset, as Prometheus' ``rate`` reads it, so no
  increase is ever negative. An increase counts at the sample that shows it.
- A windowed value exists only when the held history covers the whole window
  (a sample at or before ``at - window``) and some model has a sample inside
  it with an earlier one to compare with (a model's first sample gives no rate,
  as a one-sample series gives none in Prometheus). Otherwise it is ``None``,
  and an alert reading it is inactive: absent is never read as zero
  (``QPSDroppedToZero`` needs series that report zero).
- An alert is pending from the first sample where its condition holds, firing
  once it has held for its ``for`` duration (``at - active_since >= for``), and
  inactive at the first sample where it does not hold; the same rules as
  Prometheus' alerting rules without ``keep_firing_for``.
- A deployment is a (namespace, model_name) pair (``ModelKey``), as the rules
  group and the Prometheus adapter keys: one model in two namespaces is two
  deployments, each with its own LowSuccessRate.
- Memory is bounded: samples older than the longest window are dropped, and so
  is the reset-tracking state of models not seen since.

Known differences from Prometheus, all at the edges: rates here divide the
exact increase by the exact time covered, where Prometheus extrapolates to the
window's edges (the two agree for regularly sampled counters, and can differ
slightly right after a gap or a reset); and Prometheus already gives a rate
over a window it only partly holds, where here that window is ``None``, so
after a cold start an alert can start up to one window later than Prometheus's
(replay stored samples through ``evaluate_series`` or ``observe`` to avoid it).
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from core.errors import ValidationError
from core.validate import integer, number

# vLLM counts every finished request in vllm:request_success_total, labelled by
# finished_reason; these reasons are the successful ones (rules.yml says why).
SUCCESS_FINISHED_REASONS: Final[tuple[str, ...]] = ("stop", "length")

QPS_WINDOWS_S: Final[tuple[int, ...]] = (60, 300, 900, 3600)
# The windows the alerts read; each must be one of QPS_WINDOWS_S.
HIGH_QPS_WINDOW_S: Final = 60
LOW_QPS_WINDOW_S: Final = 300
SUCCESS_WINDOW_S: Final = 300
SPIKE_WINDOW_S: Final = 300
# The longest look-back any value needs: the 1h QPS (the spike needs 2 × 5m).
HISTORY_S: Final = max(*QPS_WINDOWS_S, SUCCESS_WINDOW_S, 2 * SPIKE_WINDOW_S)

RUNBOOK_URL: Final = (
    "https://github.com/gpu-scheduler-console/gpu-scheduler-console/blob/main/docs/runbooks.md"
)


class ModelKey(NamedTuple):
    """One deployment: the model served in one namespace (the rules' grouping)."""

    namespace: str
    model_name: str


def both_spellings(function: str, metric: str, window: str, *, offset: str = "") -> str:
    """``f(vllm:m[w]) or f(vllm_m[w])``: a vLLM selector whether or not the scrape
    relabelled prometheus-client's escaped names back to colons (rules.yml says why
    ``or`` and not a regex on ``__name__``)."""
    shift = f" offset {offset}" if offset else ""
    return (f"{function}(vllm:{metric}[{window}]{shift}) or "
            f"{function}(vllm_{metric}[{window}]{shift})")


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertName(StrEnum):
    HIGH_QPS = "HighQPS"
    LOW_SUCCESS_RATE = "LowSuccessRate"
    QPS_SPIKE = "QPSSpike"
    QPS_DROPPED_TO_ZERO = "QPSDroppedToZero"
    OPTIMAL_UPDATE_WINDOW = "OptimalUpdateWindow"


class AlertStatus(StrEnum):
    PENDING = "pending"
    FIRING = "firing"


@dataclass(frozen=True)
class AlertThresholds:
    """Every number of SPEC §5; the defaults are the SPEC's. Durations in seconds."""

    high_qps: float = 200.0
    high_qps_for_s: int = 120
    min_success_rate: float = 0.95
    low_success_rate_for_s: int = 300
    spike_extra_requests: float = 1000.0
    spike_for_s: int = 60
    zero_qps_for_s: int = 120
    update_window_max_qps: float = 30.0
    update_window_for_s: int = 600

    def __post_init__(self) -> None:
        for f in fields(self):
            name = f"alerts.{f.name}"
            raw = getattr(self, f.name)
            value: float = integer(name, raw) if f.name.endswith("_for_s") else number(name, raw)
            if value < 0:
                raise ValidationError(name, "must be ≥ 0")
            object.__setattr__(self, f.name, value)
        if self.min_success_rate > 1:
            raise ValidationError("alerts.min_success_rate", "must be within [0, 1]")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> AlertThresholds:
        """Thresholds from an already-parsed settings table; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        for key in raw:
            if key not in known:
                raise ValidationError(f"alerts.{key}", f"unknown setting; expected one of "
                                                       f"{', '.join(sorted(known))}")
        return cls(**dict(raw))


@dataclass(frozen=True)
class ModelCounters:
    """One model's cumulative counters (all pods summed) and its queue at one instant."""

    requests_total: float
    requests_succeeded: float
    requests_waiting: float = 0.0

    def __post_init__(self) -> None:
        for name in ("requests_total", "requests_succeeded", "requests_waiting"):
            value = number(name, getattr(self, name))
            if value < 0:
                raise ValidationError(name, "must be ≥ 0")
            object.__setattr__(self, name, value)
        if self.requests_succeeded > self.requests_total:
            raise ValidationError("requests_succeeded", "cannot exceed requests_total")

    @classmethod
    def from_finished_reasons(
        cls, counts: Mapping[str, float], *, waiting: float = 0.0
    ) -> ModelCounters:
        """From ``vllm:request_success_total`` values keyed by ``finished_reason``."""
        total = 0.0
        succeeded = 0.0
        for reason, raw in counts.items():
            value = number(f"finished_reason.{reason}", raw)
            if value < 0:
                raise ValidationError(f"finished_reason.{reason}", "must be ≥ 0")
            total += value
            if reason in SUCCESS_FINISHED_REASONS:
                succeeded += value
        return cls(requests_total=total, requests_succeeded=succeeded, requests_waiting=waiting)


@dataclass(frozen=True)
class Sample:
    """What the controller reads every N seconds: the time and each deployment's counters."""

    at: float
    models: Mapping[ModelKey, ModelCounters]

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", number("at", self.at))
        models: dict[ModelKey, ModelCounters] = {}
        for key, counters in self.models.items():
            if not (isinstance(key, tuple) and len(key) == 2
                    and all(isinstance(part, str) for part in key)):
                raise ValidationError("models", f"key {key!r} is not (namespace, model_name)")
            models[ModelKey(*key)] = counters
        object.__setattr__(self, "models", MappingProxyType(models))


@dataclass(frozen=True)
class Rates:
    """The recording rules' values for one model or for the fleet; ``None`` = absent."""

    qps: Mapping[int, float | None]  # window in seconds -> requests finished per second
    success_rate: float | None  # over SUCCESS_WINDOW_S; None without requests
    waiting: float | None  # queue length now


@dataclass(frozen=True)
class Recorded:
    fleet: Rates
    models: Mapping[ModelKey, Rates]
    # Requests finished in the last SPIKE_WINDOW_S minus those in the window before.
    extra_requests: float | None


@dataclass(frozen=True)
class AlertRule:
    """One alerting rule, as it appears in ``deploy/prometheus/rules.yml``."""

    name: AlertName
    severity: Severity
    for_s: int
    expr: str
    summary: str  # Prometheus templates: {{ $labels.x }}, {{ printf "%.Nf" $value }}
    description: str
    runbook_url: str
    per_model: bool  # one alert per (namespace, model_name), or one for the fleet

    @property
    def for_duration(self) -> str:
        return prometheus_duration(self.for_s)

    def annotations(self, *, value: float, labels: Mapping[str, str]) -> dict[str, str]:
        return {
            "summary": render_template(self.summary, value=value, labels=labels),
            "description": render_template(self.description, value=value, labels=labels),
            "runbook_url": self.runbook_url,
        }


@dataclass(frozen=True)
class Alert:
    """An active alert: pending or firing, with its annotations rendered."""

    name: AlertName
    status: AlertStatus
    severity: Severity
    labels: Mapping[str, str]
    value: float
    active_since: float
    summary: str
    description: str
    runbook_url: str

    @property
    def firing(self) -> bool:
        return self.status is AlertStatus.FIRING


@dataclass(frozen=True)
class Evaluation:
    at: float
    recorded: Recorded
    alerts: tuple[Alert, ...]  # active now, pending or firing, in rule order
    resolved: tuple[Alert, ...]  # firing at the previous sample, inactive now (last state)

    @property
    def firing(self) -> tuple[Alert, ...]:
        return tuple(a for a in self.alerts if a.firing)

    def named(self, name: AlertName | str) -> tuple[Alert, ...]:
        return tuple(a for a in self.alerts if a.name == name)


# ------------------------------------------------------------------ the rules

_VALUE_0F = '{{ printf "%.0f" $value }}'
_VALUE_1F = '{{ printf "%.1f" $value }}'
_VALUE_3F = '{{ printf "%.3f" $value }}'
_MODEL = "{{ $labels.namespace }}/{{ $labels.model_name }}"


def alert_rules(thresholds: AlertThresholds | None = None) -> tuple[AlertRule, ...]:
    """The five SPEC §5 rules for ``thresholds``: what ``rules.yml`` must contain."""
    t = thresholds or AlertThresholds()
    high = promql_number(t.high_qps)
    ratio = promql_number(t.min_success_rate)
    extra = promql_number(t.spike_extra_requests)
    low = promql_number(t.update_window_max_qps)
    spike = prometheus_duration(SPIKE_WINDOW_S)
    return (
        AlertRule(
            name=AlertName.HIGH_QPS, severity=Severity.WARNING, for_s=t.high_qps_for_s,
            expr=f"fleet:vllm_requests:rate1m > {high}",
            summary=f"Fleet QPS above {high} for {prometheus_duration(t.high_qps_for_s)}: "
                    "do not start updates",
            description=f"The fleet served {_VALUE_1F} requests/s over the last minute "
                        f"(threshold {high}). MPS configuration changes are unsafe at this "
                        "load; planned updates wait until traffic falls.",
            runbook_url=f"{RUNBOOK_URL}#highqps", per_model=False,
        ),
        AlertRule(
            name=AlertName.LOW_SUCCESS_RATE, severity=Severity.CRITICAL,
            for_s=t.low_success_rate_for_s,
            expr=f"namespace_model_name:vllm_request_success:ratio_rate5m < {ratio}",
            summary=f"{_MODEL}: success rate below {t.min_success_rate * 100:g}% for "
                    f"{prometheus_duration(t.low_success_rate_for_s)}",
            description=f"Only {_VALUE_3F} of the requests to {_MODEL} finished with a complete "
                        f"answer over the last 5 minutes (threshold {ratio}). This is an "
                        "incident: rollouts are blocked while it fires.",
            runbook_url=f"{RUNBOOK_URL}#lowsuccessrate", per_model=True,
        ),
        AlertRule(
            name=AlertName.QPS_SPIKE, severity=Severity.WARNING, for_s=t.spike_for_s,
            expr=f"sum({both_spellings('increase', 'request_success_total', spike)}) - "
                 f"sum({both_spellings('increase', 'request_success_total', spike, offset=spike)})"
                 f" > {extra}",
            summary=f"Traffic spike: more than {extra} extra requests within {spike}",
            description=f"The fleet finished {_VALUE_0F} more requests in the last 5 minutes "
                        f"than in the 5 minutes before (threshold {extra}). Postpone planned "
                        "updates until traffic settles.",
            runbook_url=f"{RUNBOOK_URL}#qpsspike", per_model=False,
        ),
        AlertRule(
            name=AlertName.QPS_DROPPED_TO_ZERO, severity=Severity.CRITICAL,
            for_s=t.zero_qps_for_s,
            expr="fleet:vllm_requests:rate5m == 0",
            summary="Fleet QPS is zero: possible outage",
            description="The model servers are up and scraped, but none of them finished a "
                        f"request in the last 5 minutes ({_VALUE_1F} requests/s). Traffic is "
                        "not reaching the fleet.",
            runbook_url=f"{RUNBOOK_URL}#qpsdroppedtozero", per_model=False,
        ),
        AlertRule(
            name=AlertName.OPTIMAL_UPDATE_WINDOW, severity=Severity.INFO,
            for_s=t.update_window_for_s,
            expr=f"fleet:vllm_requests:rate5m < {low}",
            summary=f"Fleet QPS below {low} for {prometheus_duration(t.update_window_for_s)}: "
                    "a good time for updates",
            description=f"The fleet has served {_VALUE_1F} requests/s over the last 5 minutes "
                        f"(threshold {low}) and has stayed below it for "
                        f"{prometheus_duration(t.update_window_for_s)}. Planned MPS updates "
                        "can start once the other gates pass.",
            runbook_url=f"{RUNBOOK_URL}#optimalupdatewindow", per_model=False,
        ),
    )


def promql_number(value: float) -> str:
    """``200.0`` -> ``200``, ``0.95`` -> ``0.95``: how a threshold is written in rules.yml."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def prometheus_duration(seconds: int) -> str:
    """``120`` -> ``2m``, ``3600`` -> ``1h``, ``90`` -> ``90s``."""
    if seconds > 0 and seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds > 0 and seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


_ACTION = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_LABEL = re.compile(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)")
_PRINTF = re.compile(r'printf "%\.(\d+)f" \$value')


def render_template(template: str, *, value: float, labels: Mapping[str, str]) -> str:
    """Render the two Go-template actions the annotations use, as Prometheus would.

    Anything else raises ``ValueError``: an annotation this cannot render would
    read differently in embedded mode than in Prometheus.
    """

    def action(match: re.Match[str]) -> str:
        body = match.group(1)
        if label := _LABEL.fullmatch(body):
            return labels.get(label.group(1), "")
        if printf := _PRINTF.fullmatch(body):
            return f"{value:.{int(printf.group(1))}f}"
        raise ValueError(f"unsupported template action {{{{ {body} }}}}")

    return _ACTION.sub(action, template)


# ------------------------------------------------------------------ evaluation


@dataclass
class _Track:
    """The last raw counters of one model, to turn the next ones into increases."""

    total: float
    succeeded: float
    seen_at: float


@dataclass(frozen=True)
class _Point:
    at: float
    increases: Mapping[ModelKey, tuple[float, float]]  # (requests, successes) since last
    waiting: Mapping[ModelKey, float]


@dataclass(frozen=True)
class _Window:
    span: float
    increases: dict[ModelKey, tuple[float, float]]  # models that reported inside the window


def _start(points: list[_Point], target: float) -> int | None:
    """Index of the latest point at or before ``target``; None if history is shorter."""
    found = None
    for i, p in enumerate(points):
        if p.at > target:
            break
        found = i
    return found


def _window(points: list[_Point], *, end: int, seconds: int) -> _Window | None:
    """Increases over the ``seconds`` ending at ``points[end]``, if history covers it."""
    start = _start(points, points[end].at - seconds)
    if start is None or start == end:
        return None
    increases: dict[ModelKey, tuple[float, float]] = {}
    for p in points[start + 1:end + 1]:
        for model, (req, ok) in p.increases.items():
            before = increases.get(model, (0.0, 0.0))
            increases[model] = (before[0] + req, before[1] + ok)
    return _Window(points[end].at - points[start].at, increases)


class AlertEvaluator:
    """Feed it a ``Sample`` every N seconds; each ``observe`` returns the alerts' states."""

    def __init__(self, thresholds: AlertThresholds | None = None) -> None:
        self._thresholds = thresholds or AlertThresholds()
        self._rules = alert_rules(self._thresholds)
        self._points: deque[_Point] = deque()
        self._tracks: dict[ModelKey, _Track] = {}
        self._active: dict[tuple[AlertName, tuple[tuple[str, str], ...]], Alert] = {}

    @property
    def thresholds(self) -> AlertThresholds:
        return self._thresholds

    @property
    def rules(self) -> tuple[AlertRule, ...]:
        return self._rules

    def observe(self, sample: Sample) -> Evaluation:
        """Take one sample, evaluate every rule at ``sample.at``, return the states.

        A model missing from a sample is a gap, not a reset: its increase is
        counted at the next sample that has it.
        """
        if self._points and sample.at <= self._points[-1].at:
            raise ValidationError(
                "at", f"samples must come in increasing time order ({sample.at} after "
                      f"{self._points[-1].at})")
        self._forget_before(sample.at - HISTORY_S)
        self._points.append(self._point(sample))
        recorded = self._record()
        return self._evaluate(sample.at, recorded)

    # -- history

    def _forget_before(self, cutoff: float) -> None:
        # Keep the latest point at or before the cutoff: it is the longest window's start.
        while len(self._points) >= 2 and self._points[1].at <= cutoff:
            self._points.popleft()
        oldest = self._points[0].at if self._points else math.inf
        self._tracks = {m: t for m, t in self._tracks.items() if t.seen_at >= oldest}

    def _point(self, sample: Sample) -> _Point:
        increases: dict[ModelKey, tuple[float, float]] = {}
        for model, c in sample.models.items():
            track = self._tracks.get(model)
            if track is None:
                # First sight: what came before is unknown. Like a series with one
                # sample in Prometheus, the model has no rate yet (absent, not 0).
                pass
            elif c.requests_total < track.total or c.requests_succeeded < track.succeeded:
                increases[model] = (c.requests_total, c.requests_succeeded)  # a reset
            else:
                increases[model] = (c.requests_total - track.total,
                                    c.requests_succeeded - track.succeeded)
            self._tracks[model] = _Track(c.requests_total, c.requests_succeeded, sample.at)
        waiting = {m: c.requests_waiting for m, c in sample.models.items()}
        return _Point(sample.at, MappingProxyType(increases), MappingProxyType(waiting))

    # -- recording rules

    def _record(self) -> Recorded:
        points = list(self._points)
        newest = len(points) - 1
        windows = {s: _window(points, end=newest, seconds=s) for s in QPS_WINDOWS_S}
        success = windows[SUCCESS_WINDOW_S]
        models = sorted({m for w in windows.values() if w for m in w.increases}
                        | set(points[newest].waiting))

        def qps(window: _Window | None, model: ModelKey | None) -> float | None:
            if window is None or not window.increases:
                return None
            if model is None:
                return sum(req for req, _ in window.increases.values()) / window.span
            if model not in window.increases:
                return None
            return window.increases[model][0] / window.span

        def ratio(model: ModelKey | None) -> float | None:
            if success is None:
                return None
            chosen = (success.increases.values() if model is None
                      else [success.increases[model]] if model in success.increases else [])
            req = sum(r for r, _ in chosen)
            ok = sum(o for _, o in chosen)
            return ok / req if req > 0 else None

        waiting = points[newest].waiting
        per_model = {
            m: Rates(qps=MappingProxyType({s: qps(w, m) for s, w in windows.items()}),
                     success_rate=ratio(m), waiting=waiting.get(m))
            for m in models
        }
        fleet = Rates(qps=MappingProxyType({s: qps(w, None) for s, w in windows.items()}),
                      success_rate=ratio(None),
                      waiting=sum(waiting.values()) if waiting else None)
        return Recorded(fleet=fleet, models=MappingProxyType(per_model),
                        extra_requests=self._extra_requests(points))

    def _extra_requests(self, points: list[_Point]) -> float | None:
        newest = len(points) - 1
        current = _window(points, end=newest, seconds=SPIKE_WINDOW_S)
        if current is None or not current.increases:
            return None
        middle = _start(points, points[newest].at - SPIKE_WINDOW_S)
        previous = None if middle is None else _window(
            points, end=middle, seconds=SPIKE_WINDOW_S)
        if previous is None or not previous.increases:
            return None
        # Rates × window, so that sampling jitter does not count as extra requests.
        now = sum(r for r, _ in current.increases.values()) / current.span
        before = sum(r for r, _ in previous.increases.values()) / previous.span
        return (now - before) * SPIKE_WINDOW_S

    # -- alerting rules

    def _conditions(
        self, rule: AlertRule, recorded: Recorded
    ) -> list[tuple[dict[str, str], float]]:
        """(labels, value) for each series where ``rule``'s expression holds now."""
        t = self._thresholds
        if rule.name is AlertName.LOW_SUCCESS_RATE:
            return [({"namespace": m.namespace, "model_name": m.model_name}, r.success_rate)
                    for m, r in recorded.models.items()
                    if r.success_rate is not None and r.success_rate < t.min_success_rate]
        qps = recorded.fleet.qps
        value, holds = {
            AlertName.HIGH_QPS: (qps[HIGH_QPS_WINDOW_S], lambda v: v > t.high_qps),
            AlertName.QPS_SPIKE: (recorded.extra_requests,
                                  lambda v: v > t.spike_extra_requests),
            AlertName.QPS_DROPPED_TO_ZERO: (qps[LOW_QPS_WINDOW_S], lambda v: v == 0),
            AlertName.OPTIMAL_UPDATE_WINDOW: (qps[LOW_QPS_WINDOW_S],
                                              lambda v: v < t.update_window_max_qps),
        }[rule.name]
        return [({}, value)] if value is not None and holds(value) else []

    def _evaluate(self, at: float, recorded: Recorded) -> Evaluation:
        active: dict[tuple[AlertName, tuple[tuple[str, str], ...]], Alert] = {}
        for rule in self._rules:
            for labels, value in self._conditions(rule, recorded):
                key = (rule.name, tuple(sorted(labels.items())))
                previous = self._active.get(key)
                since = previous.active_since if previous else at
                status = AlertStatus.FIRING if at - since >= rule.for_s else AlertStatus.PENDING
                notes = rule.annotations(value=value, labels=labels)
                active[key] = Alert(
                    name=rule.name, status=status, severity=rule.severity,
                    labels=MappingProxyType(dict(labels)), value=value, active_since=since,
                    summary=notes["summary"], description=notes["description"],
                    runbook_url=notes["runbook_url"],
                )
        resolved = tuple(a for k, a in self._active.items() if a.firing and k not in active)
        self._active = active
        return Evaluation(at=at, recorded=recorded, alerts=tuple(active.values()),
                          resolved=resolved)


def evaluate_series(
    samples: Iterable[Sample], *, thresholds: AlertThresholds | None = None
) -> list[Evaluation]:
    """Evaluate a whole series from a fresh evaluator (replays, back-fills, tests)."""
    evaluator = AlertEvaluator(thresholds)
    return [evaluator.observe(s) for s in samples]

"""How MPS configuration changes may run (settings section ``[rollouts]``, SPEC §4).

Why: the gates, the planner, the best-update-time advice and the rollout engine
all read the same numbers — the update types' limits and windows, the
strategies' defaults, the canary's analysis, the circuit breaker, the business
hours of each region and the QPS to expect for them. They live here, typed and
validated once, so that a bad settings file is refused at start-up naming the
key (``rollouts.update_types.routine_optimization.max_qps``), never half-read.

Invariants (checked here):
- every key is known or refused, naming it; every number lies in its range;
- fractions (error rates, utilization, capacity, disruption) lie in [0, 1];
- a time window is ``"HH:MM-HH:MM"`` (UTC; it may wrap past midnight, never
  empty) or ``"any"``, and a list that holds ``"any"`` holds nothing else;
- each business-hours region names a real IANA time zone (``zoneinfo``) and a
  non-empty local span;
- the expected-QPS bands are ordered ``low ≤ high`` for 0, 1 and 2+ regions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.errors import ValidationError
from core.validate import integer, kind_of, number, show, text

SECTION = "rollouts"
ANY_WINDOW = "any"
# The values of ``core.rollout.plan.Strategy``; settings may write "blue-green" too.
STRATEGIES = ("rolling", "canary", "blue_green", "emergency")
MPS_BACKENDS = ("device-plugin", "dra")
UPDATE_TYPE_NAMES = ("routine_optimization", "emergency_fix", "capacity_expansion")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
MINUTES_PER_DAY = 24 * 60


def _refuse_unknown(raw: Any, known: tuple[str, ...], where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ValidationError(where, f"must be a table of settings, not {kind_of(raw)}")
    for key in raw:
        if key not in known:
            name = key if isinstance(key, str) and len(key) <= 64 else show(key)
            raise ValidationError(f"{where}.{name}", "unknown setting; expected one of "
                                                     f"{', '.join(sorted(known))}")
    return raw


def _fraction(where: str, value: Any) -> float:
    result = number(where, value)
    if not 0.0 <= result <= 1.0:
        raise ValidationError(where, "must be a fraction within 0..1")
    return result


def _within(where: str, value: Any, lo: float, hi: float) -> float:
    result = number(where, value)
    if not lo <= result <= hi:
        raise ValidationError(where, f"must be within {lo:g}..{hi:g}")
    return result


def parse_hhmm(where: str, value: Any) -> int:
    """``"HH:MM"`` (24 h) as minutes after midnight."""
    raw = text(where, value, max_length=5)
    match = _HHMM.match(raw)
    if match is None:
        raise ValidationError(where, f"{show(raw)} is not a time of day as HH:MM (00:00..23:59)")
    return int(match.group(1)) * 60 + int(match.group(2))


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A daily UTC window ``[start, end)`` in minutes after midnight; it wraps past
    midnight when ``end <= start`` (``22:00-02:00``)."""

    start_min: int
    end_min: int

    @classmethod
    def parse(cls, where: str, value: Any) -> TimeWindow:
        raw = text(where, value, max_length=11)
        start, sep, end = raw.partition("-")
        if not sep:
            raise ValidationError(where, f"{show(raw)} is not a window as HH:MM-HH:MM or "
                                         f"{ANY_WINDOW!r}")
        window = cls(parse_hhmm(where, start.strip()), parse_hhmm(where, end.strip()))
        if window.start_min == window.end_min:
            raise ValidationError(where, f"{show(raw)} is empty; write {ANY_WINDOW!r} for "
                                         "the whole day")
        return window

    def contains(self, minute_of_day: int) -> bool:
        if self.start_min < self.end_min:
            return self.start_min <= minute_of_day < self.end_min
        return minute_of_day >= self.start_min or minute_of_day < self.end_min

    def __str__(self) -> str:
        return f"{_hhmm(self.start_min)}-{_hhmm(self.end_min)}"


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def parse_windows(where: str, value: Any) -> tuple[TimeWindow, ...] | None:
    """A window list (or one window, or ``"any"``); ``None`` means any time of day."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValidationError(where, f"must be a list of windows as HH:MM-HH:MM, or "
                                     f"{ANY_WINDOW!r}")
    if any(isinstance(i, str) and i.strip().lower() == ANY_WINDOW for i in items):
        if len(items) != 1:
            raise ValidationError(where, f"{ANY_WINDOW!r} stands alone: it already means the "
                                         "whole day")
        return None
    return tuple(TimeWindow.parse(f"{where}[{i}]", item) for i, item in enumerate(items))


def windows_text(windows: tuple[TimeWindow, ...] | None) -> str:
    return ANY_WINDOW if windows is None else ", ".join(str(w) for w in windows)


UPDATE_TYPE_KEYS = ("max_qps", "max_error_rate", "max_gpu_util", "min_free_capacity",
                    "windows", "max_disruption", "qps_aware")
# Keys an update type may leave out (with their defaults).
OPTIONAL_UPDATE_TYPE_KEYS = ("qps_aware",)


@dataclass(frozen=True, slots=True)
class UpdateType:
    """One row of SPEC §4.2's update types: the limits a change of this type runs under.

    ``windows`` ``None`` = any time; ``max_disruption`` the largest fraction of the
    fleet's GPU nodes a plan of this type may take out at once; ``qps_aware``: the
    QPS-aware gate (bands, fast rise, 15-minute peak) applies. It is meant for planned
    changes; an emergency fix cannot wait for a quiet hour and is held to its own
    ``max_qps`` instead (``emergency_fix`` defaults to ``qps_aware = false``).
    """

    name: str
    max_qps: float
    max_error_rate: float
    max_gpu_util: float
    min_free_capacity: float
    windows: tuple[TimeWindow, ...] | None
    max_disruption: float
    qps_aware: bool = True

    @classmethod
    def from_mapping(cls, name: str, raw: Any, *, where: str) -> UpdateType:
        table = _refuse_unknown(raw, UPDATE_TYPE_KEYS, where)
        for key in UPDATE_TYPE_KEYS:
            if key not in table and key not in OPTIONAL_UPDATE_TYPE_KEYS:
                raise ValidationError(f"{where}.{key}", "is required")
        qps_aware = table.get("qps_aware", name != "emergency_fix")
        if not isinstance(qps_aware, bool):
            raise ValidationError(f"{where}.qps_aware", "must be true or false")
        return cls(
            name=name,
            max_qps=_within(f"{where}.max_qps", table["max_qps"], 0, 1e9),
            max_error_rate=_fraction(f"{where}.max_error_rate", table["max_error_rate"]),
            max_gpu_util=_fraction(f"{where}.max_gpu_util", table["max_gpu_util"]),
            min_free_capacity=_fraction(f"{where}.min_free_capacity",
                                        table["min_free_capacity"]),
            windows=parse_windows(f"{where}.windows", table["windows"]),
            max_disruption=_fraction(f"{where}.max_disruption", table["max_disruption"]),
            qps_aware=qps_aware,
        )

    @property
    def windows_text(self) -> str:
        return windows_text(self.windows)


_DEFAULT_TYPES = MappingProxyType({
    "routine_optimization": UpdateType(
        "routine_optimization", 50, 0.01, 0.7, 0.3,
        (TimeWindow(120, 240), TimeWindow(840, 960)), 0.10),
    "emergency_fix": UpdateType("emergency_fix", 1000, 0.05, 0.9, 0.1, None, 0.50,
                                qps_aware=False),
    "capacity_expansion": UpdateType("capacity_expansion", 100, 0.005, 0.6, 0.4,
                                     (TimeWindow(60, 300),), 0.05),
})

CANARY_KEYS = ("fraction", "min_nodes", "analysis_window_s", "max_error_rate", "max_p99_ms",
               "auto_promote")


@dataclass(frozen=True, slots=True)
class CanarySettings:
    """Canary: ``fraction`` of the GPU nodes (at least ``min_nodes``) watched for
    ``analysis_window_s``; fails above ``max_error_rate`` or ``max_p99_ms``."""

    fraction: float = 0.10
    min_nodes: int = 1
    analysis_window_s: float = 3600.0
    max_error_rate: float = 0.05
    max_p99_ms: float = 2000.0
    auto_promote: bool = False

    @classmethod
    def from_mapping(cls, raw: Any) -> CanarySettings:
        where = f"{SECTION}.canary"
        t = _refuse_unknown(raw, CANARY_KEYS, where)
        d = cls()
        auto = t.get("auto_promote", d.auto_promote)
        if not isinstance(auto, bool):
            raise ValidationError(f"{where}.auto_promote", "must be true or false")
        fraction = _fraction(f"{where}.fraction", t.get("fraction", d.fraction))
        if fraction == 0:
            raise ValidationError(f"{where}.fraction", "must be above 0")
        return cls(
            fraction=fraction,
            min_nodes=int(_within(f"{where}.min_nodes",
                                  integer(f"{where}.min_nodes", t.get("min_nodes", d.min_nodes)),
                                  1, 10_000)),
            analysis_window_s=_within(f"{where}.analysis_window_s",
                                      t.get("analysis_window_s", d.analysis_window_s),
                                      60, 7 * 86_400),
            max_error_rate=_fraction(f"{where}.max_error_rate",
                                     t.get("max_error_rate", d.max_error_rate)),
            max_p99_ms=_within(f"{where}.max_p99_ms", t.get("max_p99_ms", d.max_p99_ms),
                               1, 3_600_000),
            auto_promote=auto,
        )


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """``failures`` failed updates in a row open the breaker; ``cooldown_s`` later it
    goes half-open."""

    failures: int = 3
    cooldown_s: float = 3600.0

    @classmethod
    def from_mapping(cls, raw: Any) -> BreakerSettings:
        where = f"{SECTION}.breaker"
        t = _refuse_unknown(raw, ("failures", "cooldown_s"), where)
        d = cls()
        failures = integer(f"{where}.failures", t.get("failures", d.failures))
        return cls(failures=int(_within(f"{where}.failures", failures, 1, 100)),
                   cooldown_s=_within(f"{where}.cooldown_s", t.get("cooldown_s", d.cooldown_s),
                                      1, 30 * 86_400))


REGION_KEYS = ("timezone", "start", "end", "weekdays_only")


@dataclass(frozen=True, slots=True)
class BusinessHours:
    """A region's business hours, local time: ``[start, end)`` minutes after midnight
    in ``timezone``, Monday to Friday when ``weekdays_only``."""

    region: str
    timezone: str
    start_min: int = 9 * 60
    end_min: int = 17 * 60
    weekdays_only: bool = True

    @classmethod
    def from_mapping(cls, region: str, raw: Any) -> BusinessHours:
        where = f"{SECTION}.business_hours.{region}"
        t = _refuse_unknown(raw, REGION_KEYS, where)
        if "timezone" not in t:
            raise ValidationError(f"{where}.timezone", "is required (an IANA time zone such "
                                                       "as Europe/Berlin)")
        zone = text(f"{where}.timezone", t["timezone"], max_length=64)
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValidationError(f"{where}.timezone", f"{show(zone)} is not an IANA time "
                                                       "zone") from None
        start = parse_hhmm(f"{where}.start", t.get("start", "09:00"))
        end = parse_hhmm(f"{where}.end", t.get("end", "17:00"))
        if end <= start:
            raise ValidationError(f"{where}.end", "must be after start")
        weekdays = t.get("weekdays_only", True)
        if not isinstance(weekdays, bool):
            raise ValidationError(f"{where}.weekdays_only", "must be true or false")
        return cls(region=region, timezone=zone, start_min=start, end_min=end,
                   weekdays_only=weekdays)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def span_text(self) -> str:
        days = " Mon–Fri" if self.weekdays_only else ""
        return f"{_hhmm(self.start_min)}–{_hhmm(self.end_min)} {self.timezone}{days}"


_DEFAULT_REGIONS = (BusinessHours("US", "America/New_York"),
                    BusinessHours("EU", "Europe/Berlin"),
                    BusinessHours("Asia", "Asia/Singapore"))
EXPECTED_QPS_KEYS = ("none", "one", "two_or_more", "tolerance")


@dataclass(frozen=True, slots=True)
class ExpectedQps:
    """SPEC §4.2: the fleet QPS to expect with 0, 1 or 2+ business regions active, as
    ``(low, high)``; ``tolerance`` is how far outside the band (as a fraction of its
    edge) traffic may go before it is flagged as a large deviation."""

    none: tuple[float, float] = (10.0, 50.0)
    one: tuple[float, float] = (50.0, 150.0)
    two_or_more: tuple[float, float] = (150.0, 300.0)
    tolerance: float = 0.5

    def band(self, active_regions: int) -> tuple[float, float]:
        return self.none if active_regions <= 0 else self.one if active_regions == 1 \
            else self.two_or_more

    @classmethod
    def from_mapping(cls, raw: Any) -> ExpectedQps:
        where = f"{SECTION}.expected_qps"
        t = _refuse_unknown(raw, EXPECTED_QPS_KEYS, where)
        d = cls()

        def band(key: str) -> tuple[float, float]:
            value = t.get(key, getattr(d, key))
            if not isinstance(value, list | tuple) or len(value) != 2:
                raise ValidationError(f"{where}.{key}", "must be [low, high] in QPS")
            lo = _within(f"{where}.{key}", value[0], 0, 1e9)
            hi = _within(f"{where}.{key}", value[1], 0, 1e9)
            if hi < lo:
                raise ValidationError(f"{where}.{key}", "must be [low, high] with low ≤ high")
            return lo, hi

        return cls(none=band("none"), one=band("one"), two_or_more=band("two_or_more"),
                   tolerance=_within(f"{where}.tolerance", t.get("tolerance", d.tolerance),
                                     0, 100))


TIMING_KEYS = ("history_days", "min_history_days", "weekly_after_days", "low_quantile",
               "min_window_h", "horizon_days")


@dataclass(frozen=True, slots=True)
class TimingSettings:
    """The best-update-time search (``core.rollout.timing``).

    It reads up to ``history_days`` of fleet QPS; with less than
    ``min_history_days`` it says "unknown"; from ``weekly_after_days`` on, hours are
    compared by hour of the week, before that by hour of the day. An hour is "low"
    when its mean QPS is at or below the ``low_quantile`` of all hours; a proposed
    window lasts at least ``min_window_h`` hours and starts within ``horizon_days``.
    """

    history_days: float = 30.0
    min_history_days: float = 3.0
    weekly_after_days: float = 14.0
    low_quantile: float = 0.25
    min_window_h: int = 1
    horizon_days: float = 7.0

    @classmethod
    def from_mapping(cls, raw: Any) -> TimingSettings:
        where = f"{SECTION}.timing"
        t = _refuse_unknown(raw, TIMING_KEYS, where)
        d = cls()
        out = cls(
            history_days=_within(f"{where}.history_days",
                                 t.get("history_days", d.history_days), 1, 366),
            min_history_days=_within(f"{where}.min_history_days",
                                     t.get("min_history_days", d.min_history_days), 1, 366),
            weekly_after_days=_within(f"{where}.weekly_after_days",
                                      t.get("weekly_after_days", d.weekly_after_days), 7, 366),
            low_quantile=_within(f"{where}.low_quantile",
                                 t.get("low_quantile", d.low_quantile), 0.01, 0.99),
            min_window_h=int(_within(f"{where}.min_window_h", integer(
                f"{where}.min_window_h", t.get("min_window_h", d.min_window_h)), 1, 24)),
            horizon_days=_within(f"{where}.horizon_days",
                                 t.get("horizon_days", d.horizon_days), 1, 31),
        )
        if out.min_history_days > out.history_days:
            raise ValidationError(f"{where}.min_history_days", "must not exceed history_days")
        return out


KEYS = ("strategy", "window", "max_disruption", "validation_timeout_s", "mps_backend",
        "emergency_max_disrupted", "update_types", "canary", "breaker", "business_hours",
        "expected_qps", "timing")


@dataclass(frozen=True)
class RolloutSettings:
    """The ``[rollouts]`` table (SPEC §4.1–4.4)."""

    strategy: str = "blue_green"
    window: tuple[TimeWindow, ...] | None = (TimeWindow(120, 240),)
    max_disruption: float = 0.20
    validation_timeout_s: float = 300.0
    # How the planner compiles layouts: named device-plugin configs per node, or DRA claims.
    mps_backend: str = "device-plugin"
    emergency_max_disrupted: float = 0.30
    update_types: Mapping[str, UpdateType] = field(default_factory=lambda: _DEFAULT_TYPES)
    canary: CanarySettings = field(default_factory=CanarySettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    business_hours: tuple[BusinessHours, ...] = _DEFAULT_REGIONS
    expected_qps: ExpectedQps = field(default_factory=ExpectedQps)
    timing: TimingSettings = field(default_factory=TimingSettings)

    def update_type(self, name: str) -> UpdateType:
        """The update type called ``name``; ``ValidationError("update_type")`` otherwise."""
        try:
            return self.update_types[name]
        except KeyError:
            raise ValidationError("update_type", f"{show(name)} is not one of "
                                                 f"{', '.join(self.update_types)}") from None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> RolloutSettings:
        """From the ``[rollouts]`` table; unknown keys are refused, naming the key."""
        t = _refuse_unknown(raw, KEYS, SECTION)
        d = cls()
        strategy = text(f"{SECTION}.strategy", t.get("strategy", d.strategy),
                        max_length=32).replace("-", "_")
        if strategy not in STRATEGIES:
            raise ValidationError(f"{SECTION}.strategy", f"{show(strategy)} is not one of "
                                                         f"{', '.join(STRATEGIES)}")
        backend = text(f"{SECTION}.mps_backend", t.get("mps_backend", d.mps_backend),
                       max_length=32)
        if backend not in MPS_BACKENDS:
            raise ValidationError(f"{SECTION}.mps_backend", f"{show(backend)} is not one of "
                                                            f"{', '.join(MPS_BACKENDS)}")
        types_raw = _refuse_unknown(t.get("update_types", {}), UPDATE_TYPE_NAMES,
                                    f"{SECTION}.update_types")
        types = dict(_DEFAULT_TYPES)
        for name, table in types_raw.items():
            where = f"{SECTION}.update_types.{name}"
            # A partial table overrides the defaults' keys one by one.
            base = _type_mapping(_DEFAULT_TYPES[name])
            merged = {**base, **_refuse_unknown(table, UPDATE_TYPE_KEYS, where)}
            types[name] = UpdateType.from_mapping(name, merged, where=where)
        regions_raw = t.get("business_hours")
        regions = d.business_hours
        if regions_raw is not None:
            if not isinstance(regions_raw, Mapping) or not regions_raw:
                raise ValidationError(f"{SECTION}.business_hours",
                                      "must be a table of regions (US, EU, Asia, …)")
            regions = tuple(BusinessHours.from_mapping(_region_name(name), table)
                            for name, table in regions_raw.items())
        return cls(
            strategy=strategy,
            window=parse_windows(f"{SECTION}.window", t.get("window", "02:00-04:00")),
            max_disruption=_fraction(f"{SECTION}.max_disruption",
                                     t.get("max_disruption", d.max_disruption)),
            validation_timeout_s=_within(f"{SECTION}.validation_timeout_s",
                                         t.get("validation_timeout_s", d.validation_timeout_s),
                                         1, 86_400),
            mps_backend=backend,
            emergency_max_disrupted=_fraction(
                f"{SECTION}.emergency_max_disrupted",
                t.get("emergency_max_disrupted", d.emergency_max_disrupted)),
            update_types=MappingProxyType(types),
            canary=CanarySettings.from_mapping(t.get("canary", {})),
            breaker=BreakerSettings.from_mapping(t.get("breaker", {})),
            business_hours=regions,
            expected_qps=ExpectedQps.from_mapping(t.get("expected_qps", {})),
            timing=TimingSettings.from_mapping(t.get("timing", {})),
        )


def _region_name(name: Any) -> str:
    if not isinstance(name, str) or not re.match(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$", name):
        raise ValidationError(f"{SECTION}.business_hours",
                              f"region name {show(name)} must be 1 to 32 letters, digits, "
                              "'-' or '_'")
    return name


def _type_mapping(t: UpdateType) -> dict[str, Any]:
    return {"max_qps": t.max_qps, "max_error_rate": t.max_error_rate,
            "max_gpu_util": t.max_gpu_util, "min_free_capacity": t.min_free_capacity,
            "windows": [ANY_WINDOW] if t.windows is None else [str(w) for w in t.windows],
            "max_disruption": t.max_disruption}


__all__ = [
    "ANY_WINDOW", "MPS_BACKENDS", "STRATEGIES", "UPDATE_TYPE_NAMES", "BreakerSettings",
    "BusinessHours", "CanarySettings", "ExpectedQps", "RolloutSettings", "TimeWindow",
    "TimingSettings", "UpdateType", "parse_hhmm", "parse_windows", "windows_text",
]

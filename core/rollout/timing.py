"""The best time to update (SPEC §4.2): recurring quiet hours outside business hours.

Why: the gates say whether a change may run *now*; operators also want to know
*when* it will. From up to 30 days of stored fleet QPS this module finds the
hours that are quiet again and again (by hour of the week once there are two
weeks of history, by hour of the day before that), keeps those outside the
business hours of every region (US, EU, Asia: 09:00–17:00 local, Monday to
Friday, through ``zoneinfo`` so daylight saving time is right for each date),
and proposes the next such window after now. It also says what QPS to expect
for the number of business regions active now, and flags a large deviation.

Invariants:
- unknown is not zero: too little history gives no window but "unknown",
  with how much history there is and how much is needed; no current QPS gives
  no deviation verdict (``deviates`` is ``None``);
- an hour is only "recurring" when it was seen on at least two distinct days
  (or weeks), so one quiet night is not a pattern;
- a proposed window starts at or after ``now`` and never overlaps any
  region's business hours;
- pure: the caller passes ``now`` (epoch seconds) and the history.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from core.rollout_settings import BusinessHours, ExpectedQps, RolloutSettings

HOUR_S = 3600
DAY_S = 86_400
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
BY_WEEK = "hour of the week"
BY_DAY = "hour of the day"
MIN_OCCURRENCES = 2
# Instants inside an hour at which business hours are checked (minutes), so that a zone
# with a half-hour offset cannot hide a business half-hour inside a proposed hour.
_PROBES_MIN = (0, 15, 30, 45, 59)


@dataclass(frozen=True, slots=True)
class QuietHour:
    """A recurring hour slot and its mean QPS over the days (or weeks) it was seen."""

    slot: int  # hour of the week (0 = Monday 00:00 UTC) or hour of the day, UTC
    label: str
    mean_qps: float
    occurrences: int


@dataclass(frozen=True, slots=True)
class ProposedWindow:
    """A concrete window ``[start, end)`` in epoch seconds, quiet and off-business."""

    start: float
    end: float
    mean_qps: float  # what the history expects over it

    @property
    def hours(self) -> int:
        return round((self.end - self.start) / HOUR_S)

    def label(self) -> str:
        a, b = datetime.fromtimestamp(self.start, UTC), datetime.fromtimestamp(self.end, UTC)
        return f"{WEEKDAYS[a.weekday()]} {a:%Y-%m-%d %H:%M}–{b:%H:%M} UTC"


@dataclass(frozen=True, slots=True)
class ExpectedTraffic:
    """The QPS to expect for the business regions active now, and whether traffic
    deviates from it by more than the tolerance (``None``: QPS unknown)."""

    active_regions: tuple[str, ...]
    low: float
    high: float
    qps: float | None
    deviates: bool | None
    message: str


@dataclass(frozen=True, slots=True)
class UpdateTimeAdvice:
    next_window: ProposedWindow | None
    windows: tuple[ProposedWindow, ...]
    quiet_hours: tuple[QuietHour, ...]
    by: str | None  # BY_WEEK, BY_DAY, or None when unknown
    history_days: float
    expected: ExpectedTraffic
    unknown: str | None = None  # why no window can be proposed

    @property
    def known(self) -> bool:
        return self.unknown is None


def is_business_time(ts: float, region: BusinessHours) -> bool:
    """Whether ``ts`` falls inside ``region``'s business hours, local time."""
    local = datetime.fromtimestamp(ts, UTC).astimezone(region.zone)
    if region.weekdays_only and local.weekday() >= 5:
        return False
    minute = local.hour * 60 + local.minute
    return region.start_min <= minute < region.end_min


def active_regions(ts: float, regions: Sequence[BusinessHours]) -> tuple[str, ...]:
    return tuple(r.region for r in regions if is_business_time(ts, r))


def _off_business(hour_start: float, regions: Sequence[BusinessHours]) -> bool:
    return not any(is_business_time(hour_start + m * 60, r)
                   for m in _PROBES_MIN for r in regions)


def expected_traffic(*, now: float, qps: float | None, regions: Sequence[BusinessHours],
                     expected: ExpectedQps) -> ExpectedTraffic:
    """SPEC §4.2's expected QPS by active business regions (none, one, two or more)."""
    active = active_regions(now, regions)
    low, high = expected.band(len(active))
    who = ", ".join(active) if active else "no region"
    band = f"{low:g}–{high:g} QPS expected with {who} in business hours"
    if qps is None:
        return ExpectedTraffic(active, low, high, None, None, f"{band}; current QPS unknown")
    floor, ceiling = low * (1 - expected.tolerance), high * (1 + expected.tolerance)
    if qps < floor or qps > ceiling:
        side = "below" if qps < floor else "above"
        return ExpectedTraffic(active, low, high, qps, True,
                               f"{band}; {qps:.1f} QPS is far {side} it (beyond "
                               f"{expected.tolerance:.0%} of the band's edge)")
    return ExpectedTraffic(active, low, high, qps, False, f"{band}; {qps:.1f} QPS is in line")


def _slot(ts: float, *, weekly: bool) -> int:
    at = datetime.fromtimestamp(ts, UTC)
    return at.weekday() * 24 + at.hour if weekly else at.hour


def _slot_label(slot: int, *, weekly: bool) -> str:
    if weekly:
        return f"{WEEKDAYS[slot // 24]} {slot % 24:02d}:00 UTC"
    return f"daily {slot:02d}:00 UTC"


def quiet_hours(history: Sequence[tuple[float, float]], *, weekly: bool, low_quantile: float
                ) -> tuple[QuietHour, ...]:
    """The recurring slots whose mean QPS is at or below the ``low_quantile`` of all
    recurring slots and below their median, quietest first."""
    hourly: dict[int, list[float]] = defaultdict(list)
    for ts, qps in history:
        hourly[int(ts // HOUR_S)].append(qps)
    per_slot: dict[int, list[float]] = defaultdict(list)
    for hour, values in hourly.items():
        per_slot[_slot(hour * HOUR_S, weekly=weekly)].append(sum(values) / len(values))
    recurring = {slot: sum(v) / len(v) for slot, v in per_slot.items()
                 if len(v) >= MIN_OCCURRENCES}
    if not recurring:
        return ()
    means = sorted(recurring.values())
    threshold = means[min(len(means) - 1, max(0, math.ceil(low_quantile * len(means)) - 1))]
    median = means[len(means) // 2]
    # Quiet means quieter than usual: in a flat profile no hour is.
    quiet = [QuietHour(slot, _slot_label(slot, weekly=weekly), mean, len(per_slot[slot]))
             for slot, mean in recurring.items() if mean <= threshold and mean < median]
    return tuple(sorted(quiet, key=lambda q: (q.mean_qps, q.slot)))


def best_update_time(history: Sequence[tuple[float, float]], *, now: float,
                     settings: RolloutSettings, qps: float | None = None) -> UpdateTimeAdvice:
    """The next quiet, off-business window after ``now`` from stored fleet QPS
    (``(ts, qps)`` points, hourly or finer), and the traffic to expect now."""
    timing = settings.timing
    expected = expected_traffic(now=now, qps=qps, regions=settings.business_hours,
                                expected=settings.expected_qps)
    since = now - timing.history_days * DAY_S
    points = [(float(ts), float(v)) for ts, v in history
              if since <= ts <= now and math.isfinite(v) and v >= 0]
    span_days = (max(p[0] for p in points) - min(p[0] for p in points)) / DAY_S \
        if points else 0.0
    if span_days < timing.min_history_days:
        stored = f"{span_days:.1f} days" if span_days >= 1 else f"{span_days * 24:.1f} hours"
        return UpdateTimeAdvice(
            None, (), (), None, span_days, expected,
            unknown=(f"needs at least {timing.min_history_days:g} days of stored QPS "
                     f"history to find recurring quiet hours; {stored} stored"))
    weekly = span_days >= timing.weekly_after_days
    quiet = quiet_hours(points, weekly=weekly, low_quantile=timing.low_quantile)
    by = BY_WEEK if weekly else BY_DAY
    if not quiet:
        return UpdateTimeAdvice(None, (), (), by, span_days, expected,
                                unknown=f"no {by} is recurrently quieter than the others")
    mean_of = {q.slot: q.mean_qps for q in quiet}
    first = math.ceil(now / HOUR_S) * HOUR_S
    windows: list[ProposedWindow] = []
    run: list[tuple[float, float]] = []
    for k in range(int(timing.horizon_days * 24) + 1):
        start = first + k * HOUR_S
        slot = _slot(start, weekly=weekly)
        if slot in mean_of and _off_business(start, settings.business_hours):
            run.append((start, mean_of[slot]))
            continue
        _close(run, windows, min_hours=timing.min_window_h)
        run = []
    _close(run, windows, min_hours=timing.min_window_h)
    unknown = None if windows else (
        f"no quiet hour falls outside every region's business hours within "
        f"{timing.horizon_days:g} days")
    return UpdateTimeAdvice(windows[0] if windows else None, tuple(windows), quiet, by,
                            span_days, expected, unknown=unknown)


def _close(run: list[tuple[float, float]], out: list[ProposedWindow], *, min_hours: int
           ) -> None:
    if len(run) >= min_hours:
        out.append(ProposedWindow(run[0][0], run[-1][0] + HOUR_S,
                                  sum(m for _, m in run) / len(run)))

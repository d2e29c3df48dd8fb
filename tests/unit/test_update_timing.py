"""Best update time (SPEC §4.2): recurring quiet hours, outside business hours, next one."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from core.rollout.timing import (
    BY_DAY,
    BY_WEEK,
    active_regions,
    best_update_time,
    expected_traffic,
    is_business_time,
)
from core.rollout_settings import RolloutSettings

SETTINGS = RolloutSettings()
REGIONS = SETTINGS.business_hours
EU = next(r for r in REGIONS if r.region == "EU")
# Tuesday 2026-12-01 12:00 UTC.
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _history(days: float, qps_at, *, step_s: int = 3600) -> list[tuple[float, float]]:
    start = NOW - days * 86_400
    n = int(days * 86_400 // step_s)
    return [(start + i * step_s, qps_at(_at(start + i * step_s))) for i in range(n)]


def _nightly(at: datetime) -> float:
    # Quiet at 23:00 and 00:00 UTC (off-business everywhere) and at 03:00 UTC (Singapore's
    # business hours: quiet, but not a time to update); busy otherwise.
    return 8.0 if at.hour in (23, 0, 3) else 180.0 + at.hour


def test_a_recurring_quiet_window_outside_business_hours_is_proposed() -> None:
    advice = best_update_time(_history(30, _nightly), now=NOW, settings=SETTINGS, qps=160.0)
    assert advice.known and advice.by == BY_WEEK
    window = advice.next_window
    assert window is not None
    assert (_at(window.start), _at(window.end)) == (
        datetime(2026, 12, 1, 23, 0, tzinfo=UTC), datetime(2026, 12, 2, 1, 0, tzinfo=UTC))
    assert window.hours == 2 and window.mean_qps == 8.0
    assert window.label() == "Tue 2026-12-01 23:00–01:00 UTC"
    # The quiet 03:00 hour is recurring, but Singapore is at work then: never proposed.
    assert any(q.label.endswith("03:00 UTC") for q in advice.quiet_hours)
    assert all(_at(w.start).hour != 3 for w in advice.windows)
    for w in advice.windows:
        assert w.start >= NOW
        probe = w.start
        while probe < w.end:
            assert not active_regions(probe, REGIONS), _at(probe)
            probe += 900


def test_finer_history_gives_the_same_window() -> None:
    coarse = best_update_time(_history(30, _nightly), now=NOW, settings=SETTINGS)
    fine = best_update_time(_history(30, _nightly, step_s=300), now=NOW, settings=SETTINGS)
    assert fine.next_window == coarse.next_window


def test_history_older_than_thirty_days_is_ignored() -> None:
    old_quiet = [(ts - 40 * 86_400, 1.0) for ts, _ in _history(10, _nightly)]
    advice = best_update_time(old_quiet, now=NOW, settings=SETTINGS)
    assert not advice.known and advice.next_window is None


def test_too_little_history_is_unknown_and_says_how_much_is_needed() -> None:
    advice = best_update_time(_history(2, _nightly), now=NOW, settings=SETTINGS)
    assert advice.next_window is None and advice.by is None
    assert advice.unknown == ("needs at least 3 days of stored QPS history to find recurring "
                              "quiet hours; 2.0 days stored")
    nothing = best_update_time([], now=NOW, settings=SETTINGS)
    assert nothing.unknown is not None and nothing.unknown.endswith("; 0.0 hours stored")
    half_day = best_update_time(_history(0.5, _nightly), now=NOW, settings=SETTINGS)
    assert half_day.unknown is not None and half_day.unknown.endswith("; 11.0 hours stored")


def test_under_two_weeks_hours_are_compared_by_hour_of_the_day() -> None:
    advice = best_update_time(_history(5, _nightly), now=NOW, settings=SETTINGS)
    assert advice.by == BY_DAY
    assert advice.next_window is not None and _at(advice.next_window.start).hour == 23


def test_by_hour_of_the_week_a_weekend_lull_is_found() -> None:
    def saturday_noon(at: datetime) -> float:
        return 5.0 if at.weekday() == 5 and at.hour in (12, 13) else 150.0

    advice = best_update_time(_history(30, saturday_noon), now=NOW, settings=SETTINGS)
    window = advice.next_window
    assert window is not None
    # Weekends are outside business hours (weekdays_only); the next Saturday is Dec 5.
    assert _at(window.start) == datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    assert window.hours == 2


def test_quiet_hours_inside_business_hours_only_give_no_window() -> None:
    def quiet_at_berlin_lunch(at: datetime) -> float:
        return 3.0 if at.hour == 11 else 90.0

    advice = best_update_time(_history(30, quiet_at_berlin_lunch), now=NOW,
                              settings=replace(SETTINGS, business_hours=tuple(
                                  replace(r, weekdays_only=False) for r in REGIONS)))
    assert advice.next_window is None
    assert advice.unknown is not None and "business hours" in advice.unknown


def test_business_hours_follow_daylight_saving_time() -> None:
    # 07:30 UTC is 09:30 in Berlin in summer (CEST), 08:30 in winter (CET).
    assert is_business_time(datetime(2026, 7, 1, 7, 30, tzinfo=UTC).timestamp(), EU)
    assert not is_business_time(datetime(2026, 12, 1, 7, 30, tzinfo=UTC).timestamp(), EU)
    # A Saturday is not a business day.
    assert not is_business_time(datetime(2026, 12, 5, 10, 0, tzinfo=UTC).timestamp(), EU)


def test_expected_qps_follows_the_active_regions_and_flags_a_large_deviation() -> None:
    # Tuesday 12:00 UTC: only the EU is at work.
    assert active_regions(NOW, REGIONS) == ("EU",)
    one = expected_traffic(now=NOW, qps=100.0, regions=REGIONS, expected=SETTINGS.expected_qps)
    assert (one.low, one.high, one.deviates) == (50, 150, False)
    far = expected_traffic(now=NOW, qps=400.0, regions=REGIONS, expected=SETTINGS.expected_qps)
    assert far.deviates is True and "far above" in far.message
    unknown = expected_traffic(now=NOW, qps=None, regions=REGIONS,
                               expected=SETTINGS.expected_qps)
    assert unknown.deviates is None and "unknown" in unknown.message
    # 15:00 UTC: the EU and the US overlap.
    overlap = NOW + 3 * 3600
    assert set(active_regions(overlap, REGIONS)) == {"EU", "US"}
    two = expected_traffic(now=overlap, qps=10.0, regions=REGIONS,
                           expected=SETTINGS.expected_qps)
    assert (two.low, two.high, two.deviates) == (150, 300, True)
    # 23:30 UTC: nobody at work.
    night = NOW + 11.5 * 3600
    assert active_regions(night, REGIONS) == ()
    assert expected_traffic(now=night, qps=30.0, regions=REGIONS,
                            expected=SETTINGS.expected_qps).deviates is False


def test_flat_traffic_has_no_quiet_hour_to_propose() -> None:
    advice = best_update_time(_history(30, lambda at: 40.0), now=NOW, settings=SETTINGS)
    assert advice.next_window is None and advice.quiet_hours == ()
    assert advice.unknown == "no hour of the week is recurrently quieter than the others"

"""The ``[rollouts]`` settings: SPEC §4 defaults, and every bad key or value refused by name."""

from __future__ import annotations

import pytest

from core.adapters.settings_source import default_mapping
from core.errors import ValidationError
from core.rollout_settings import RolloutSettings, TimeWindow, parse_windows
from core.settings import deep_merge, parse_settings


def _parse(extra: dict) -> RolloutSettings:
    return parse_settings(deep_merge(default_mapping(), {"rollouts": extra})).rollouts


def test_the_packaged_defaults_are_spec_section_4() -> None:
    r = parse_settings(default_mapping()).rollouts
    routine = r.update_type("routine_optimization")
    assert (routine.max_qps, routine.max_error_rate, routine.max_gpu_util,
            routine.min_free_capacity, routine.max_disruption) == (50, 0.01, 0.7, 0.3, 0.10)
    assert routine.windows_text == "02:00-04:00, 14:00-16:00"
    emergency = r.update_type("emergency_fix")
    assert (emergency.max_qps, emergency.windows, emergency.max_disruption) == (1000, None, 0.5)
    expansion = r.update_type("capacity_expansion")
    assert (expansion.max_qps, expansion.max_error_rate, expansion.min_free_capacity,
            expansion.windows_text, expansion.max_disruption) == (
        100, 0.005, 0.4, "01:00-05:00", 0.05)
    assert (r.strategy, r.max_disruption, r.validation_timeout_s) == ("blue_green", 0.2, 300)
    assert r.window == (TimeWindow(120, 240),)
    c = r.canary
    assert (c.fraction, c.min_nodes, c.analysis_window_s, c.max_error_rate, c.max_p99_ms,
            c.auto_promote) == (0.10, 1, 3600, 0.05, 2000, False)
    assert r.emergency_max_disrupted == 0.30
    assert (r.breaker.failures, r.breaker.cooldown_s) == (3, 3600)
    assert [(b.region, b.timezone, b.start_min, b.end_min) for b in r.business_hours] == [
        ("US", "America/New_York", 540, 1020), ("EU", "Europe/Berlin", 540, 1020),
        ("Asia", "Asia/Singapore", 540, 1020)]
    e = r.expected_qps
    assert (e.band(0), e.band(1), e.band(2), e.band(3)) == (
        (10, 50), (50, 150), (150, 300), (150, 300))
    # The file's defaults and the dataclass's agree.
    assert r == RolloutSettings()


def test_a_partial_update_type_overrides_only_its_keys() -> None:
    r = _parse({"update_types": {"routine_optimization": {"max_qps": 20}}})
    assert r.update_type("routine_optimization").max_qps == 20
    assert r.update_type("routine_optimization").max_error_rate == 0.01


def test_blue_green_may_be_written_with_a_hyphen() -> None:
    assert _parse({"strategy": "blue-green"}).strategy == "blue_green"
    assert _parse({"strategy": "canary"}).strategy == "canary"


@pytest.mark.parametrize(("extra", "field"), [
    ({"strategy": "yolo"}, "rollouts.strategy"),
    ({"mps_backend": "mig"}, "rollouts.mps_backend"),
    ({"max_disruption": 1.5}, "rollouts.max_disruption"),
    ({"validation_timeout_s": 0}, "rollouts.validation_timeout_s"),
    ({"window": "25:00-26:00"}, "rollouts.window[0]"),
    ({"window": ["02:00-02:00"]}, "rollouts.window[0]"),
    ({"window": ["any", "02:00-04:00"]}, "rollouts.window"),
    ({"window": []}, "rollouts.window"),
    ({"update_types": {"weekly_patch": {"max_qps": 1}}}, "rollouts.update_types.weekly_patch"),
    ({"update_types": {"emergency_fix": {"max_qps": -1}}},
     "rollouts.update_types.emergency_fix.max_qps"),
    ({"update_types": {"emergency_fix": {"max_error_rate": 2}}},
     "rollouts.update_types.emergency_fix.max_error_rate"),
    ({"update_types": {"emergency_fix": {"windows": "2am"}}},
     "rollouts.update_types.emergency_fix.windows[0]"),
    ({"update_types": {"emergency_fix": {"colour": "red"}}},
     "rollouts.update_types.emergency_fix.colour"),
    ({"canary": {"fraction": 0}}, "rollouts.canary.fraction"),
    ({"canary": {"min_nodes": 0.5}}, "rollouts.canary.min_nodes"),
    ({"canary": {"auto_promote": "yes"}}, "rollouts.canary.auto_promote"),
    ({"canary": {"max_p99": 3}}, "rollouts.canary.max_p99"),
    ({"breaker": {"failures": 0}}, "rollouts.breaker.failures"),
    ({"business_hours": {"US": {"timezone": "Mars/Olympus"}}},
     "rollouts.business_hours.US.timezone"),
    ({"business_hours": {"EU": {"start": "17:00", "end": "09:00"}}},
     "rollouts.business_hours.EU.end"),
    ({"business_hours": {"LATAM": {"start": "09:00"}}}, "rollouts.business_hours.LATAM.timezone"),
    ({"expected_qps": {"one": [150, 50]}}, "rollouts.expected_qps.one"),
    ({"expected_qps": {"one": 50}}, "rollouts.expected_qps.one"),
    ({"timing": {"min_history_days": 40}}, "rollouts.timing.min_history_days"),
    ({"timing": {"low_quantile": 1}}, "rollouts.timing.low_quantile"),
    ({"surprise": 1}, "rollouts.surprise"),
])
def test_bad_rollout_settings_are_refused_naming_the_key(extra: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        _parse(extra)
    assert err.value.field == field


def test_windows_may_wrap_past_midnight_or_be_any() -> None:
    (late,) = parse_windows("w", ["22:00-02:00"]) or ()
    assert late.contains(23 * 60) and late.contains(60) and not late.contains(12 * 60)
    assert str(late) == "22:00-02:00"
    assert parse_windows("w", "any") is None
    assert parse_windows("w", ["ANY"]) is None


def test_an_unknown_update_type_is_refused_by_name() -> None:
    with pytest.raises(ValidationError) as err:
        RolloutSettings().update_type("friday_deploy")
    assert err.value.field == "update_type"

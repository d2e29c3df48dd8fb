from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path

import pytest

from core.adapters.settings_source import default_mapping, env_overrides, load_settings
from core.errors import ValidationError
from core.model import PlacementRequest, Priority, SchedulerWeights, WorkloadClass
from core.settings import Settings, deep_merge, parse_settings

GOOD = {"model_name": "llama-7b", "model_memory_gb": 8, "priority": "high",
        "latency_sla_ms": 100}


def test_valid_request_is_parsed_into_typed_values() -> None:
    r = PlacementRequest.parse({**GOOD, "expected_qps": "12.5", "labels": {"team": "search"}})
    assert r.priority is Priority.HIGH
    assert r.model_memory_gb == 8.0
    assert r.expected_qps == 12.5
    assert r.memory_mib == 8192
    assert dict(r.labels) == {"team": "search"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model_memory_gb": -1}, "model_memory_gb"),
        ({"model_memory_gb": 0}, "model_memory_gb"),
        ({"model_memory_gb": float("nan")}, "model_memory_gb"),
        ({"model_memory_gb": "lots"}, "model_memory_gb"),
        ({"model_memory_gb": True}, "model_memory_gb"),
        ({"priority": "URGENT"}, "priority"),
        ({"latency_sla_ms": 0}, "latency_sla_ms"),
        ({"latency_sla_ms": -5}, "latency_sla_ms"),
        ({"latency_sla_ms": math.inf}, "latency_sla_ms"),
        ({"model_name": "Bad Name!"}, "model_name"),
        ({"model_name": ""}, "model_name"),
        ({"expected_qps": -1}, "expected_qps"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"namespace": "Not_OK"}, "namespace"),
        ({"labels": {"bad key!": "x"}}, "labels.bad key!"),
        ({"gpu": "H100"}, "gpu"),
    ],
)
def test_bad_request_is_refused_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        PlacementRequest.parse({**GOOD, **change})
    assert err.value.field == field


def test_model_larger_than_any_gpu_is_refused(settings: Settings) -> None:
    with pytest.raises(ValidationError, match="larger than the largest GPU") as err:
        PlacementRequest.parse({**GOOD, "model_memory_gb": 81},
                               max_gpu_memory_gb=settings.catalog.max_memory_gb)
    assert err.value.field == "model_memory_gb"


def test_missing_required_field_is_named() -> None:
    raw = dict(GOOD)
    del raw["latency_sla_ms"]
    with pytest.raises(ValidationError) as err:
        PlacementRequest.parse(raw)
    assert err.value.field == "latency_sla_ms"


def test_weights_must_sum_to_one_and_stay_in_range() -> None:
    SchedulerWeights()  # the defaults are valid
    with pytest.raises(ValidationError, match="sum to 1"):
        SchedulerWeights(0.3, 0.3, 0.3, 0.3, 0.3)
    with pytest.raises(ValidationError) as err:
        SchedulerWeights(1.2, -0.2, 0.0, 0.0, 0.0)
    assert err.value.field == "weights.efficiency"


def test_normalized_weights_sum_to_exactly_one() -> None:
    w = SchedulerWeights.normalized({"efficiency": 3, "affinity": 3, "utilization": 1,
                                     "power": 1, "mps": 1})
    assert sum(w.as_dict().values()) == pytest.approx(1.0, abs=1e-12)


def test_catalog_keeps_seed_figures_and_real_figures_beside_them(settings: Settings) -> None:
    h100, a100 = settings.catalog["H100"], settings.catalog["A100"]
    assert (h100.tops, a100.tops) == (1000, 624)
    assert h100.dense_int8_tops == 1979 and h100.dense_bf16_tflops == 989
    assert a100.dense_int8_tops == 624
    assert h100.price_per_gpu_hour == Decimal("4.92")
    assert a100.price_per_gpu_hour == Decimal("1.84")
    assert settings.catalog.electricity_per_kwh == Decimal("0.12")
    assert (h100.memory_mib, a100.memory_mib) == (80 * 1024, 40 * 1024)


def test_operator_can_switch_the_efficiency_figure_to_real_dense_int8() -> None:
    s = parse_settings(deep_merge(default_mapping(),
                                  {"placement": {"throughput_figure": "dense_int8_tops"}}))
    assert s.catalog.throughput("H100") == 1979
    # With real figures the H100 is the more efficient GPU per watt.
    assert s.catalog.tops_per_watt("H100") > s.catalog.tops_per_watt("A100")


def test_bad_settings_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "settings.toml"
    bad.write_text("[placement]\nmax_utilization = 1.5\n")
    with pytest.raises(ValidationError) as err:
        load_settings(bad, env={})
    assert err.value.field == "placement.max_utilization"
    with pytest.raises(ValidationError) as err:
        parse_settings(deep_merge(default_mapping(), {"catalog": {"A100": {"tdp_w": -1}}}))
    assert err.value.field == "catalog.A100.tdp_w"
    with pytest.raises(ValidationError) as err:
        parse_settings(deep_merge(default_mapping(), {"classes": {"tiny": {"preferred": "V100"}}}))
    assert err.value.field == "classes.tiny.preferred"


def test_yaml_settings_file_and_environment_override(tmp_path: Path) -> None:
    f = tmp_path / "settings.yaml"
    f.write_text("placement:\n  max_utilization: 0.8\n")
    s = load_settings(f, env={"GSC__PLACEMENT__MAX_MPS_CLIENTS_PER_GPU": "32"})
    assert s.placement.max_utilization == 0.8
    assert s.placement.max_mps_clients_per_gpu == 32
    assert env_overrides({"GSC__FLEET__A100": "4", "HOME": "/root"}) == {"fleet": {"A100": 4}}


def test_malformed_settings_file_is_refused_with_the_file_named(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("placement: [unclosed\n")
    with pytest.raises(ValidationError, match=r"broken\.yaml"):
        load_settings(f, env={})


def test_workload_class_enum_values_match_settings_tables(settings: Settings) -> None:
    assert set(settings.classes.as_mapping()) == set(WorkloadClass)


def test_alert_thresholds_and_qps_bands_come_from_settings() -> None:
    from core.alerts import AlertThresholds
    from core.monitor import qps_band

    s = load_settings(env={})
    # The packaged defaults equal the SPEC numbers (which test_alerts ties to rules.yml).
    assert s.alerts == AlertThresholds()
    assert (s.qps_bands.safe, s.qps_bands.caution, s.qps_bands.high_risk) == (50, 100, 200)
    tuned = load_settings(env={"GSC__ALERTS__HIGH_QPS": "150",
                               "GSC__GATES__QPS_BANDS__SAFE": "30"})
    assert tuned.alerts.high_qps == 150 and tuned.qps_bands.safe == 30
    assert qps_band(40, safe=tuned.qps_bands.safe)[0] == "caution"
    with pytest.raises(ValidationError) as err:
        load_settings(env={"GSC__GATES__QPS_BANDS__SAFE": "500"})
    assert err.value.field == "gates.qps_bands"
    with pytest.raises(ValidationError) as err:
        load_settings(env={"GSC__ALERTS__HIGH_QPSS": "1"})
    assert err.value.field == "alerts.high_qpss"


# --- issue 11, item 8: key case, money as plain numbers, unknown keys everywhere ----------


def test_environment_overrides_take_the_spelling_of_the_known_keys() -> None:
    s = load_settings(env={"GSC__FLEET__H100": "2", "GSC__FLEET__a100": "3",
                           "GSC__CATALOG__H100__PRICE_PER_GPU_HOUR": "5.10",
                           "GSC__PLACEMENT__WEIGHTS__EFFICIENCY": "0.3"})
    assert dict(s.fleet.nodes_per_type) == {"H100": 2, "A100": 3}
    assert s.catalog["H100"].price_per_gpu_hour == Decimal("5.1")
    assert env_overrides({"GSC__CLASSES__LARGE__ALLOWED": '["A100"]'}) == \
        {"classes": {"large": {"allowed": ["A100"]}}}


def test_an_environment_override_error_names_the_field_and_the_variable() -> None:
    with pytest.raises(ValidationError) as err:
        load_settings(env={"GSC__FLEET__H100": "lots"})
    assert err.value.field == "fleet.H100"
    assert "set by GSC__FLEET__H100" in err.value.message
    with pytest.raises(ValidationError) as err:
        load_settings(env={"GSC__PLACEMENT__MAX_UTILISATION": "0.8"})
    assert err.value.field == "placement.max_utilisation"
    assert "unknown setting" in err.value.message
    assert "set by GSC__PLACEMENT__MAX_UTILISATION" in err.value.message
    with pytest.raises(ValidationError, match="set by both"):
        load_settings(env={"GSC__FLEET__H100": "1", "GSC__FLEET__h100": "2"})


def test_a_new_gpu_type_can_be_added_from_the_environment() -> None:
    figures = {"MEMORY_GB": "24", "TDP_W": "72", "TOPS": "242", "IDLE_W": "16",
               "PRICE_PER_GPU_HOUR": "0.80", "DENSE_INT8_TOPS": "242",
               "SPARSE_INT8_TOPS": "485", "DENSE_BF16_TFLOPS": "121", "MIG_CAPABLE": "false"}
    env = {f"GSC__CATALOG__L4__{k}": v for k, v in figures.items()} | {"GSC__FLEET__L4": "2"}
    s = load_settings(env=env)
    assert s.catalog["L4"].memory_mib == 24 * 1024
    assert s.catalog["L4"].price_per_gpu_hour == Decimal("0.8")
    assert s.fleet.nodes_per_type["L4"] == 2


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_money_parses_from_plain_numbers_exactly(tmp_path: Path, suffix: str) -> None:
    f = tmp_path / f"settings{suffix}"
    if suffix == ".toml":
        f.write_text("[pricing]\nelectricity_per_kwh = 0.15\n"
                     "[catalog.A100]\nprice_per_gpu_hour = 1.1\n"
                     "[catalog.H100]\nprice_per_gpu_hour = 5\n")
    else:
        f.write_text("pricing: {electricity_per_kwh: 0.15}\n"
                     "catalog: {A100: {price_per_gpu_hour: 1.1}, H100: {price_per_gpu_hour: 5}}\n")
    s = load_settings(f, env={})
    # Exactly the decimal written, not the binary float's 0.1499999999999999944…
    assert s.catalog.electricity_per_kwh == Decimal("0.15")
    assert str(s.catalog.electricity_per_kwh) == "0.15"
    assert s.catalog["A100"].price_per_gpu_hour == Decimal("1.1")
    assert s.catalog["H100"].price_per_gpu_hour == Decimal(5)
    from_env = load_settings(env={"GSC__PRICING__ELECTRICITY_PER_KWH": "0.15"})
    assert str(from_env.catalog.electricity_per_kwh) == "0.15"


@pytest.mark.parametrize("value", [True, [1], "cheap", float("nan"), float("inf"), -1, "1e9"])
def test_money_that_is_not_an_amount_is_refused_naming_the_key(value: object) -> None:
    with pytest.raises(ValidationError) as err:
        parse_settings(deep_merge(default_mapping(), {"pricing": {"electricity_per_kwh": value}}))
    assert err.value.field == "pricing.electricity_per_kwh"


def _tables(node: dict, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    for key, value in node.items():
        if isinstance(value, dict):
            out += _tables(value, (*path, key))
    return out


DEFAULT_TABLES = _tables(default_mapping())


@pytest.mark.parametrize("path", DEFAULT_TABLES, ids=[".".join(p) or "top" for p in DEFAULT_TABLES])
def test_an_unknown_key_is_refused_in_every_section_naming_it(path: tuple[str, ...]) -> None:
    # Every table of the packaged defaults, top level included; a new section is covered
    # as soon as it has defaults.
    extra: dict = {"bogus_key": 1}
    for part in reversed(path):
        extra = {part: extra}
    with pytest.raises(ValidationError) as err:
        parse_settings(deep_merge(default_mapping(), extra))
    assert err.value.field == ".".join((*path, "bogus_key"))


def test_an_unknown_key_of_a_deployment_bound_is_refused() -> None:
    extra = {"autoscaling": {"deployments": {"default/llama": {"max_replica": 3}}}}
    with pytest.raises(ValidationError) as err:
        parse_settings(deep_merge(default_mapping(), extra))
    assert err.value.field == "autoscaling.deployments.default/llama.max_replica"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"catalog": {"H100": {"mig_capable": "false"}}}, "catalog.H100.mig_capable"),
        ({"classes": {"large": {"allowed": "A100"}}}, "classes.large.allowed"),
        ({"classes": {"large": {"preferred": ["H100"]}}}, "classes.large.preferred"),
        ({"pricing": {"as_of": ["2025"]}}, "pricing.as_of"),
        ({"placement": {"throughput_figure": 3}}, "placement.throughput_figure"),
        ({"catalog": {"bad name!": {}}}, "catalog.bad name!"),
        ({"catalog": {"H100": {"tdp_w": [700]}}}, "catalog.H100.tdp_w"),
    ],
)
def test_mistyped_settings_values_are_refused_naming_the_key(extra: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_settings(deep_merge(default_mapping(), extra))
    assert err.value.field == field

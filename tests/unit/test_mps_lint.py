"""The MPS lint: what each backend cannot express or silently drops."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest

from core.adapters.settings_source import load_settings
from core.errors import ValidationError
from core.fleet import default_fleet
from core.model import MpsSlice
from core.mps import lint as L
from core.mps.device_plugin import compile_node, fleet_layouts
from core.mps.layout import GpuLayout

A100_MIB = 40960


def _layout(
    shares: Sequence[int], *, node: str = "a100-9", index: int = 0, memory_mib: int = 1024,
    mig: bool = False,
) -> GpuLayout:
    # Built with the constructor on purpose: the lint must catch layouts that
    # GpuLayout.with_slice would have refused (pasted, stale or hand-made ones).
    slices = tuple(MpsSlice(owner=f"m{i}", thread_pct=p, memory_mib=memory_mib)
                   for i, p in enumerate(shares))
    return GpuLayout(node=node, gpu_index=index, gpu_type="A100", memory_total_mib=A100_MIB,
                     slices=slices, mig_enabled=mig)


def _codes(findings: list[L.Finding]) -> list[str]:
    return [f.code for f in findings]


def _mps_config(**resource: Any) -> dict[str, Any]:
    return {"version": "v1", "sharing": {"mps": {"resources": [
        {"name": "nvidia.com/gpu", "replicas": 4, **resource}]}}}


@pytest.fixture(scope="module")
def default_layouts() -> dict[str, tuple[GpuLayout, ...]]:
    settings_ = load_settings(env={})
    return fleet_layouts(default_fleet(settings_.catalog, settings_.classes))


@pytest.mark.parametrize("backend", ["device-plugin", "env"])
def test_default_fleet_lints_clean_for_device_plugin_and_env(
    default_layouts: dict[str, tuple[GpuLayout, ...]], backend: str,
) -> None:
    assert L.lint(default_layouts, backend=backend) == []


# --- raw device-plugin configs (pasted by an operator) -------------------------------------


def test_rename_in_a_pasted_config_is_reported_as_dropped() -> None:
    findings = L.lint_device_plugin_config(_mps_config(rename="nvidia.com/gpu.mps"), node="n1")

    assert _codes(findings) == [L.RENAME_IGNORED]
    assert findings[0].severity == L.ERROR
    assert findings[0].node == "n1"
    assert findings[0].gpu is None


def test_devices_in_a_pasted_config_is_reported_as_dropped() -> None:
    findings = L.lint_device_plugin_config(_mps_config(devices=[0, 1]))

    assert _codes(findings) == [L.DEVICES_IGNORED]


@pytest.mark.parametrize("replicas", [1, 0, -3, "2", None, True])
def test_replicas_below_two_or_not_a_number_with_sharing_is_an_error(replicas: Any) -> None:
    findings = L.lint_device_plugin_config(_mps_config(replicas=replicas))

    assert _codes(findings) == [L.REPLICAS_BELOW_TWO]
    assert findings[0].severity == L.ERROR


def test_mps_sharing_without_resources_is_an_error() -> None:
    findings = L.lint_device_plugin_config({"version": "v1", "sharing": {"mps": {}}})

    assert _codes(findings) == [L.REPLICAS_BELOW_TWO]


def test_replicas_above_the_client_limit_is_an_error() -> None:
    assert _codes(L.lint_device_plugin_config(_mps_config(replicas=49))) == [
        L.REPLICAS_ABOVE_LIMIT]


def test_per_replica_thread_percentages_are_an_unknown_field() -> None:
    findings = L.lint_device_plugin_config(_mps_config(thread_percentages=[50, 25, 25, 0]))

    assert _codes(findings) == [L.UNKNOWN_FIELD]
    assert "sharing.mps.resources[0].thread_percentages" in findings[0].message


def test_other_gaps_in_pasted_configs_are_reported() -> None:
    config = {
        "version": "v2",
        "flags": {"migStrategy": "mixed"},
        "sharing": {
            "timeSlicing": {"resources": [{"name": "nvidia.com/gpu", "replicas": 2}]},
            "mps": {"resources": [{"name": "nvidia.com/mig-1g.10gb", "replicas": 2}]},
        },
    }

    assert sorted(_codes(L.lint_device_plugin_config(config))) == sorted([
        L.BAD_VERSION, L.MIXED_SHARING, L.MIG_STRATEGY_MIXED, L.RESOURCE_NOT_GPU])


@pytest.mark.parametrize("pasted", [None, "version: v1", [1, 2], {"sharing": {"mps": {
    "resources": ["nvidia.com/gpu"]}}}])
def test_a_malformed_pasted_config_is_reported_not_raised(pasted: Any) -> None:
    findings = L.lint_device_plugin_config(pasted)

    assert _codes(findings) == [L.NOT_A_MAPPING]


def test_a_compiled_config_lints_clean() -> None:
    _, config = compile_node([_layout([50, 25, 25])])

    assert L.lint_device_plugin_config(config) == []


# --- layouts, device-plugin backend ---------------------------------------------------------


def test_mps_on_a_mig_enabled_gpu_is_an_error_for_the_device_plugin() -> None:
    findings = L.lint({"a100-9": [_layout([50, 50], mig=True)]}, backend=L.Backend.DEVICE_PLUGIN)

    assert L.MPS_ON_MIG in _codes(findings)
    assert next(f for f in findings if f.code == L.MPS_ON_MIG).gpu == "a100-9/gpu0"


def test_an_idle_mig_gpu_on_an_exclusive_node_is_fine() -> None:
    assert L.lint({"a100-9": [_layout([], mig=True)]}) == []


@pytest.mark.parametrize("backend", list(L.Backend))
def test_more_than_48_clients_on_a_gpu_is_an_error(backend: L.Backend) -> None:
    findings = L.lint({"a100-9": [_layout([1] * 49, memory_mib=10)]}, backend=backend)

    assert L.TOO_MANY_CLIENTS in _codes(findings)
    assert all(f.backend == backend.value for f in findings)


def test_48_clients_on_a_gpu_are_allowed() -> None:
    findings = L.lint({"a100-9": [_layout([2] * 48, memory_mib=10)]})

    assert L.TOO_MANY_CLIENTS not in _codes(findings)


def test_different_layouts_on_gpus_of_one_node_warn_that_the_config_is_node_wide() -> None:
    layouts = [_layout([50, 50], index=0), _layout([25, 25, 25, 25], index=1),
               _layout([25, 25, 25, 25], index=2)]

    findings = L.lint({"a100-9": layouts})

    node_wide = [f for f in findings if f.code == L.NODE_WIDE_CONFIG]
    assert [f.gpu for f in node_wide] == ["a100-9/gpu0"]
    assert node_wide[0].severity == L.WARNING
    assert "mps-4" in node_wide[0].message


def test_uneven_thread_share_above_the_plugin_share_is_capped_and_says_by_how_much() -> None:
    findings = L.lint({"a100-9": [_layout([50, 25, 25])]})

    capped = [f for f in findings if f.code == L.THREAD_SHARE_CAPPED]
    assert len(capped) == 1
    assert capped[0].severity == L.WARNING
    # 3 replicas: 100 // 3 = 33 % each, so the 50 % client loses 17 points.
    assert "m0" in capped[0].message
    assert "33 %" in capped[0].message
    assert "capped by 17 points" in capped[0].message


def test_even_layout_is_not_capped() -> None:
    assert L.lint({"a100-9": [_layout([25, 25, 25, 25])]}) == []


def test_pinned_memory_above_total_over_replicas_is_an_error() -> None:
    layout = GpuLayout(node="a100-9", gpu_index=0, gpu_type="A100", memory_total_mib=A100_MIB,
                       slices=(MpsSlice(owner="big", thread_pct=34, memory_mib=20000),
                               MpsSlice(owner="s1", thread_pct=33, memory_mib=4096),
                               MpsSlice(owner="s2", thread_pct=33, memory_mib=4096)))

    findings = [f for f in L.lint({"a100-9": [layout]}) if f.code == L.MEMORY_ABOVE_CAP]

    assert len(findings) == 1
    assert findings[0].severity == L.ERROR
    # 40960 // 3 = 13653 MiB per client.
    assert "13653 MiB" in findings[0].message
    assert "6347 MiB short" in findings[0].message


# --- layouts, DRA backend -------------------------------------------------------------------


def test_dra_reports_mig_gpus_with_clients() -> None:
    findings = L.lint({"a100-9": [_layout([100], mig=True)]}, backend="dra")

    assert _codes(findings) == [L.MPS_ON_MIG]
    assert findings[0].backend == "dra"


def test_dra_warns_that_clients_sharing_a_gpu_need_one_shared_claim() -> None:
    findings = L.lint({"a100-9": [_layout([50, 50])]}, backend="dra")

    assert _codes(findings) == [L.DRA_CLAIM_PER_POD]
    assert findings[0].severity == L.WARNING


def test_dra_does_not_flag_node_wide_or_capping_gaps_of_the_device_plugin() -> None:
    layouts = [_layout([50, 25, 25], index=0), _layout([100], index=1)]

    codes = _codes(L.lint({"a100-9": layouts}, backend="dra"))

    assert L.NODE_WIDE_CONFIG not in codes
    assert L.THREAD_SHARE_CAPPED not in codes


# --- layouts, env backend -------------------------------------------------------------------


def test_env_reports_thread_shares_summing_over_100() -> None:
    findings = L.lint({"a100-9": [_layout([60, 50])]}, backend="env")

    assert _codes(findings) == [L.THREAD_OVERCOMMIT]
    assert "110 %" in findings[0].message
    assert "10 points over" in findings[0].message


def test_env_reports_pinned_memory_over_the_gpu() -> None:
    findings = L.lint({"a100-9": [_layout([50, 50], memory_mib=30000)]}, backend="env")

    assert _codes(findings) == [L.MEMORY_OVERCOMMIT]


# --- the lint itself -----------------------------------------------------------------------


def test_lint_refuses_an_unknown_backend_by_name() -> None:
    with pytest.raises(ValidationError) as exc:
        L.lint({}, backend="kubevirt")
    assert exc.value.field == "backend"


def test_findings_are_frozen_values() -> None:
    finding = L.lint({"a100-9": [_layout([60, 50])]}, backend="env")[0]

    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.code = "other"  # type: ignore[misc]


def test_lint_is_deterministic_whatever_the_input_order() -> None:
    layouts = {
        "n-b": [_layout([50, 25, 25], node="n-b", index=1), _layout([50], node="n-b", index=0)],
        "n-a": [_layout([60, 50], node="n-a", mig=True)],
    }
    reordered = {k: list(reversed(v)) for k, v in reversed(layouts.items())}

    for backend in L.Backend:
        assert L.lint(layouts, backend=backend) == L.lint(reordered, backend=backend)

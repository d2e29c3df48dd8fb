"""The MPS lint: what each backend cannot express or silently drops."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.adapters.settings_source import load_settings
from core.errors import ValidationError
from core.fleet import default_fleet
from core.model import MpsSlice
from core.mps import device_plugin as dp
from core.mps import lint as L
from core.mps import plugin_schema
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
    # Real plugin: config.go DisableResourceNamingInConfig → replicas.go
    # disableResoureRenaming clears rename (renameByDefault false) and logs
    # "not yet supported ... Ignoring": it starts, under nvidia.com/gpu.
    findings = L.lint_device_plugin_config(_mps_config(rename="nvidia.com/gpu.mps"), node="n1")

    assert _codes(findings) == [L.RENAME_IGNORED]
    assert findings[0].severity == L.WARNING
    assert "keeps advertising nvidia.com/gpu" in findings[0].message
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


@pytest.mark.parametrize("mps", [{}, {"resources": []}, {"resources": None}])
def test_mps_sharing_without_resources_makes_the_plugin_refuse_to_start(
    mps: dict[str, Any],
) -> None:
    # Real plugin: replicas.go ReplicatedResources.UnmarshalJSON returns
    # "no resources specified" for a missing or empty list: parsing fails.
    findings = L.lint_device_plugin_config({"version": "v1", "sharing": {"mps": mps}})

    assert _codes(findings) == [L.NO_RESOURCES]
    assert findings[0].severity == L.ERROR
    assert "refuses to start" in findings[0].message


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


@pytest.mark.parametrize("pasted", ["version: v1", [1, 2], {"sharing": {"mps": {
    "resources": ["nvidia.com/gpu"]}}}])
def test_a_malformed_pasted_config_is_reported_not_raised(pasted: Any) -> None:
    findings = L.lint_device_plugin_config(pasted)

    assert _codes(findings) == [L.NOT_A_MAPPING]
    assert findings[0].severity == L.ERROR


def test_an_empty_config_is_accepted_with_defaults_and_shares_nothing() -> None:
    # Real plugin: sigs.k8s.io/yaml turns an empty file into null, which leaves
    # Config empty; parseConfigFrom then sets version v1 (config.go).
    findings = L.lint_device_plugin_config(None)

    assert _codes(findings) == [L.EMPTY_CONFIG]
    assert findings[0].severity == L.WARNING


def test_a_compiled_config_lints_clean() -> None:
    _, config = compile_node([_layout([50, 25, 25])])

    assert L.lint_device_plugin_config(config) == []


# --- the real plugin's verdict, class by class (issue 11) ----------------------------------
# Expectations are what NVIDIA/k8s-device-plugin does with the config (release and commits
# in core/mps/plugin_schema.py); each test names the Go function that decides it.


def _gpu(**extra: Any) -> dict[str, Any]:
    return {"name": "nvidia.com/gpu", "replicas": 4, **extra}


def _with(sharing: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"version": "v1", "sharing": sharing, **top}


# Class 1: the schema — what the decoder keeps and what it drops.


def test_class1_top_level_resources_are_dropped_though_they_are_in_the_schema() -> None:
    # config.go DisableResourceNamingInConfig sets Resources.GPUs/MIGs to nil and logs
    # "Customizing the 'resources' field is not yet supported": a silent drop.
    config = _with({"mps": {"resources": [_gpu()]}},
                   resources={"gpus": [{"pattern": "*A100*", "name": "a100"}]})

    findings = L.lint_device_plugin_config(config)

    assert _codes(findings) == [L.RESOURCES_IGNORED]
    assert findings[0].severity == L.WARNING


def test_class1_a_field_in_another_case_is_known_where_go_matches_case_insensitively() -> None:
    # encoding/json matches struct fields case-insensitively (Config, Flags, Sharing,
    # Imex have no UnmarshalJSON), and sigs.k8s.io/yaml hands it JSON: all applied.
    config = {"Version": "v1", "Flags": {"MIGSTRATEGY": "none", "Plugin": {
        "DeviceIDStrategy": "uuid"}}, "Sharing": {"MPS": {"resources": [_gpu()]}},
        "IMEX": {"ChannelIDs": [0]}}

    assert dp.unknown_fields(config) == []
    assert L.lint_device_plugin_config(config) == []


def test_class1_keys_under_the_plugins_own_decoders_are_matched_exactly() -> None:
    # replicas.go ReplicatedResources/ReplicatedResource.UnmarshalJSON read a
    # map[string]json.RawMessage by exact key: "RenameByDefault" is dropped, and a
    # resource written with "Replicas" has no replicas ("no replicas specified").
    config = _with({"mps": {"RenameByDefault": True, "resources": [
        {"name": "nvidia.com/gpu", "Replicas": 4}]}})

    findings = L.lint_device_plugin_config(config)

    assert dp.unknown_fields(config) == ["sharing.mps.RenameByDefault",
                                         "sharing.mps.resources[0].Replicas"]
    assert _codes(findings) == [L.UNKNOWN_FIELD, L.UNKNOWN_FIELD, L.REPLICAS_BELOW_TWO]
    assert "write 'renameByDefault'" in findings[0].message
    assert [f.severity for f in findings] == [L.WARNING, L.WARNING, L.ERROR]


def test_class1_rename_and_devices_under_time_slicing_are_dropped_too() -> None:
    # DisableResourceNamingInConfig calls disableResoureRenaming on timeSlicing as on mps.
    config = _with({"timeSlicing": {"resources": [_gpu(rename="nvidia.com/ts", devices=2)]}})

    codes = _codes(L.lint_device_plugin_config(config))

    assert codes == [L.RENAME_IGNORED, L.DEVICES_IGNORED]


# Class 2: settings that change behaviour without an error.


def test_class2_rename_by_default_renames_the_shared_gpus_so_pods_never_match() -> None:
    # replicas.go ReplicatedResources.UnmarshalJSON: renameByDefault sets
    # rename = name.DefaultSharedRename() (resources.go, ".shared"); device_map.go
    # updateDeviceMapWithReplicas then advertises the replicas under that name only.
    findings = L.lint_device_plugin_config(_with({"mps": {"renameByDefault": True,
                                                          "resources": [_gpu()]}}))

    assert _codes(findings) == [L.RENAME_BY_DEFAULT]
    assert findings[0].severity == L.ERROR
    assert "nvidia.com/gpu.shared" in findings[0].message
    assert "never match" in findings[0].message


@pytest.mark.parametrize("key", ["MigStrategy", "migstrategy", "MIGSTRATEGY"])
def test_class2_mig_strategy_in_another_case_is_applied_and_mixed_refuses_with_mps(
    key: str,
) -> None:
    # encoding/json folds the key onto Flags.MigStrategy; main.go validateFlags:
    # "using --mig-strategy=mixed is not supported with MPS".
    findings = L.lint_device_plugin_config(_with({"mps": {"resources": [_gpu()]}},
                                                 flags={key: "mixed"}))

    assert _codes(findings) == [L.MIG_STRATEGY_MIXED]
    assert findings[0].severity == L.ERROR
    assert "refuses to start" in findings[0].message
    assert f"flags.{key}" in findings[0].message
    assert "applied" in findings[0].message


@pytest.mark.parametrize(("flags", "mixed_applied"), [
    ({"migStrategy": "none", "MigStrategy": "mixed"}, False),
    ({"migStrategy": "mixed", "MigStrategy": "none"}, True),
])
def test_class2_two_spellings_of_one_key_the_last_in_key_order_wins(
    flags: dict[str, str], mixed_applied: bool,
) -> None:
    # sigs.k8s.io/yaml re-encodes the mapping with sorted keys ("MigStrategy" before
    # "migStrategy") and encoding/json keeps the last value set for a field.
    codes = _codes(L.lint_device_plugin_config(_with({"mps": {"resources": [_gpu()]}},
                                                     flags=flags)))

    assert codes[0] == L.KEY_SHADOWED
    assert (L.MIG_STRATEGY_MIXED in codes) is mixed_applied


def test_class2_time_slicing_beside_mps_is_ignored_not_an_error() -> None:
    # sharing.go Sharing.ReplicatedResources returns MPS whenever it is set.
    findings = L.lint_device_plugin_config(_with({"mps": {"resources": [_gpu()]},
                                                  "timeSlicing": {"resources": [_gpu()]}}))

    assert _codes(findings) == [L.MIXED_SHARING]
    assert findings[0].severity == L.WARNING


# Class 3: messages that describe the real outcome.


@pytest.mark.parametrize("replicas", [1, 0])
def test_class3_one_replica_makes_the_plugin_refuse_to_start(replicas: int) -> None:
    # replicas.go ReplicatedResource.UnmarshalJSON: "number of replicas must be >= 2".
    findings = L.lint_device_plugin_config(_mps_config(replicas=replicas))

    assert _codes(findings) == [L.REPLICAS_BELOW_TWO]
    assert "refuses to start" in findings[0].message
    assert "must be >= 2" in findings[0].message


@pytest.mark.parametrize("resource", [
    {"name": "nvidia.com/gpu", "replicas": 4, "devices": "all"},
    {"name": "gpu", "replicas": 4},
    {"name": "gpu", "replicas": 4.0, "devices": "all"},
])
def test_class3_devices_all_and_an_unprefixed_name_are_accepted(
    resource: dict[str, Any],
) -> None:
    # replicas.go ReplicatedDevices.UnmarshalJSON accepts "all"; resources.go
    # NewResourceName prefixes "gpu" with "nvidia.com/"; sigs.k8s.io/yaml writes 4.0 as 4.
    config = _with({"mps": {"resources": [resource]}})

    assert L.lint_device_plugin_config(config) == []


def test_class3_replicas_above_the_mps_limit_are_accepted_by_the_plugin() -> None:
    # The plugin has no upper bound (daemon.go sets 100/replicas %); the limit is the
    # MPS server's clients per GPU, so the message must not say the plugin refuses.
    message = L.lint_device_plugin_config(_mps_config(replicas=64))[0].message

    assert "the plugin accepts it" in message
    assert "refuses" not in message


# Twenty hand-written configs and the plugin's verdict on each.

_REFUSED = "refuses to start"
_CHANGED = "starts, something dropped or changed"
_NO_MATCH = "starts, pods asking for nvidia.com/gpu never match"
_CLEAN = "starts as written"
_REFUSING_CODES = {L.BAD_VERSION, L.NOT_A_MAPPING, L.INVALID_VALUE, L.INVALID_RESOURCE_NAME,
                   L.NO_RESOURCES, L.REPLICAS_BELOW_TWO, L.MIG_STRATEGY_MIXED}

_TABLE: list[tuple[str, Any, list[str], str]] = [
    # (case, config, codes, verdict); the Go function deciding each is in the case name.
    ("compiled mps-4", dp.plugin_config(4), [], _CLEAN),
    ("exclusive, no sharing", dp.plugin_config(1), [], _CLEAN),
    ("version omitted (parseConfigFrom: empty → v1)", {"sharing": {"mps": {
        "resources": [_gpu()]}}}, [], _CLEAN),
    ("version v2 (parseConfigFrom)", {"version": "v2"}, [L.BAD_VERSION], _REFUSED),
    ("Version key folded, value v1", {"Version": "v1"}, [], _CLEAN),
    ("migStrategy 'Mixed' (validateFlags: values exact)", {"flags": {"migStrategy": "Mixed"}},
     [L.INVALID_VALUE], _REFUSED),
    ("migStrategy mixed without sharing", {"flags": {"migStrategy": "mixed"}}, [], _CLEAN),
    ("deviceDiscoveryStrategy bogus (validateFlags)", {"flags": {
        "deviceDiscoveryStrategy": "pci"}}, [L.INVALID_VALUE], _REFUSED),
    ("deviceListStrategy empty (NewDeviceListStrategies)", {"flags": {"plugin": {
        "deviceListStrategy": []}}}, [L.INVALID_VALUE], _REFUSED),
    ("deviceListStrategy one text (deviceListStrategyFlag)", {"flags": {"plugin": {
        "deviceListStrategy": "cdi-cri"}}}, [], _CLEAN),
    ("failOnInitError as text (*bool)", {"flags": {"failOnInitError": "true"}},
     [L.INVALID_VALUE], _REFUSED),
    ("sleepInterval Go duration (Duration)", {"flags": {"gfd": {"sleepInterval": "1m30s"}}},
     [], _CLEAN),
    ("sleepInterval bogus (Duration)", {"flags": {"gfd": {"sleepInterval": "soon"}}},
     [L.INVALID_VALUE], _REFUSED),
    ("imex channel 1 (AssertChannelIDsValid)", {"imex": {"channelIDs": [1]}},
     [L.INVALID_VALUE], _REFUSED),
    ("mps: null (pointer left nil)", {"sharing": {"mps": None}}, [L.SHARING_EMPTY], _CHANGED),
    ("timeSlicing: null (UnmarshalJSON called with null)", {"sharing": {"timeSlicing": None}},
     [L.NO_RESOURCES], _REFUSED),
    ("resource without name (ReplicatedResource)", _with({"mps": {"resources": [
        {"replicas": 4}]}}), [L.INVALID_RESOURCE_NAME], _REFUSED),
    ("resource name in capitals (NewResourceName)", _with({"mps": {"resources": [
        _gpu(name="GPU")]}}), [L.INVALID_RESOURCE_NAME], _REFUSED),
    ("name of another vendor (NewResourceName prefixes it)", _with({"mps": {"resources": [
        _gpu(name="example.com/gpu")]}}), [L.INVALID_RESOURCE_NAME], _REFUSED),
    ("MIG resource under MPS (device_map.go skips it)", _with({"mps": {"resources": [
        _gpu(name="nvidia.com/mig-1g.10gb")]}}), [L.RESOURCE_NOT_GPU], _CHANGED),
    ("devices by count (disableResoureRenaming resets)", _mps_config(devices=2),
     [L.DEVICES_IGNORED], _CHANGED),
    ("devices by GPU UUID", _mps_config(devices=["GPU-b1028956-cfa2-0990-bf4a-5da9abb51763"]),
     [L.DEVICES_IGNORED], _CHANGED),
    ("devices 'none' (ReplicatedDevices.UnmarshalJSON)", _mps_config(devices="none"),
     [L.INVALID_VALUE], _REFUSED),
    ("devices 0 (a count must be > 0)", _mps_config(devices=0), [L.INVALID_VALUE], _REFUSED),
    ("devices: null (read as the empty text)", _mps_config(devices=None), [L.INVALID_VALUE],
     _REFUSED),
    ("renameByDefault as text (json bool)", _with({"mps": {"renameByDefault": "false",
                                                           "resources": [_gpu()]}}),
     [L.INVALID_VALUE], _REFUSED),
    ("renameByDefault with an explicit rename", _with({"mps": {"renameByDefault": True,
                                                               "resources": [
                                                                   _gpu(rename="x")]}}),
     [L.RENAME_BY_DEFAULT], _NO_MATCH),
    ("same resource twice", _with({"mps": {"resources": [_gpu(), _gpu(replicas=2)]}}),
     [L.DUPLICATE_RESOURCE], _CHANGED),
    ("sharing as a list (Sharing struct)", {"sharing": [1]}, [L.NOT_A_MAPPING], _REFUSED),
    ("unknown top-level key", {"version": "v1", "migStrategy": "none"}, [L.UNKNOWN_FIELD],
     _CHANGED),
]


def _verdict(findings: list[L.Finding]) -> str:
    codes = set(_codes(findings))
    if codes & _REFUSING_CODES:
        return _REFUSED
    if L.RENAME_BY_DEFAULT in codes:
        return _NO_MATCH
    return _CHANGED if findings else _CLEAN


@pytest.mark.parametrize(("config", "codes", "verdict"),
                         [case[1:] for case in _TABLE], ids=[case[0] for case in _TABLE])
def test_hand_written_configs_get_the_real_plugins_verdict(
    config: Any, codes: list[str], verdict: str,
) -> None:
    findings = L.lint_device_plugin_config(config, node="pasted")

    assert _codes(findings) == codes
    assert _verdict(findings) == verdict
    for finding in findings:
        refusing = finding.code in _REFUSING_CODES | {L.RENAME_BY_DEFAULT}
        assert finding.severity == (L.ERROR if refusing else L.WARNING), finding
        assert finding.node == "pasted"


# --- the decoder model ----------------------------------------------------------------------


def test_decoded_value_holds_canonical_keys_and_what_the_plugin_fills_in() -> None:
    decoded = plugin_schema.decode({"Sharing": {"Mps": {"resources": [{"name": "gpu",
                                                                       "replicas": 2}]}}})

    assert decoded.issues == ()
    assert decoded.value == {"sharing": {"mps": {"resources": [
        {"name": "nvidia.com/gpu", "replicas": 2, "devices": "all"}]}}}
    assert decoded.written["sharing.mps"] == "Sharing.Mps"


@pytest.mark.parametrize(("ref", "ok"), [
    ("0", True), ("12", True), ("1:0", True), ("GPU-b1028956-cfa2-0990-bf4a-5da9abb51763", True),
    ("MIG-b1028956-cfa2-0990-bf4a-5da9abb51763", True),
    ("MIG-GPU-b1028956-cfa2-0990-bf4a-5da9abb51763/3/0", True),
    ("-1", False), ("1:x", False), ("GPU-nope", False), ("gpu0", False), ("", False),
])
def test_device_references_follow_the_plugins_forms(ref: str, ok: bool) -> None:
    assert plugin_schema.device_ref_ok(ref) is ok


@pytest.mark.parametrize(("raw", "full", "ok"), [
    ("gpu", "nvidia.com/gpu", True), ("nvidia.com/gpu", "nvidia.com/gpu", True),
    ("mig-1g.10gb", "nvidia.com/mig-1g.10gb", True), ("GPU", "nvidia.com/GPU", False),
    ("", "nvidia.com/", False), ("g" * 60, "nvidia.com/" + "g" * 60, False),
])
def test_resource_names_are_prefixed_and_checked_like_new_resource_name(
    raw: str, full: str, ok: bool,
) -> None:
    name, error = plugin_schema.normalize_resource_name(raw)

    assert name == full
    assert (error is None) is ok


def test_the_field_table_is_the_pinned_release_and_names_its_source() -> None:
    assert plugin_schema.SOURCE_REPO == "NVIDIA/k8s-device-plugin"
    assert "v0.19" in plugin_schema.PINNED_RELEASE
    assert {"flags.plugin.cdiFeatureFlags", "sharing.mps.resources[].devices",
            "imex.channelIDs"} <= dp.ALLOWED_FIELDS
    assert "sharing.timeSlicing.strategy" not in dp.ALLOWED_FIELDS  # gone since v0.12


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 60) | st.floats(allow_nan=True)
    | st.sampled_from(["all", "gpu", "nvidia.com/gpu", "mixed", "v1", "", "GPU-x"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["version", "flags", "sharing", "mps", "MPS", "timeSlicing",
                         "resources", "name", "replicas", "devices", "rename", "migStrategy",
                         "MigStrategy", "renameByDefault", "imex", "channelIDs", "x"])
        | st.integers(0, 3), inner, max_size=5),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(_JSONISH)
def test_linting_any_pasted_value_is_total_and_deterministic(pasted: Any) -> None:
    first = L.lint_device_plugin_config(pasted)

    assert first == L.lint_device_plugin_config(pasted)
    assert all(f.severity in (L.ERROR, L.WARNING) for f in first)


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

"""Compilers from MPS layouts to the device plugin, the DRA driver and pod env."""

from __future__ import annotations

import re
from collections.abc import Sequence

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes_validate.utils import latest_version

from core.adapters.settings_source import load_settings
from core.errors import ReservationError, ValidationError
from core.fleet import default_fleet
from core.model import MpsSlice
from core.mps import device_plugin as dp
from core.mps import dra, plugin_schema
from core.mps.env import PINNED_MEMORY_VAR, THREAD_PERCENTAGE_VAR, mps_env, pinned_memory_value
from core.mps.layout import GpuLayout
from core.mps.lint import lint_device_plugin_config

K8S_VERSION = latest_version()
A100_MIB = 40960
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _layout(
    shares: Sequence[int], *, node: str = "a100-9", index: int = 0, memory_mib: int = 4096,
) -> GpuLayout:
    layout = GpuLayout(node=node, gpu_index=index, gpu_type="A100", memory_total_mib=A100_MIB)
    for i, pct in enumerate(shares):
        layout = layout.with_slice(MpsSlice(owner=f"m{i}", thread_pct=pct, memory_mib=memory_mib))
    return layout


@pytest.fixture(scope="module")
def fleet_layouts() -> dict[str, tuple[GpuLayout, ...]]:
    settings_ = load_settings(env={})
    return dp.fleet_layouts(default_fleet(settings_.catalog, settings_.classes))


# --- device plugin -------------------------------------------------------------------------


def test_uneven_layout_compiles_to_named_config_with_replicas_per_client() -> None:
    name, config = dp.compile_node([_layout([50, 25, 25])])

    assert name == "mps-3"
    assert config == {
        "version": "v1",
        "flags": {"migStrategy": "none"},
        "sharing": {"mps": {
            "renameByDefault": False,
            "failRequestsGreaterThanOne": True,
            "resources": [{"name": "nvidia.com/gpu", "replicas": 3}],
        }},
    }
    assert "thread_percentages" not in dp.render_yaml(config)


@pytest.mark.parametrize("shares", [[], [100]])
def test_empty_gpu_or_single_full_client_gets_exclusive_config_without_sharing(
    shares: list[int],
) -> None:
    name, config = dp.compile_node([_layout(shares)])

    assert name == dp.EXCLUSIVE_CONFIG
    assert "sharing" not in config
    assert config["version"] == "v1"


def test_single_partial_client_still_gets_two_replicas_so_the_free_share_can_bind() -> None:
    name, config = dp.compile_node([_layout([50])])

    assert name == "mps-2"
    assert config["sharing"]["mps"]["resources"] == [{"name": "nvidia.com/gpu", "replicas": 2}]


def test_node_config_follows_the_gpu_with_most_clients() -> None:
    layouts = [_layout([50, 50], index=0), _layout([25, 25, 25, 25], index=1)]

    name, _ = dp.compile_node(layouts)

    assert name == "mps-4"


def test_compile_node_refuses_no_layouts_or_layouts_of_several_nodes() -> None:
    with pytest.raises(ValidationError):
        dp.compile_node([])
    with pytest.raises(ValidationError):
        dp.compile_node([_layout([50], node="a100-1"), _layout([50], node="a100-2")])


def test_default_fleet_compiled_configs_contain_only_accepted_fields(
    fleet_layouts: dict[str, tuple[GpuLayout, ...]],
) -> None:
    plan = dp.compile_fleet(fleet_layouts)

    assert plan.configs, "the default fleet compiles to at least one config"
    for name, config in plan.configs.items():
        assert dp.unknown_fields(config) == [], name
        assert lint_device_plugin_config(config, node=name) == []
        # What goes into the ConfigMap is the same config, as YAML.
        assert yaml.safe_load(plan.config_map_data[name]) == dict(config)


def test_default_fleet_plan_labels_every_node_with_one_of_its_named_configs(
    fleet_layouts: dict[str, tuple[GpuLayout, ...]],
) -> None:
    plan = dp.compile_fleet(fleet_layouts)

    assert set(plan.node_configs) == set(fleet_layouts)
    assert set(plan.node_configs.values()) == set(plan.configs)
    # Spot checks from SPEC §2: a 100 % H100 runs alone, 25/25/25 needs 3 replicas.
    assert plan.node_configs["h100-0"] == "exclusive"
    assert plan.node_configs["a100-2"] == "mps-3"
    assert plan.node_label("a100-2") == {"nvidia.com/device-plugin.config": "mps-3"}


def test_config_map_with_the_plan_validates_against_the_core_v1_schema(
    fleet_layouts: dict[str, tuple[GpuLayout, ...]],
) -> None:
    config_map = dp.render_config_map(dp.compile_fleet(fleet_layouts))

    kubernetes_validate.validate(config_map, K8S_VERSION, strict=True)
    assert all(isinstance(v, str) for v in config_map["data"].values())


def test_plan_is_deterministic_and_orders_configs_by_replicas() -> None:
    layouts = {
        "n-a": (_layout([10] * 10, node="n-a"),),
        "n-b": (_layout([50, 25], node="n-b"),),
        "n-c": (_layout([], node="n-c"),),
        "n-d": (_layout([30, 30, 30], node="n-d"),),
    }

    first, second = dp.compile_fleet(layouts), dp.compile_fleet(dict(reversed(layouts.items())))

    assert list(first.configs) == ["exclusive", "mps-2", "mps-3", "mps-10"]
    assert dict(first.config_map_data) == dict(second.config_map_data)
    assert dict(first.node_configs) == dict(second.node_configs)


def test_compile_fleet_refuses_a_layout_filed_under_another_node() -> None:
    with pytest.raises(ValidationError):
        dp.compile_fleet({"n-a": (_layout([50], node="n-b"),)})


def test_unknown_fields_lists_every_key_path_the_plugin_does_not_accept() -> None:
    pasted = {
        "version": "v1",
        "migStrategy": "none",
        "sharing": {"mps": {
            "resources": [{"name": "nvidia.com/gpu", "replicas": 4,
                           "thread_percentages": [50, 25, 25, 0]}],
        }},
    }

    assert dp.unknown_fields(pasted) == [
        "migStrategy",
        "sharing.mps.resources[0].thread_percentages",
    ]


def test_unknown_fields_accepts_the_optional_fields_of_the_real_schema() -> None:
    config = {
        "version": "v1",
        "flags": {"migStrategy": "single", "failOnInitError": True,
                  "plugin": {"deviceListStrategy": ["cdi-annotations"], "deviceIDStrategy": "uuid"},
                  "gfd": {"sleepInterval": "60s"}},
        "resources": {"gpus": [{"pattern": "*A100*", "name": "a100"}]},
        "sharing": {"timeSlicing": {"renameByDefault": True, "resources": [
            {"name": "nvidia.com/gpu", "replicas": 4, "devices": [0, 1]}]}},
        "imex": {"channelIDs": [0], "required": False},
    }

    assert dp.unknown_fields(config) == []


def test_rendered_yaml_round_trips_in_build_order() -> None:
    _, config = dp.compile_node([_layout([25, 25])])

    text = dp.render_yaml(config)

    assert yaml.safe_load(text) == config
    assert text.splitlines()[0] == "version: v1"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=100), max_size=60))
def test_compiled_config_never_shares_with_fewer_than_two_replicas(shares: list[int]) -> None:
    layout = GpuLayout(node="n-x", gpu_index=0, gpu_type="A100", memory_total_mib=A100_MIB)
    for i, pct in enumerate(shares):
        try:
            layout = layout.with_slice(MpsSlice(owner=f"m{i}", thread_pct=pct, memory_mib=1))
        except ReservationError:
            continue

    name, config = dp.compile_node([layout])

    assert dp.unknown_fields(config) == []
    if "sharing" in config:
        replicas = config["sharing"]["mps"]["resources"][0]["replicas"]
        assert 2 <= replicas <= 48
        assert name == f"mps-{replicas}"
    else:
        assert name == "exclusive"


# --- per-pod env ---------------------------------------------------------------------------


def test_env_gives_thread_percentage_and_pinned_memory_in_mps_format() -> None:
    env = mps_env(MpsSlice(owner="llama", thread_pct=50, memory_mib=13312))

    assert env == [
        {"name": THREAD_PERCENTAGE_VAR, "value": "50"},
        {"name": PINNED_MEMORY_VAR, "value": "0=13312M"},
    ]


def test_env_names_the_device_as_the_container_sees_it() -> None:
    env = mps_env(MpsSlice(owner="llama", thread_pct=25, memory_mib=2048), device_index=1)

    assert env[1]["value"] == "1=2048M"


def test_env_leaves_out_a_zero_pinned_memory_limit() -> None:
    env = mps_env(MpsSlice(owner="llama", thread_pct=25, memory_mib=0))

    assert [v["name"] for v in env] == [THREAD_PERCENTAGE_VAR]


def test_pinned_memory_value_refuses_negative_device_or_empty_limit() -> None:
    with pytest.raises(ValidationError):
        pinned_memory_value(1024, device_index=-1)
    with pytest.raises(ValidationError):
        pinned_memory_value(0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=1, max_value=100),
                          st.integers(min_value=0, max_value=20000)), max_size=60))
def test_env_thread_percentages_of_any_built_layout_never_sum_over_100(
    wishes: list[tuple[int, int]],
) -> None:
    layout = GpuLayout(node="n-x", gpu_index=0, gpu_type="A100", memory_total_mib=A100_MIB)
    for i, (pct, mib) in enumerate(wishes):
        try:
            layout = layout.with_slice(MpsSlice(owner=f"m{i}", thread_pct=pct, memory_mib=mib))
        except ReservationError:
            continue

    envs = [mps_env(s) for s in layout.slices]
    total = sum(int(v["value"]) for env in envs for v in env if v["name"] == THREAD_PERCENTAGE_VAR)

    assert total <= 100
    assert all(isinstance(v["value"], str) for env in envs for v in env)


# --- DRA -----------------------------------------------------------------------------------

# kubernetes-validate ships resource.k8s.io/v1beta1 schemas (ResourceClaimTemplate and
# ResourceClaim), so the DRA objects are checked against the real schema in strict mode.
# The opaque ``parameters`` are a RawExtension there (any object), so the GpuConfig
# inside is checked field by field below.


def test_dra_claim_template_validates_strictly_against_resource_v1beta1() -> None:
    template = dra.render_claim_template(MpsSlice(owner="mistral-7b-0", thread_pct=50,
                                                  memory_mib=8192))

    assert kubernetes_validate.validate(template, K8S_VERSION, strict=True)


def test_dra_claim_template_selects_the_nvidia_driver_and_mps_with_the_slice_limits() -> None:
    template = dra.render_claim_template(
        MpsSlice(owner="mistral-7b-0", thread_pct=50, memory_mib=8192), namespace="inference")

    devices = template["spec"]["spec"]["devices"]
    assert template["apiVersion"] == "resource.k8s.io/v1beta1"
    assert template["kind"] == "ResourceClaimTemplate"
    assert template["metadata"]["namespace"] == "inference"
    assert devices["requests"][0] == {"name": "gpu", "deviceClassName": "gpu.nvidia.com"}
    opaque = devices["config"][0]["opaque"]
    assert devices["config"][0]["requests"] == ["gpu"]
    assert opaque["driver"] == "gpu.nvidia.com"
    assert opaque["parameters"] == {
        "apiVersion": "resource.nvidia.com/v1beta1",
        "kind": "GpuConfig",
        "sharing": {"strategy": "MPS", "mpsConfig": {
            "defaultActiveThreadPercentage": 50,
            "defaultPinnedDeviceMemoryLimit": "8192Mi",
        }},
    }


def test_dra_validation_rejects_a_field_the_schema_does_not_have() -> None:
    template = dra.render_claim_template(MpsSlice(owner="m", thread_pct=50, memory_mib=1024))
    template["spec"]["spec"]["devices"]["requests"][0]["threadPercentage"] = 50

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(template, K8S_VERSION, strict=True)


@pytest.mark.parametrize("owner", ["Team_A/Llama 2 70B", "x" * 300, "--weird--", "UPPER"])
def test_dra_template_names_are_dns_labels_whatever_the_owner(owner: str) -> None:
    name = dra.render_claim_template(
        MpsSlice(owner=owner, thread_pct=25, memory_mib=1024))["metadata"]["name"]

    assert DNS_LABEL.match(name), name
    assert name == dra.claim_template_name(MpsSlice(owner=owner, thread_pct=25, memory_mib=1))


def test_dra_template_names_of_owners_that_differ_only_in_case_do_not_collide() -> None:
    a = dra.claim_template_name(MpsSlice(owner="Llama", thread_pct=25, memory_mib=1))
    b = dra.claim_template_name(MpsSlice(owner="llama", thread_pct=25, memory_mib=1))

    assert a != b


def test_dra_config_leaves_out_a_zero_memory_limit() -> None:
    config = dra.gpu_config(thread_pct=25, memory_mib=0)

    assert config["sharing"]["mpsConfig"] == {"defaultActiveThreadPercentage": 25}


def test_dra_refuses_invalid_names_and_namespaces() -> None:
    s = MpsSlice(owner="m", thread_pct=25, memory_mib=1)
    with pytest.raises(ValidationError):
        dra.render_claim_template(s, name="Not_Valid")
    with pytest.raises(ValidationError):
        dra.render_claim_template(s, namespace="a.b")


def test_dra_shared_claim_for_a_layout_uses_the_largest_slice_and_validates() -> None:
    claim = dra.render_shared_claim(_layout([50, 25, 25], node="a100-2"))

    assert kubernetes_validate.validate(claim, K8S_VERSION, strict=True)
    mps = claim["spec"]["devices"]["config"][0]["opaque"]["parameters"]["sharing"]["mpsConfig"]
    assert mps["defaultActiveThreadPercentage"] == 50
    assert claim["metadata"]["name"] == "mps-a100-2-gpu0"


def test_dra_shared_claim_refuses_a_layout_without_clients() -> None:
    with pytest.raises(ValidationError):
        dra.render_shared_claim(_layout([]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.integers(min_value=1, max_value=100), max_size=12),
                min_size=1, max_size=4))
def test_every_compiled_config_gets_a_clean_verdict_from_the_plugin_model(
    gpus: list[list[int]],
) -> None:
    # Several GPUs per node, each with its own clients: whatever the compiler
    # emits, the plugin's decoder (plugin_schema) keeps every key and start-up
    # validation passes, also after the YAML round trip the ConfigMap makes.
    layouts = []
    for index, shares in enumerate(gpus):
        layout = GpuLayout(node="n-x", gpu_index=index, gpu_type="A100",
                           memory_total_mib=A100_MIB)
        for i, pct in enumerate(shares):
            try:
                layout = layout.with_slice(MpsSlice(owner=f"m{i}", thread_pct=pct,
                                                    memory_mib=1))
            except ReservationError:
                continue
        layouts.append(layout)

    name, config = dp.compile_node(layouts)
    plan = dp.compile_fleet({"n-x": tuple(layouts)})

    assert plugin_schema.decode(config).issues == ()
    assert lint_device_plugin_config(config, node=name) == []
    assert lint_device_plugin_config(yaml.safe_load(plan.config_map_data[name]),
                                     node=name) == []


@pytest.mark.parametrize("replicas", [1, 2, 3, 7, 48])
def test_the_plugin_model_reads_a_compiled_config_as_the_compiler_meant_it(
    replicas: int,
) -> None:
    decoded = plugin_schema.decode(yaml.safe_load(dp.render_yaml(dp.plugin_config(replicas))))

    assert decoded.issues == ()
    assert decoded.value["flags"] == {"migStrategy": "none"}
    if replicas < 2:
        assert "sharing" not in decoded.value
    else:
        # Name kept as pods ask for it, every GPU shared, no rename by default.
        assert decoded.value["sharing"]["mps"] == {
            "renameByDefault": False, "failRequestsGreaterThanOne": True,
            "resources": [{"name": dp.GPU_RESOURCE, "replicas": replicas, "devices": "all"}]}

"""The MPS planner: per node, the device-plugin config that serves its layout, where the
running one does not; a real diff, lint findings, and the impact from the one cost formula."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
import yaml
from hypothesis import given
from hypothesis import settings as settings_profile
from hypothesis import strategies as st

from core.adapters.settings_source import load_settings
from core.cost.formula import fleet_cost
from core.errors import ValidationError
from core.model import Gpu, MpsSlice, Node, PlacementRequest, Priority
from core.mps import device_plugin as dp
from core.mps.layout import GpuLayout
from core.mps.planner import (
    DRA,
    change_groups,
    config_gaps,
    gap_score,
    plan_mps,
    predict_disruption,
    running_config,
)
from core.placement import Scheduler
from core.settings import Settings
from core.telemetry import FleetTelemetry, FleetTotals, GpuTelemetry

GIB = 1024
CATALOG = load_settings(env={}).catalog


def _slice(owner: str, pct: int, gb: float) -> MpsSlice:
    return MpsSlice(owner=owner, thread_pct=pct, memory_mib=int(gb * GIB), model=owner)


def _gpu(gpu_type: str, *slices: MpsSlice, index: int = 0, mig: bool = False) -> Gpu:
    return Gpu(index=index, gpu_type=gpu_type,
               memory_total_mib=80 * GIB if gpu_type == "H100" else 40 * GIB,
               slices=slices, mig_enabled=mig, power_w=300.0)


def _node(name: str, config: str | None, *gpus: Gpu) -> Node:
    replicas = None if config is None else (1 if config == "exclusive" else
                                            int(config.removeprefix("mps-")))
    return Node(name=name, gpus=gpus, device_plugin_config=config or "",
                gpu_replicas=replicas)


def _request(name: str, gb: float, priority: Priority = Priority.HIGH) -> PlacementRequest:
    return PlacementRequest(model_name=name, model_memory_gb=gb, priority=priority,
                            latency_sla_ms=500)


def _apply_unified(before: str, diff: str) -> str:
    """Apply a unified diff (as difflib writes it) to ``before``: proof that it is real."""
    src = before.splitlines(keepends=True)
    out: list[str] = []
    pos = 0
    lines = diff.splitlines(keepends=True)[2:]
    i = 0
    while i < len(lines):
        match = re.match(r"@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@", lines[i])
        assert match, lines[i]
        start = int(match.group(1)) - (0 if match.group(2) == "0" else 1)
        out += src[pos:start]
        pos = start
        i += 1
        while i < len(lines) and not lines[i].startswith("@@"):
            tag, text = lines[i][0], lines[i][1:]
            if tag in " -":
                assert src[pos] == text, (src[pos], text)
                pos += 1
            if tag in " +":
                out.append(text)
            i += 1
    return "".join(out + src[pos:])


@pytest.fixture()
def mps4_fleet() -> list[Node]:
    """Every node on mps-4: a large model that needs a whole H100, an empty H100, tiny
    models that mps-4 serves, and a medium one it caps."""
    return [
        _node("h100-a", "mps-4", _gpu("H100", _slice("llama-70b", 100, 38))),
        _node("h100-b", "mps-4", _gpu("H100")),
        _node("a100-a", "mps-4", _gpu("A100", _slice("phi-2", 25, 2.5),
                                      _slice("gemma-2b", 25, 2.5))),
        _node("a100-b", "mps-4", _gpu("A100", _slice("llama-13b", 50, 13))),
        _node("a100-c", "mps-4", _gpu("A100")),
    ]


def test_a_large_model_on_mps_4_gets_an_exclusive_proposal(
        settings: Settings, mps4_fleet: list[Node]) -> None:
    result = plan_mps(mps4_fleet, catalog=settings.catalog)
    assert result.nodes_changing == ("h100-a", "a100-b")
    big = result.proposal("h100-a")
    assert (big.config_before, big.config_after) == ("mps-4", "exclusive")
    assert any("asks 100 % of SM threads; mps-4 gives each client 25 %" in w for w in big.why)
    assert any("needs 38912 MiB" in w for w in big.why)
    assert dict(big.node_label) == {"nvidia.com/device-plugin.config": "exclusive"}
    medium = result.proposal("a100-b")
    assert (medium.config_before, medium.config_after) == ("mps-4", "mps-2")
    assert medium.can_roll_out and not medium.errors


def test_nodes_whose_config_already_fits_get_no_proposal(
        settings: Settings, mps4_fleet: list[Node]) -> None:
    result = plan_mps(mps4_fleet, catalog=settings.catalog)
    # Two tiny clients and two empty GPUs: mps-4 serves all of them as they are.
    assert set(result.fits) == {"h100-b", "a100-a", "a100-c"}
    assert not result.unresolved
    settled = [_node("h100-a", "exclusive", _gpu("H100", _slice("llama-70b", 100, 38))),
               _node("a100-b", "mps-2", _gpu("A100", _slice("llama-13b", 50, 13)))]
    again = plan_mps(settled, catalog=settings.catalog)
    assert again.proposals == () and set(again.fits) == {"h100-a", "a100-b"}
    assert again.config_map_diff == ""


def test_the_diff_is_a_real_unified_diff_of_the_compiled_configs(
        settings: Settings, mps4_fleet: list[Node]) -> None:
    p = plan_mps(mps4_fleet, catalog=settings.catalog).proposal("h100-a")
    assert p.diff.startswith("--- h100-a (running: mps-4)\n+++ h100-a (proposed: exclusive)\n")
    assert "-  nvidia.com/device-plugin.config: mps-4\n" in p.diff
    assert "+  nvidia.com/device-plugin.config: exclusive\n" in p.diff
    assert "-      replicas: 4\n" in p.diff
    assert _apply_unified(p.yaml_before, p.diff) == p.yaml_after
    # Both sides are the compiler's YAML: the label document, then the plugin config.
    label, config = list(yaml.safe_load_all(p.yaml_after))
    assert label["labels"] == {"nvidia.com/device-plugin.config": "exclusive"}
    assert config == {"version": "v1", "flags": {"migStrategy": "none"}}
    before = list(yaml.safe_load_all(p.yaml_before))[1]
    assert before["sharing"]["mps"]["resources"] == [{"name": "nvidia.com/gpu", "replicas": 4}]


def test_the_fleet_config_map_gains_the_new_configs(
        settings: Settings, mps4_fleet: list[Node]) -> None:
    result = plan_mps(mps4_fleet, catalog=settings.catalog)
    assert set(yaml.safe_load(result.config_map_before)["data"]) == {"mps-4"}
    after = yaml.safe_load(result.config_map_after)["data"]
    assert set(after) == {"exclusive", "mps-2", "mps-4"}
    assert yaml.safe_load(after["mps-2"])["sharing"]["mps"]["resources"][0]["replicas"] == 2
    assert _apply_unified(result.config_map_before, result.config_map_diff) == \
        result.config_map_after


def test_a_requested_exclusive_workload_opens_the_empty_h100(
        settings: Settings, scheduler: Scheduler, mps4_fleet: list[Node]) -> None:
    before = plan_mps(mps4_fleet, catalog=settings.catalog)
    result = plan_mps(mps4_fleet, catalog=settings.catalog, requests=[_request("llama-3-70b", 60)],
                      scheduler=scheduler)
    assert dict(result.placed) == {"llama-3-70b": "h100-b/gpu0"}
    p = result.proposal("h100-b")
    assert (p.config_before, p.config_after, p.placed_requests) == (
        "mps-4", "exclusive", ("llama-3-70b",))
    assert p.impact.pods_to_move == ()  # nothing runs there yet
    assert [s.owner for s in p.layouts_after[0].slices] == ["llama-3-70b"]
    # The one cost formula: a GPU that starts hosting a server costs its whole GPU-hour.
    h100 = settings.catalog["H100"].price_per_gpu_hour
    assert result.cost_after.total_per_hour - result.cost_before.total_per_hour == h100
    assert result.cost_before == before.cost_before
    assert p.impact.cost_before_nusd_per_h == 0
    assert p.impact.cost_after_nusd_per_h == int(h100 * 10**9)


def test_a_request_that_fits_as_configured_changes_nothing(
        settings: Settings, scheduler: Scheduler, mps4_fleet: list[Node]) -> None:
    result = plan_mps(mps4_fleet, catalog=settings.catalog, requests=[_request("tinyllama", 1.1)],
                      scheduler=scheduler)
    (key,) = result.placed.values()
    node = key.split("/")[0]
    assert node not in result.nodes_changing
    assert result.nodes_changing == ("h100-a", "a100-b")


def test_a_tiny_request_on_a_full_exclusive_fleet_needs_a_shared_config(
        settings: Settings, scheduler: Scheduler) -> None:
    fleet = [_node("a100-x", "exclusive", _gpu("A100", _slice("llama-13b", 50, 13))),
             _node("a100-y", "exclusive", _gpu("A100", _slice("starcoder", 50, 15)))]
    assert plan_mps(fleet, catalog=settings.catalog).proposals == ()
    result = plan_mps(fleet, catalog=settings.catalog, requests=[_request("phi-2", 2.5)],
                      scheduler=scheduler)
    (p,) = result.proposals
    assert (p.config_before, p.config_after) == ("exclusive", "mps-2")
    assert "advertises 1 replica per GPU" in " ".join(p.why)
    assert p.placed_requests == ("phi-2",)
    assert p.impact.pods_to_move == (p.layouts_before[0].slices[0].owner,)


def test_a_request_that_fits_nowhere_is_listed_with_the_schedulers_reason(
        settings: Settings, scheduler: Scheduler, mps4_fleet: list[Node]) -> None:
    full = [_node("a100-z", "mps-2", _gpu("A100", _slice("a", 50, 13), _slice("b", 50, 13)))]
    result = plan_mps(full, catalog=settings.catalog, requests=[_request("mistral-7b", 8)],
                      scheduler=scheduler)
    assert result.proposals == () and not result.placed
    assert "0/1 nodes fit" in result.unplaced["mistral-7b"]


def test_a_gap_no_node_wide_config_closes_is_reported_not_proposed(settings: Settings) -> None:
    # 50 + 25 + 25: three clients need three replicas, and three replicas cap the 50.
    fleet = [_node("a100-m", "mps-3", _gpu("A100", _slice("m", 50, 8), _slice("t1", 25, 2),
                                           _slice("t2", 25, 2)))]
    result = plan_mps(fleet, catalog=settings.catalog)
    assert result.proposals == () and result.fits == ()
    assert "m asks 50 % of SM threads; mps-3 gives each client 33 %" in \
        result.unresolved["a100-m"]


def test_a_node_wide_config_with_mixed_gpus_carries_lint_findings(settings: Settings) -> None:
    node = _node("h100-duo", "exclusive",
                 _gpu("H100", _slice("big", 100, 30), index=0),
                 _gpu("H100", _slice("t1", 25, 2), _slice("t2", 25, 2), index=1))
    (p,) = plan_mps([node], catalog=settings.catalog).proposals
    assert p.config_after == "mps-2"
    codes = {f.code for f in p.findings}
    assert {"node-wide-config", "thread-share-capped"} <= codes


def test_an_unknown_running_config_is_proposed_but_cannot_be_rolled_out(
        settings: Settings) -> None:
    node = Node(name="a100-q", gpus=(_gpu("A100", _slice("m", 50, 8)),))
    assert running_config(node) is None
    (p,) = plan_mps([node], catalog=settings.catalog).proposals
    assert p.config_before is None and not p.can_roll_out
    assert p.why == ("the running device-plugin config is unknown",)
    assert p.diff.startswith("--- a100-q (running: (unknown))")


def test_pods_to_move_room_elsewhere_and_capacity_kept(
        settings: Settings, mps4_fleet: list[Node]) -> None:
    result = plan_mps(mps4_fleet, catalog=settings.catalog)
    big, medium = result.proposal("h100-a"), result.proposal("a100-b")
    assert big.impact.pods_to_move == ("llama-70b",)
    # Every other node runs mps-4, which would cap the large model: no room without capping.
    assert big.impact.room_elsewhere == 0
    assert medium.impact.room_elsewhere == 0
    assert big.impact.capacity_kept == pytest.approx(4 / 5)
    assert result.capacity_kept_one_at_a_time == pytest.approx(4 / 5)
    assert result.capacity_kept_all_at_once == pytest.approx(3 / 5)
    tiny_on_mps2 = [_node("a100-s", "mps-2", _gpu("A100", _slice("m", 50, 13),
                                                   _slice("x", 50, 13))),
                    _node("a100-t", "mps-4", _gpu("A100"))]
    (p,) = plan_mps([_node("a100-u", "exclusive", _gpu("A100", _slice("p", 25, 2),
                                                       _slice("q", 25, 2))), *tiny_on_mps2],
                    catalog=settings.catalog).proposals
    assert p.impact.room_elsewhere == 2  # both tiny clients fit on a100-t's mps-4


def test_cost_before_and_after_come_from_the_one_formula_with_energy(
        settings: Settings, scheduler: Scheduler, mps4_fleet: list[Node]) -> None:
    reading = FleetTelemetry(
        timestamp=1.0, deployments=(), totals=FleetTotals(qps=10.0, power_w=1500.0,
                                                          tops_per_w=1.0),
        gpus=tuple(GpuTelemetry(node=n.name, gpu_index=0, gpu_type=n.gpus[0].gpu_type,
                                uuid=n.name, utilization=0.5, power_w=300.0,
                                memory_used_mib=0, memory_total_mib=n.gpus[0].memory_total_mib,
                                energy_j=0.0) for n in mps4_fleet))
    result = plan_mps(mps4_fleet, catalog=settings.catalog, requests=[_request("llama-3-70b", 60)],
                      scheduler=scheduler, telemetry=reading)
    assert result.energy_known
    assert result.cost_before == fleet_cost(reading, mps4_fleet, settings.catalog)
    # The newly used H100: its GPU-hour plus 300 W for an hour at the kWh price.
    extra = settings.catalog["H100"].price_per_gpu_hour + \
        Decimal("0.3") * settings.catalog.electricity_per_kwh
    assert result.cost_after.total_per_hour - result.cost_before.total_per_hour == extra


def test_predicted_disruption_one_at_a_time_and_all_at_once(mps4_fleet: list[Node]) -> None:
    nodes = ["h100-a", "a100-a"]
    rolling = predict_disruption(mps4_fleet, change_groups("rolling", nodes))
    # 4 pods in the fleet; a100-a holds 2 of them.
    assert rolling.pods_total == 4
    assert (rolling.disruption, rolling.worst_group) == (0.5, ("a100-a",))
    both = predict_disruption(mps4_fleet, change_groups("blue_green", nodes))
    assert both.disruption == 0.75
    # 500 % capacity; out: h100-a (100 used) and a100-a (50 used); free elsewhere:
    # h100-b 100 + a100-b 50 + a100-c 100 = 250; 250 - 150 = 100 → 20 %.
    assert both.free_capacity == pytest.approx(0.2)
    assert predict_disruption(mps4_fleet, ()).disruption == 0.0


def test_with_dra_only_the_gpus_whose_claims_change_are_proposed(
        settings: Settings, scheduler: Scheduler) -> None:
    fleet = [_node("a100-d", None, _gpu("A100", _slice("phi-2", 25, 2.5))),
             _node("a100-e", None, _gpu("A100"))]
    assert plan_mps(fleet, catalog=settings.catalog, backend=DRA).proposals == ()
    # A second tiny client joins phi-2's shared claim as it is: nothing to change.
    joined = plan_mps(fleet, catalog=settings.catalog, backend=DRA,
                      requests=[_request("gemma-2b", 2.5, Priority.LOW)], scheduler=scheduler)
    assert joined.placed["gemma-2b"] == "a100-d/gpu0" and joined.proposals == ()
    # A medium model joins phi-2 and raises the claim's defaults: a changed claim.
    result = plan_mps(fleet, catalog=settings.catalog, backend=DRA,
                      requests=[_request("llama-13b", 13)], scheduler=scheduler)
    (p,) = result.proposals
    assert (p.node, p.backend, p.can_roll_out) == ("a100-d", DRA, False)
    assert "-              defaultActiveThreadPercentage: 25\n" in p.diff
    assert "+              defaultActiveThreadPercentage: 50\n" in p.diff
    assert p.impact.pods_to_move == ("phi-2",)
    claims = list(yaml.safe_load_all(p.yaml_after))
    params = claims[-1]["spec"]["devices"]["config"][0]["opaque"]["parameters"]
    assert params["sharing"]["strategy"] == "MPS"
    assert params["sharing"]["mpsConfig"]["defaultActiveThreadPercentage"] == 50
    assert _apply_unified(p.yaml_before, p.diff) == p.yaml_after


def test_bad_planner_inputs_are_refused_naming_the_field(
        settings: Settings, mps4_fleet: list[Node]) -> None:
    with pytest.raises(ValidationError) as err:
        plan_mps(mps4_fleet, catalog=settings.catalog, backend="mig")
    assert err.value.field == "rollouts.mps_backend"
    with pytest.raises(ValidationError) as err:
        plan_mps(mps4_fleet, catalog=settings.catalog, requests=[_request("x", 1)])
    assert err.value.field == "scheduler"


def test_config_gaps_is_empty_exactly_when_the_config_serves_the_layout() -> None:
    lay = GpuLayout(node="n", gpu_index=0, gpu_type="A100", memory_total_mib=40 * GIB,
                    slices=(_slice("a", 25, 2), _slice("b", 25, 2)))
    assert config_gaps([lay], "mps-4") == ()
    assert config_gaps([lay], "mps-2") == ()
    assert len(config_gaps([lay], "exclusive")) == 1
    assert config_gaps([lay], "mps-8") == ("a asks 25 % of SM threads; mps-8 gives each "
                                           "client 12 %", "b asks 25 % of SM threads; mps-8 "
                                           "gives each client 12 %")


_SHARES = st.sampled_from((25, 50, 100))


@st.composite
def _fleets(draw: st.DrawFn) -> list[Node]:
    nodes = []
    for n in range(draw(st.integers(1, 4))):
        gpus = []
        for g in range(draw(st.integers(1, 2))):
            slices: list[MpsSlice] = []
            free = 100
            for k in range(draw(st.integers(0, 4))):
                pct = draw(_SHARES)
                if pct <= free:
                    free -= pct
                    slices.append(_slice(f"m{n}-{g}-{k}", pct, draw(st.sampled_from(
                        (1.0, 2.5, 8.0, 15.0)))))
            gpus.append(_gpu("A100", *slices, index=g))
        config = draw(st.sampled_from(("exclusive", "mps-2", "mps-3", "mps-4", "mps-8")))
        nodes.append(_node(f"a100-{n}", config, *gpus))
    return nodes


@settings_profile(max_examples=150, deadline=None)
@given(fleet=_fleets())
def test_a_node_is_proposed_exactly_when_its_config_falls_short_and_the_target_serves_better(
        fleet: list[Node]) -> None:
    result = plan_mps(fleet, catalog=CATALOG)
    proposed = {p.node: p for p in result.proposals}
    for node in fleet:
        layouts = [GpuLayout.from_gpu(node.name, g) for g in node.gpus]
        current = node.device_plugin_config
        gaps = config_gaps(layouts, current)
        if not gaps:
            assert node.name in result.fits and node.name not in proposed
            continue
        if node.name in proposed:
            p = proposed[node.name]
            assert p.config_after == dp.compile_node(layouts)[0]
            assert gap_score(layouts, p.config_after) < gap_score(layouts, current)
            assert p.layouts_after == tuple(layouts)  # no request: nothing moves
            assert p.impact.pods_to_move == tuple(s.owner for lay in layouts
                                                  for s in lay.slices)
        else:
            assert result.unresolved[node.name] == gaps
    assert set(proposed) | set(result.fits) | set(result.unresolved) == {n.name for n in fleet}
    assert result.cost_before == result.cost_after  # configs change no one's share

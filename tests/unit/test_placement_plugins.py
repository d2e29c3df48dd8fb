"""The pipeline's plugins explain themselves: a free device-plugin replica, a custom filter
that needs no framework change, masks over any number of filters, the two kinds of
scorer and the Normalize stage."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from core.adapters.settings_source import load_settings
from core.errors import ReservationError
from core.fleet import synthetic_fleet
from core.model import Gpu, MpsSlice, Node, PlacementRequest, gb_to_mib
from core.placement import FleetSnapshot, Scheduler
from core.placement.filters import (
    DEFAULT_FILTERS,
    FilterContext,
    GpuMemory,
    Utilization,
    combine_masks,
    first_failures,
)
from core.placement.reference import loop_decide
from core.placement.scorers import (
    DEFAULT_SCORERS,
    RowScorePlugin,
    TypeScorePlugin,
    UtilizationHeadroom,
)
from core.placement.snapshot import Columns
from core.scheduling import build_policy, build_scheduler

SETTINGS = load_settings(env={})
CAT, RULES = SETTINGS.catalog, SETTINGS.classes
PROFILE = hsettings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def req(gb: float, priority: str = "MEDIUM", i: int = 0) -> PlacementRequest:
    return PlacementRequest.parse({"model_name": f"m{i}", "model_memory_gb": gb,
                                   "priority": priority, "latency_sla_ms": 500,
                                   "request_id": f"r{i}"})


def tiny(owner: str) -> MpsSlice:
    policy = RULES.classify(2.0)
    return MpsSlice(owner=owner, thread_pct=policy.share_pct, memory_mib=gb_to_mib(2.0))


def a100(name: str, *, slices: int = 0, replicas: int | None = None, config: str = "",
         util: float = 0.0, labels: dict[str, str] | None = None) -> Node:
    gpu = Gpu(index=0, gpu_type="A100", memory_total_mib=CAT["A100"].memory_mib,
              utilization=util, slices=tuple(tiny(f"{name}-s{k}") for k in range(slices)))
    return Node(name=name, gpus=(gpu,), gpu_replicas=replicas, device_plugin_config=config,
                labels=labels or {})


# -- the device-plugin replica filter ------------------------------------------------------
def test_a_gpu_whose_replicas_are_all_held_is_filtered_out_and_says_how_to_fit() -> None:
    # Two tiny slices on an mps-2 node: share, memory and clients would allow a third.
    snap = FleetSnapshot([a100("a100-0", slices=2, replicas=2, config="mps-2")], CAT)
    d = build_scheduler(SETTINGS).decide(req(2.0), snap)
    assert not d.placed
    assert d.summary == "0/1 nodes fit: 1 no free device-plugin replica"
    assert d.reason(0) == "no free device-plugin replica: mps-2 advertises 2 per GPU, 2 held"
    assert d.matrix().rows[0].filter == "DeviceReplica"
    assert d.recommendations == [
        "reconfigure a100-0 to mps-3 through a rollout plan (placement never changes a "
        "node's config)"]


def test_the_replica_recommendation_picks_the_node_needing_the_fewest_replicas() -> None:
    snap = FleetSnapshot([a100("a100-0", slices=3, replicas=3, config="mps-3"),
                          a100("a100-1", slices=2, replicas=2, config="mps-2")], CAT)
    d = build_scheduler(SETTINGS).decide(req(2.0), snap)
    assert d.summary == "0/2 nodes fit: 2 no free device-plugin replica"
    assert d.recommendations[0].startswith("reconfigure a100-1 to mps-3 ")


def test_a_node_advertising_no_replica_under_its_config_is_told_to_wait_or_restart() -> None:
    # The node says it runs mps-2 but advertises none yet (its plugin is restarting).
    snap = FleetSnapshot([a100("a100-0", slices=1, replicas=0, config="mps-2")], CAT)
    d = build_scheduler(SETTINGS).decide(req(2.0), snap)
    assert d.summary == "0/1 nodes fit: 1 no free device-plugin replica"
    assert d.recommendations == [
        "wait until a100-0 advertises every replica of mps-2, or restart its device plugin "
        "through a rollout plan (placement never changes a node's config)"]


def test_none_means_the_device_plugin_sets_no_limit() -> None:
    snap = FleetSnapshot([a100("a100-0", slices=3, replicas=None)], CAT)
    assert not snap.replicas_limited
    d = build_scheduler(SETTINGS).decide(req(2.0), snap)
    assert d.placed and d.node == "a100-0"


def test_a_free_replica_lets_the_gpu_fit_and_the_other_filters_still_apply() -> None:
    snap = FleetSnapshot([a100("a100-0", slices=2, replicas=2, config="mps-2"),
                          a100("a100-1", slices=1, replicas=2, config="mps-2")], CAT)
    d = build_scheduler(SETTINGS).decide(req(2.0), snap)
    assert d.node == "a100-1"
    assert "1/2 nodes fit: 1 no free device-plugin replica" in d.summary
    # A 50 % request fits a100-1's 75 % free share but a100-0 still has no replica.
    assert build_scheduler(SETTINGS).decide(req(8.0), snap).node == "a100-1"


def test_replicas_are_reserved_and_released_copy_on_write() -> None:
    snap = FleetSnapshot([a100("a100-0", slices=0, replicas=2, config="mps-2"),
                          a100("a100-1")], CAT)
    before = snap.cols
    assert before.replicas_free[0] == 2
    scheduler = build_scheduler(SETTINGS)
    first = scheduler.place(req(2.0, i=1), snap)
    second = scheduler.place(req(2.0, i=2), snap)
    assert (first.node, second.node) == ("a100-0", "a100-0")
    assert snap.cols.replicas_free[0] == 0 and before.replicas_free[0] == 2
    third = scheduler.decide(req(2.0, i=3), snap)
    assert third.node == "a100-1"
    with pytest.raises(ReservationError, match="no free device-plugin replica"):
        snap.reserve(0, tiny("r3"))
    assert snap.unreserve("r1") is True
    assert snap.cols.replicas_free[0] == 1
    assert scheduler.decide(req(2.0, i=3), snap).node == "a100-0"
    # The first decision still explains itself with the columns it saw.
    assert first.filter_status.ctx.cols.replicas_free[0] == 2


@pytest.mark.parametrize("name", ["first-fit", "bin-pack", "spread", "random"])
def test_baselines_never_bind_beyond_the_advertised_replicas(name: str) -> None:
    snap = FleetSnapshot([a100("a100-0", slices=2, replicas=2, config="mps-2"),
                          a100("a100-1", slices=3, replicas=4, config="mps-4")], CAT)
    d = build_policy(name, SETTINGS).decide(req(2.0), snap)
    assert d.node == "a100-1"


def limited(fleet: tuple[Node, ...], limits: list[int | None]) -> tuple[Node, ...]:
    """The fleet with each node's device plugin advertising ``limits[i]`` (cycled)."""
    return tuple(dataclasses.replace(
        n, gpu_replicas=limits[i % len(limits)],
        device_plugin_config="" if limits[i % len(limits)] is None
        else f"mps-{limits[i % len(limits)]}")
        for i, n in enumerate(fleet))


requests = st.builds(
    lambda gb, prio, i: req(gb, prio, i),
    gb=st.floats(min_value=0.1, max_value=80, allow_nan=False),
    prio=st.sampled_from(["LOW", "MEDIUM", "HIGH", "CRITICAL"]), i=st.integers(0, 10**9))
fleets = st.builds(
    lambda gpus, per_node, seed, limits: limited(
        synthetic_fleet(CAT, RULES, gpus=gpus, gpus_per_node=per_node, seed=seed), limits),
    gpus=st.integers(1, 40), per_node=st.integers(1, 4), seed=st.integers(0, 10**6),
    limits=st.lists(st.one_of(st.none(), st.integers(0, 4)), min_size=1, max_size=6))


@PROFILE
@given(fleet=fleets, r=requests)
def test_with_replica_limits_the_vectorized_pipeline_agrees_with_the_plain_loop(
        fleet, r) -> None:
    d = build_scheduler(SETTINGS).decide(r, FleetSnapshot(fleet, CAT))
    c = loop_decide(r, fleet, catalog=CAT, classes=RULES, weights=SETTINGS.placement.weights)
    assert (d.node, d.gpu_index) == (c.node, c.gpu_index)
    assert d.gpus_fit == c.fitting
    if d.placed:
        assert np.isclose(d.score, c.score)
    else:
        assert d.summary.startswith("0/")


@PROFILE
@given(fleet=fleets, reqs=st.lists(requests, min_size=1, max_size=30))
def test_placing_never_holds_more_slices_than_the_replicas_advertised(fleet, reqs) -> None:
    snap = FleetSnapshot(fleet, CAT)
    held_before = {(n.name, g.index): len(g.slices) for n in fleet for g in n.gpus}
    scheduler = build_scheduler(SETTINGS)
    for i, r in enumerate(reqs):
        scheduler.place(dataclasses.replace(r, request_id=f"req-{i}"), snap)
    for node in snap.to_nodes():
        for gpu in node.gpus:
            if node.gpu_replicas is not None and len(gpu.slices) > node.gpu_replicas:
                # Only what the node already held may exceed a (lowered) limit.
                assert len(gpu.slices) == held_before[(node.name, gpu.index)]


# -- a custom filter explains itself -------------------------------------------------------
class InZone:
    """A third-party filter: only nodes labelled with the wanted zone."""

    name = "InZone"

    def __init__(self, zone: str) -> None:
        self.zone = zone

    def _zone(self, ctx: FilterContext, row: int) -> str:
        return ctx.snapshot.nodes[ctx.snapshot.node_idx[row]].labels.get("zone", "")

    def mask(self, ctx: FilterContext) -> np.ndarray:
        return np.array([self._zone(ctx, r) == self.zone for r in range(ctx.snapshot.size)],
                        dtype=bool)

    def reason(self, ctx: FilterContext, row: int) -> str:
        return f"node is in zone {self._zone(ctx, row) or '(none)'}, not {self.zone}"

    def phrase(self, ctx: FilterContext) -> str:
        return f"outside zone {self.zone}"

    def recommend(self, ctx: FilterContext, rows: np.ndarray) -> list[str]:
        return [f"label a node zone={self.zone}"]


def test_a_custom_third_filter_shows_its_phrase_in_the_zero_of_n_line() -> None:
    nodes = [a100("a100-0", labels={"zone": "b"}), a100("a100-1", labels={"zone": "b"}),
             a100("a100-2", slices=2, labels={"zone": "a"})]
    scheduler = Scheduler(catalog=CAT, classes=RULES, weights=SETTINGS.placement.weights,
                          filters=(GpuMemory(), Utilization(), InZone("a")))
    d = scheduler.decide(req(38.0), FleetSnapshot(nodes, CAT))  # a100-2 lacks memory
    assert d.summary == "0/3 nodes fit: 2 outside zone a, 1 insufficient GPU memory"
    assert d.recommendations[-1] == "label a node zone=a"
    assert d.recommendations[0].startswith("largest free GPU memory among them")
    rows = {r.node: r for r in d.matrix().rows}
    assert (rows["a100-0"].filter, rows["a100-0"].reason) == ("InZone",
                                                             "node is in zone b, not a")
    placed = scheduler.decide(req(2.0), FleetSnapshot(nodes, CAT))
    assert placed.node == "a100-2"
    assert placed.summary.endswith("1/3 nodes fit: 2 outside zone a")


# -- masks over any number of filters ------------------------------------------------------
def test_masks_combine_for_any_number_of_filters_and_report_the_first_failure() -> None:
    a = np.array([True, False, True, True])
    b = np.array([False, False, True, True])
    c = np.array([True, True, False, True])
    ok = combine_masks([a, None, b, c], 4)
    assert ok.tolist() == [False, False, False, True]
    assert first_failures([a, None, b, c], ok).tolist() == [2, 0, 3, -1]
    assert combine_masks([], 3).tolist() == [True, True, True]
    alone = combine_masks([a], 4)
    assert alone.tolist() == a.tolist() and alone is not a
    assert first_failures([None, None], combine_masks([None, None], 2)).tolist() == [-1, -1]


def test_a_pipeline_of_one_filter_and_of_none_still_decides_and_explains() -> None:
    nodes = [a100("a100-0", util=0.95), a100("a100-1", util=0.2)]
    snap = FleetSnapshot(nodes, CAT)
    one = Scheduler(catalog=CAT, classes=RULES, weights=SETTINGS.placement.weights,
                    filters=(Utilization(),))
    d = one.decide(req(2.0), snap)
    assert d.node == "a100-1" and d.summary.endswith("1/2 nodes fit: 1 utilization ≥ 90 %")
    none = Scheduler(catalog=CAT, classes=RULES, weights=SETTINGS.placement.weights,
                     filters=())
    assert none.decide(req(2.0), snap).gpus_fit == 2


def test_the_default_filters_run_in_their_documented_order() -> None:
    assert [f.name for f in DEFAULT_FILTERS] == [
        "NodeAvailable", "GpuCapability", "GpuMemory", "Utilization", "MpsShare",
        "MpsClientLimit", "DeviceReplica", "AutoscalerChoice", "NotTriedBefore"]


# -- two kinds of scorer and the Normalize stage -------------------------------------------
class WildMps(RowScorePlugin):
    """An "mps" component whose raw scores leave 0–10 (and one NaN)."""

    name = "mps"

    def row_scores(self, cols: Columns, share_pct: int) -> np.ndarray:
        return np.array([25.0, -3.0, np.nan, 4.0])[: len(cols.util)]


def test_the_normalize_stage_puts_every_component_on_zero_to_ten() -> None:
    scorers = (*(s for s in DEFAULT_SCORERS if s.name != "mps"), WildMps())
    scheduler = Scheduler(catalog=CAT, classes=RULES, weights=SETTINGS.placement.weights,
                          scorers=scorers)
    snap = FleetSnapshot([a100(f"a100-{i}") for i in range(4)], CAT)
    m = scheduler.decide(req(2.0), snap).matrix()
    assert [r.scores["mps"] for r in sorted(m.rows, key=lambda r: r.node)] == [
        10.0, 0.0, 0.0, 4.0]
    for r in m.rows:
        assert all(0.0 <= v <= 10.0 for v in r.scores.values())
        assert r.total == pytest.approx(sum(m.weights[c] * r.scores[c] for c in m.components),
                                        abs=1e-3)
    assert m.chosen is not None and m.chosen.node == "a100-0"


class Both(TypeScorePlugin, RowScorePlugin):
    name = "utilization"

    def type_scores(self, ctx):  # type: ignore[no-untyped-def]
        return np.zeros(len(ctx.type_names))

    def row_scores(self, cols, share_pct):  # type: ignore[no-untyped-def]
        return cols.util_score


class Neither:
    name = "utilization"


@pytest.mark.parametrize("odd", [Both(), Neither()])
def test_a_scorer_must_be_exactly_one_kind(odd: object) -> None:
    scorers = (*(s for s in DEFAULT_SCORERS if s.name != "utilization"), odd)
    with pytest.raises(TypeError, match="exactly one of"):
        Scheduler(catalog=CAT, classes=RULES, weights=SETTINGS.placement.weights,
                  scorers=scorers)  # type: ignore[arg-type]


def test_scorers_split_into_type_and_row_plugins() -> None:
    s = build_scheduler(SETTINGS)
    assert {p.name for p in s.scorers if isinstance(p, TypeScorePlugin)} == {
        "efficiency", "affinity", "power"}
    assert {p.name for p in s.scorers if isinstance(p, RowScorePlugin)} == {
        "utilization", "mps"}
    assert isinstance(UtilizationHeadroom(), RowScorePlugin)


# -- layering ------------------------------------------------------------------------------
def test_the_placement_package_loads_neither_settings_nor_the_simulator() -> None:
    code = ("import sys, core.placement, core.placement.baselines, core.placement.preview, "
            "core.placement.reference; "
            "bad = sorted(m for m in sys.modules if m == 'core.settings' "
            "or m == 'core.sim' or m.startswith('core.sim.')); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# -- the autoscaler's choice ------------------------------------------------------------
def h100(name: str) -> Node:
    gpu = Gpu(index=0, gpu_type="H100", memory_total_mib=CAT["H100"].memory_mib)
    return Node(name=name, gpus=(gpu,))


def labelled(gb: float, **labels: str) -> PlacementRequest:
    return dataclasses.replace(req(gb), labels={f"gpu-scheduler.io/{k.replace('_', '-')}": v
                                                for k, v in labels.items()})


def test_a_scale_up_goes_to_the_gpu_type_the_autoscaler_sized_it_for() -> None:
    snap = FleetSnapshot([a100("a100-0"), h100("h100-0")], CAT)
    sched = build_scheduler(SETTINGS)
    assert sched.decide(labelled(2.0, gpu_type="H100"), snap).node == "h100-0"
    assert sched.decide(labelled(2.0, gpu_type="A100"), snap).node == "a100-0"
    d = sched.decide(labelled(2.0, gpu_type="L4"), snap)
    assert not d.placed and d.matrix().rows[0].filter == "AutoscalerChoice"
    # Without the label every type is open (the filter rejects nothing).
    assert sched.decide(req(2.0), snap).placed


def test_a_slot_planned_on_a_gpu_in_use_goes_there_while_one_has_room() -> None:
    snap = FleetSnapshot([a100("a100-idle"), a100("a100-used", slices=1, util=0.5)], CAT)
    sched = build_scheduler(SETTINGS)
    # Unlabelled, the scores prefer the idle GPU (utilization headroom, MPS fit).
    assert sched.decide(req(2.0), snap).node == "a100-idle"
    assert sched.decide(labelled(2.0, gpu_type="A100", gpu_in_use="true"), snap).node \
        == "a100-used"
    # A stale plan (the GPU in use is full) does not strand the request.
    full = FleetSnapshot([a100("a100-idle"), a100("a100-used", slices=4)], CAT)
    assert sched.decide(labelled(2.0, gpu_in_use="true"), full).node == "a100-idle"
    # The baselines honour it too (they share the filters).
    ff = build_policy("spread", SETTINGS, seed=0)
    assert ff.decide(labelled(2.0, gpu_in_use="true"), snap).node == "a100-used"

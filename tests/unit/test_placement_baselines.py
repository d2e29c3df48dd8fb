"""Baseline policies: each picks by its own rule among the GPUs the Scheduler's filters pass."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from core.adapters.settings_source import load_settings
from core.fleet import synthetic_fleet
from core.model import Gpu, MpsSlice, Node, PlacementRequest, gb_to_mib
from core.placement import FleetSnapshot
from core.placement.baselines import BASELINES, BinPack, FirstFit, RandomFit, Spread
from core.scheduling import build_policy, build_scheduler

SETTINGS = load_settings(env={})
CAT, RULES = SETTINGS.catalog, SETTINGS.classes


def request(gb: float, i: int = 0, priority: str = "MEDIUM") -> PlacementRequest:
    return PlacementRequest.parse({"model_name": f"m{i}", "model_memory_gb": gb,
                                   "priority": priority, "latency_sla_ms": 500,
                                   "request_id": f"r{i}"})


def tiny_slice(owner: str) -> MpsSlice:
    policy = RULES.classify(2.0)
    return MpsSlice(owner=owner, thread_pct=policy.share_pct, memory_mib=gb_to_mib(2.0),
                    model="x", workload_class=policy.workload_class)


def a100(name: str, *, tiny_slices: int = 0, util: float = 0.0, schedulable: bool = True,
         healthy: bool = True) -> Node:
    gpu = Gpu(index=0, gpu_type="A100", memory_total_mib=CAT["A100"].memory_mib,
              utilization=util, healthy=healthy,
              slices=tuple(tiny_slice(f"{name}-s{k}") for k in range(tiny_slices)))
    return Node(name=name, gpus=(gpu,), schedulable=schedulable)


def snapshot(*nodes: Node) -> FleetSnapshot:
    return FleetSnapshot(nodes, CAT)


def test_first_fit_takes_the_first_gpu_in_fleet_order_that_fits() -> None:
    snap = snapshot(a100("a-0", tiny_slices=4), a100("a-1", tiny_slices=1), a100("a-2"))
    d = build_policy(FirstFit.name, SETTINGS).decide(request(8.0), snap)  # medium: 50 %
    assert d.node == "a-1" and d.gpu_index == 0


def test_bin_pack_chooses_the_gpu_left_with_the_least_free_share() -> None:
    snap = snapshot(a100("a-0"), a100("a-1", tiny_slices=3), a100("a-2", tiny_slices=1))
    d = build_policy(BinPack.name, SETTINGS).decide(request(2.0), snap)  # tiny: 25 %
    assert d.node == "a-1"  # 25 % free → 0 % left


def test_spread_chooses_the_least_loaded_gpu() -> None:
    snap = snapshot(a100("a-0", tiny_slices=2), a100("a-1", util=0.5), a100("a-2", util=0.1),
                    a100("a-3", tiny_slices=1))
    d = build_policy(Spread.name, SETTINGS).decide(request(2.0), snap)
    assert d.node == "a-2"  # most free share, then lowest utilization


def test_random_is_reproducible_for_a_seed_and_picks_only_gpus_that_fit() -> None:
    nodes = [a100(f"a-{i}", tiny_slices=4 if i % 2 else 0) for i in range(10)]
    picks = []
    for _ in range(2):
        policy = build_policy(RandomFit.name, SETTINGS, seed=7)
        picks.append([policy.decide(request(2.0, i), snapshot(*nodes)).node for i in range(30)])
    assert picks[0] == picks[1]
    assert all(int(node.split("-")[1]) % 2 == 0 for node in picks[0])
    assert len(set(picks[0])) > 1


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_skip_cordoned_unhealthy_and_busy_gpus(name: str) -> None:
    snap = snapshot(a100("a-0", schedulable=False), a100("a-1", healthy=False),
                    a100("a-2", util=0.95), a100("a-3", tiny_slices=2))
    d = build_policy(name, SETTINGS).decide(request(2.0), snap)
    assert d.node == "a-3"


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_place_nothing_when_no_gpu_fits(name: str) -> None:
    snap = snapshot(a100("a-0", tiny_slices=4), a100("a-1", tiny_slices=3))
    d = build_policy(name, SETTINGS).decide(request(8.0), snap)  # needs 50 %
    assert d.row is None and not d.placed and d.node is None
    assert "0/2 GPUs fit" in d.summary


def test_a_baseline_decision_carries_the_slice_the_scheduler_would_hold() -> None:
    snap = snapshot(a100("a-0"))
    ours = build_policy(FirstFit.name, SETTINGS).decide(request(8.0), snap).mps_slice()
    theirs = build_scheduler(SETTINGS).decide(request(8.0), snap).mps_slice()
    assert ours == theirs


def test_unknown_baseline_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown baseline"):
        build_policy("best-fit-deluxe", SETTINGS)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(BASELINES)), gpus=st.integers(1, 30),
       seed=st.integers(0, 10**6),
       sizes=st.lists(st.sampled_from([1.0, 2.5, 3.9, 6.0, 12.0, 16.0, 24.0, 38.0, 70.0]),
                      min_size=1, max_size=40))
def test_baselines_never_overcommit_threads_memory_or_clients(name, gpus, seed, sizes) -> None:
    nodes = synthetic_fleet(CAT, RULES, gpus=gpus, seed=seed)
    snap = FleetSnapshot(nodes, CAT, max_clients=4)
    policy = build_policy(name, replace(SETTINGS, placement=replace(
        SETTINGS.placement, max_mps_clients_per_gpu=4)), seed=seed)
    for i, gb in enumerate(sizes):
        d = policy.decide(request(gb, i), snap)
        if d.row is None:
            continue
        assert snap.cols.available[d.row]
        snap.reserve(d.row, d.mps_slice())  # raises if the choice over-commits
    c = snap.cols
    assert (c.share_free >= 0).all() and (c.mem_free >= 0).all() and (c.clients <= 4).all()

"""The three acceptance scenarios of SPEC §3.3 and the pipeline's explanations."""

from __future__ import annotations

import pytest

from core.model import Gpu, MpsSlice, Node, PlacementRequest, WorkloadClass
from core.placement import FleetSnapshot, Scheduler
from core.settings import Settings


def gpu(settings: Settings, gpu_type: str, *, util: float = 0.0,
        slices: tuple[MpsSlice, ...] = ()) -> Gpu:
    return Gpu(index=0, gpu_type=gpu_type,
               memory_total_mib=settings.catalog[gpu_type].memory_mib,
               utilization=util, slices=slices)


def node(settings: Settings, name: str, gpu_type: str, **kw: object) -> Node:
    return Node(name=name, gpus=(gpu(settings, gpu_type, **kw),))  # type: ignore[arg-type]


def medium_slice(owner: str, gb: float = 8.0) -> MpsSlice:
    return MpsSlice(owner=owner, thread_pct=50, memory_mib=int(gb * 1024), model=owner,
                    workload_class=WorkloadClass.MEDIUM)


def req(gb: float, priority: str, sla: float = 100, **kw: object) -> PlacementRequest:
    return PlacementRequest.parse({"model_name": "model", "model_memory_gb": gb,
                                   "priority": priority, "latency_sla_ms": sla, **kw})


def test_large_high_priority_request_lands_on_h100_without_sharing(
    settings: Settings, scheduler: Scheduler
) -> None:
    snap = FleetSnapshot([node(settings, "h100-0", "H100"), node(settings, "a100-0", "A100")],
                         settings.catalog)
    d = scheduler.decide(req(40, "HIGH", sla=90), snap)
    assert (d.node, d.gpu_type, d.share_pct) == ("h100-0", "H100", 100)
    rows = {r.node: r for r in d.matrix().rows}
    # The A100 fits and would win on efficiency alone; the H100 still wins overall.
    assert rows["a100-0"].fits
    assert rows["a100-0"].scores["efficiency"] > rows["h100-0"].scores["efficiency"]
    assert rows["h100-0"].total == pytest.approx(9.75, abs=0.01)
    assert rows["a100-0"].total == pytest.approx(8.2, abs=0.05)
    assert rows["h100-0"].rank == 1 and rows["h100-0"].chosen


def test_small_low_priority_batch_request_shares_an_a100_at_half(
    settings: Settings, scheduler: Scheduler, default_snapshot: FleetSnapshot
) -> None:
    d = scheduler.place(req(8, "LOW", sla=2000, batch_size=32), default_snapshot)
    assert d.gpu_type == "A100" and d.share_pct == 50
    layout = default_snapshot.layout(d.row)
    others = [s for s in layout.slices if s.owner != d.owner]
    assert others, "expected to share the GPU"
    assert all(s.workload_class is WorkloadClass.MEDIUM for s in others)
    assert layout.share_used_pct == 100


def test_medium_request_goes_to_least_utilized_a100_when_h100s_are_busy(
    settings: Settings, scheduler: Scheduler
) -> None:
    busy = MpsSlice(owner="big", thread_pct=100, memory_mib=60 * 1024)
    nodes = [node(settings, f"h100-{i}", "H100", util=0.85,
                  slices=(MpsSlice(owner=f"big-{i}", thread_pct=100,
                                   memory_mib=busy.memory_mib),))
             for i in range(3)]
    utils = [0.62, 0.60, 0.65, 0.57, 0.61, 0.63]
    nodes += [node(settings, f"a100-{i}", "A100", util=u, slices=(medium_slice(f"m-{i}"),))
              for i, u in enumerate(utils)]
    d = scheduler.decide(req(8, "MEDIUM", sla=300), FleetSnapshot(nodes, settings.catalog))
    assert d.node == "a100-3"  # the least utilized A100 (57 %)
    assert d.summary.startswith("placed on a100-3/gpu0")
    assert "6/9 nodes fit: 3 insufficient free MPS share" in d.summary


def test_nothing_fits_explains_in_one_line_and_says_what_would_fit(
    settings: Settings, scheduler: Scheduler
) -> None:
    nodes = [node(settings, f"a100-{i}", "A100", util=0.5,
                  slices=(medium_slice(f"m-{i}", gb=30),)) for i in range(7)]
    nodes += [node(settings, f"h100-{i}", "H100", util=0.95) for i in range(5)]
    d = scheduler.decide(req(16, "MEDIUM"), FleetSnapshot(nodes, settings.catalog))
    assert not d.placed
    assert d.summary == "0/12 nodes fit: 7 insufficient GPU memory, 5 utilization ≥ 90 %"
    text = " ".join(d.recommendations)
    assert "largest free GPU memory" in text and "10.0 GiB" in text
    assert "lowest utilization among them is 95 %" in text


def test_cordoned_and_unhealthy_nodes_are_rejected_with_reasons(
    settings: Settings, scheduler: Scheduler
) -> None:
    nodes = [Node(name="a100-0", gpus=(gpu(settings, "A100"),), schedulable=False),
             Node(name="a100-1", gpus=(gpu(settings, "A100"),), ready=False),
             Node(name="a100-2", gpus=(Gpu(index=0, gpu_type="A100",
                                           memory_total_mib=40960, healthy=False),))]
    d = scheduler.decide(req(2, "LOW"), FleetSnapshot(nodes, settings.catalog))
    assert not d.placed
    reasons = {r.node: r.reason for r in d.matrix().rows}
    assert reasons == {"a100-0": "node is cordoned (unschedulable)",
                       "a100-1": "node is not ready", "a100-2": "GPU is unhealthy"}
    assert any("uncordon 1 node(s): a100-0" in r for r in d.recommendations)


def test_mps_sharing_is_refused_on_mig_gpus_but_exclusive_use_is_not(
    settings: Settings, scheduler: Scheduler
) -> None:
    mig = Gpu(index=0, gpu_type="H100", memory_total_mib=81920, mig_enabled=True)
    snap = FleetSnapshot([Node(name="h100-mig", gpus=(mig,))], settings.catalog)
    small = scheduler.decide(req(2, "HIGH"), snap)
    assert not small.placed
    assert "MIG" in (small.reason(0) or "")
    assert scheduler.decide(req(40, "HIGH"), snap).placed


def test_mps_client_limit_is_enforced(settings: Settings, scheduler: Scheduler) -> None:
    tiny = tuple(MpsSlice(owner=f"t{i}", thread_pct=1, memory_mib=10) for i in range(48))
    snap = FleetSnapshot([node(settings, "h100-0", "H100", slices=tiny)], settings.catalog)
    # 48 % threads used, plenty of memory and share left, but no client slot.
    d = scheduler.decide(req(1, "LOW"), snap)
    assert not d.placed
    assert d.reason(0) == "48 MPS clients already (limit 48)"


def test_decision_matrix_round_trips_and_stays_small_when_truncated(
    scheduler: Scheduler, default_snapshot: FleetSnapshot
) -> None:
    d = scheduler.decide(req(8, "HIGH"), default_snapshot)
    m = d.matrix()
    assert m.weight_version == 1
    assert sum(m.weights.values()) == pytest.approx(1.0)
    assert m.chosen is not None and m.chosen.key == f"{d.node}/gpu0"
    ranks = sorted(r.rank for r in m.rows if r.fits)
    assert ranks == list(range(1, len(ranks) + 1))
    for r in m.rows:
        if r.fits:
            expected = sum(m.weights[c] * r.scores[c] for c in m.components)
            assert r.total == pytest.approx(expected, abs=1e-3)
            assert all(0 <= v <= 10 for v in r.scores.values())
    full = m.to_dict()
    assert list(type(m).from_dict(full).rows) == m.ranked()
    small = m.to_dict(max_rows=3)
    assert len(small["rows"]) == 3
    assert small["omitted"]["fitting"] + sum(small["omitted"]["rejected_by_filter"].values()) \
        == len(m.rows) - 3


def test_reserve_is_idempotent_and_unreserve_releases(
    scheduler: Scheduler, default_snapshot: FleetSnapshot
) -> None:
    r = req(8, "LOW", request_id="req-1")
    d = scheduler.decide(r, default_snapshot)
    before = default_snapshot.cols.share_free[d.row]
    default_snapshot.reserve(d.row, d.mps_slice())
    default_snapshot.reserve(d.row, d.mps_slice())  # same owner, same GPU: no-op
    assert default_snapshot.cols.share_free[d.row] == before - 50
    assert default_snapshot.unreserve("req-1") is True
    assert default_snapshot.unreserve("req-1") is False
    assert default_snapshot.cols.share_free[d.row] == before
    # The decision still explains itself with the columns it saw.
    assert d.matrix().chosen is not None


def test_layout_planner_places_largest_first_and_explains_what_does_not_fit() -> None:
    from core.mps.layout import GpuLayout, plan_layout

    empty = GpuLayout(node="a100-0", gpu_index=0, gpu_type="A100", memory_total_mib=40960)
    plan = plan_layout(empty, [MpsSlice("tiny-a", 25, 2048), MpsSlice("med-a", 50, 8192),
                               MpsSlice("med-b", 50, 8192), MpsSlice("tiny-b", 25, 2048)])
    assert [s.owner for s in plan.placed] == ["med-a", "med-b"]
    assert plan.after.share_used_pct == 100 and plan.before.share_used_pct == 0
    assert [(s.owner, "% of SM threads" in why) for s, why in plan.unplaced] == [
        ("tiny-a", True), ("tiny-b", True)]

"""The Fleet page's data shaping: pools, filters, search, summary, busiest GPUs, pages and a
heat map that stays small at 5,000 GPUs."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from app import fleet_view as fv
from core.model import Gpu, MpsSlice, Node
from core.settings import Settings
from core.sim import generate_fleet


def _gpu(index: int, gpu_type: str = "H100", *, util: float = 0.0, healthy: bool = True,
         clients: int = 0) -> Gpu:
    slices = tuple(MpsSlice(owner=f"m{index}-{k}", thread_pct=25, memory_mib=1024,
                            model=f"m{k}") for k in range(clients))
    return Gpu(index=index, gpu_type=gpu_type, memory_total_mib=81_920, utilization=util,
               power_w=100.0 + 100 * util, slices=slices, healthy=healthy)


@pytest.fixture()
def small() -> tuple[Node, ...]:
    return (
        Node(name="h100-a", gpus=(_gpu(0, util=0.9, clients=2), _gpu(1, util=0.1)),
             labels={"gpu-scheduler.io/pool": "prod", "nvidia.com/gpu.product": "H100"}),
        Node(name="h100-b", gpus=(_gpu(0, util=0.5, healthy=False), _gpu(1, util=0.2)),
             schedulable=False, labels={"gpu-scheduler.io/pool": "prod"}),
        Node(name="a100-a", gpus=(_gpu(0, "A100", util=0.7, clients=1),), ready=False,
             labels={"cloud.google.com/gke-nodepool": "batch"}),
        Node(name="a100-b", gpus=(_gpu(0, "A100", util=0.3),),
             labels={"nvidia.com/gpu.product": "A100"}),
    )


@pytest.fixture(scope="module")
def big(settings: Settings) -> pd.DataFrame:
    nodes = generate_fleet(settings.catalog, settings.classes,
                           nodes_per_type={"H100": 200, "A100": 425}, gpus_per_node=8)
    return fv.gpu_frame(nodes)


def test_pool_is_the_pool_label_else_the_gpu_type(small: tuple[Node, ...]) -> None:
    assert [fv.pool_of(n) for n in small] == ["prod", "prod", "batch", "A100"]
    bare = Node(name="x", gpus=(_gpu(0, "L4"),))
    assert fv.pool_of(bare) == "L4"
    assert fv.pool_of(Node(name="y", gpus=())) == "(no GPU)"


def test_one_row_per_gpu_in_node_order(small: tuple[Node, ...]) -> None:
    frame = fv.gpu_frame(small)
    assert list(frame.columns) == list(fv.GPU_COLUMNS)
    assert list(zip(frame["node"], frame["gpu"], strict=True)) == [
        ("h100-a", 0), ("h100-a", 1), ("h100-b", 0), ("h100-b", 1), ("a100-a", 0),
        ("a100-b", 0)]
    assert frame.loc[0, "models"] == "m0, m1" and frame.loc[0, "threads used %"] == 50


def test_empty_fleet_gives_empty_frames() -> None:
    frame = fv.gpu_frame(())
    assert frame.empty and list(frame.columns) == list(fv.GPU_COLUMNS)
    assert fv.summary(frame).empty and fv.top_gpus(frame).empty
    page = fv.paginate(frame, page=3, nodes_per_page=10)
    assert (page.number, page.pages, page.nodes) == (1, 1, ())
    assert fv.heat_grid(frame).rows == ()


def test_filters_combine_and_states_are_any_of(small: tuple[Node, ...]) -> None:
    frame = fv.gpu_frame(small)

    def nodes(**kw: object) -> list[str]:
        return fv.node_names(fv.filter_gpus(frame, fv.FleetFilter(**kw)))  # type: ignore[arg-type]

    assert nodes() == ["h100-a", "h100-b", "a100-a", "a100-b"]
    assert nodes(gpu_types=("A100",)) == ["a100-a", "a100-b"]
    assert nodes(pools=("prod",)) == ["h100-a", "h100-b"]
    assert nodes(states=(fv.NodeState.CORDONED,)) == ["h100-b"]
    assert nodes(states=(fv.NodeState.NOT_READY,)) == ["a100-a"]
    assert nodes(states=(fv.NodeState.CORDONED, fv.NodeState.NOT_READY)) == ["h100-b", "a100-a"]
    unhealthy = fv.filter_gpus(frame, fv.FleetFilter(states=(fv.NodeState.UNHEALTHY,)))
    assert list(zip(unhealthy["node"], unhealthy["gpu"], strict=True)) == [("h100-b", 0)]
    assert nodes(gpu_types=("A100",), pools=("prod",)) == []


def test_search_is_a_case_insensitive_substring_not_a_pattern(small: tuple[Node, ...]) -> None:
    frame = fv.gpu_frame(small)
    assert fv.node_names(fv.filter_gpus(frame, fv.FleetFilter(search=" A100-"))) == [
        "a100-a", "a100-b"]
    assert fv.node_names(fv.filter_gpus(frame, fv.FleetFilter(search="-b"))) == [
        "h100-b", "a100-b"]
    assert fv.filter_gpus(frame, fv.FleetFilter(search=".*")).empty


def test_summary_per_pool_and_type(small: tuple[Node, ...]) -> None:
    out = fv.summary(fv.gpu_frame(small)).set_index(["pool", "type"])
    assert list(out.reset_index().columns) == list(fv.SUMMARY_COLUMNS)
    prod = out.loc[("prod", "H100")]
    assert (prod["nodes"], prod["GPUs"], prod["cordoned"], prod["unhealthy GPUs"],
            prod["not ready"], prod["MPS clients"]) == (2, 4, 1, 1, 0, 2)
    assert prod["mean utilization"] == pytest.approx((0.9 + 0.1 + 0.5 + 0.2) / 4)
    assert prod["power kW"] == pytest.approx((190 + 110 + 150 + 120) / 1000)
    assert prod["threads used (mean %)"] == pytest.approx(12.5)
    batch = out.loc[("batch", "A100")]
    assert (batch["nodes"], batch["not ready"], batch["cordoned"]) == (1, 1, 0)


def test_busiest_gpus_are_sorted_and_ties_are_stable(small: tuple[Node, ...]) -> None:
    frame = fv.gpu_frame(small)
    top = fv.top_gpus(frame, 3)
    assert list(top.columns) == list(fv.BUSIEST_COLUMNS)
    assert list(zip(top["node"], top["gpu"], strict=True)) == [
        ("h100-a", 0), ("a100-a", 0), ("h100-b", 0)]
    tied = frame.assign(utilization=0.5)
    assert list(fv.top_gpus(tied, 2)["node"]) == ["a100-a", "a100-b"]
    assert fv.top_gpus(frame, 0).empty


def test_pages_partition_the_nodes_and_never_split_a_node(big: pd.DataFrame) -> None:
    names = fv.node_names(big)
    assert len(names) == 625 and len(big) == 5000
    seen: list[str] = []
    pages = fv.page_count(len(names), 25)
    assert pages == 25
    for number in range(1, pages + 1):
        page = fv.paginate(big, page=number, nodes_per_page=25)
        assert len(page.rows) == 200 and set(page.rows["node"]) == set(page.nodes)
        seen += page.nodes
    assert seen == names
    assert fv.paginate(big, page=99, nodes_per_page=25).number == 25
    assert fv.paginate(big, page=0, nodes_per_page=25).number == 1
    last = fv.paginate(big, page=3, nodes_per_page=300)
    assert (last.number, len(last.nodes)) == (3, 25)


def test_heat_grid_is_nodes_by_gpu_and_capped_in_rows(big: pd.DataFrame,
                                                      small: tuple[Node, ...]) -> None:
    grid = fv.heat_grid(fv.gpu_frame(small))
    assert grid.rows == ("h100-a", "h100-b", "a100-a", "a100-b") and grid.gpus == (0, 1)
    assert grid.values[0] == (0.9, 0.1) and grid.values[2] == (0.7, None)
    assert grid.nodes_per_row == 1

    capped = fv.heat_grid(big, max_rows=200)
    assert len(capped.rows) <= 200 and capped.nodes_per_row == 4
    assert capped.gpus == tuple(range(8))
    assert capped.rows[0] == "a100-0 … a100-3"
    first_four = big[big["node"].isin(["a100-0", "a100-1", "a100-2", "a100-3"])]
    assert capped.values[0][0] == pytest.approx(
        first_four[first_four["gpu"] == 0]["utilization"].mean(), abs=1e-3)


def test_a_busy_5000_gpu_fleet_finds_its_busiest_and_searches(big: pd.DataFrame) -> None:
    busy = big.assign(utilization=big.index.to_series().mod(97) / 100)
    top = fv.top_gpus(busy, 10)
    assert len(top) == 10 and top["utilization"].is_monotonic_decreasing
    assert top["utilization"].iloc[0] == pytest.approx(0.96)
    found = fv.filter_gpus(busy, fv.FleetFilter(search="h100-17"))
    assert fv.node_names(found) == ["h100-17"] + [f"h100-{n}" for n in range(170, 180)]


def test_refresh_slows_down_as_the_fleet_grows() -> None:
    assert fv.refresh_interval_s(12) == 5.0
    assert fv.refresh_interval_s(1000) == 30.0
    assert fv.refresh_interval_s(5000) is None


def test_filter_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        fv.FleetFilter().search = "x"  # type: ignore[misc]

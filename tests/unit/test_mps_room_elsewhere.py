"""``room_elsewhere`` (how many of a node's pods fit on the other nodes as configured)
computed once per plan with per-shape candidate lists, against the plain first-fit scan
over every GPU it replaced: the same count on generated fleets with mixed configs."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from core.adapters.settings_source import load_settings
from core.model import MpsSlice, Node
from core.mps.layout import GpuLayout
from core.mps.planner import _room_elsewhere, config_gaps, fleet_room, running_config
from core.sim.fleet import generate_fleet


def plain_scan(pods: list[MpsSlice], *, node: str, nodes: tuple[Node, ...],
               max_clients: int) -> int:
    room = [(GpuLayout.from_gpu(n.name, g), running_config(n))
            for n in nodes if n.name != node and n.ready and n.schedulable
            for g in n.gpus if g.healthy]
    fitted = 0
    for pod in sorted(pods, key=lambda s: (-s.thread_pct, -s.memory_mib, s.owner)):
        moved = replace(pod, owner=f"{pod.owner}@moved")
        for i, (lay, config) in enumerate(room):
            if lay.why_not(moved, max_clients=max_clients) is not None:
                continue
            grown = lay.with_slice(moved, max_clients=max_clients)
            if config is None or not config_gaps((grown,), config):
                room[i] = (grown, config)
                fitted += 1
                break
    return fitted


@pytest.mark.parametrize("seed", range(4))
def test_the_same_count_as_a_plain_scan_over_every_gpu(seed: int) -> None:
    settings = load_settings(env={})
    rng = random.Random(seed)
    nodes = generate_fleet(settings.catalog, settings.classes,
                           nodes_per_type={"H100": 6, "A100": 10}, gpus_per_node=4,
                           occupancy=rng.choice((0.5, 0.8, 1.0)), seed=seed)
    configs = ("exclusive", "mps-2", "mps-4", "mps-8", None)
    nodes = tuple(replace(n, device_plugin_config=rng.choice(configs),
                          schedulable=rng.random() > 0.1) for n in nodes)
    room = fleet_room(nodes)
    for n in nodes:
        pods = [s for g in n.gpus for s in g.slices]
        for max_clients in (4, 48):
            assert _room_elsewhere(pods, node=n.name, room=room, max_clients=max_clients) == \
                plain_scan(pods, node=n.name, nodes=nodes, max_clients=max_clients)

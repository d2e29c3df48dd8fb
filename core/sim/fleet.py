"""Fleets for the twin: the one the settings describe, or a generated one of any size.

Why: the embedded console, the tests and the benchmarks need a fleet with
model servers already running, either SPEC §2's default layout or a
reproducible large one. Invariants: a generated fleet never over-commits a
GPU (threads ≤ 100 %, memory within the GPU) and the same seed gives the same
fleet; every node starts healthy, ready and schedulable, at idle.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from types import MappingProxyType

from core.catalog import Catalog
from core.classify import ClassRules
from core.errors import ValidationError
from core.fleet import default_fleet
from core.manifest import HOSTNAME_LABEL
from core.model import Gpu, MpsSlice, Node, WorkloadClass, gb_to_mib
from core.settings import Settings


def fleet_from_settings(settings: Settings, *, seed: int = 0) -> tuple[Node, ...]:
    """The fleet the settings describe: SPEC §2's default layout for 4 H100 + 8 A100
    nodes of one GPU each, otherwise a generated fleet with those counts."""
    counts = dict(settings.fleet.nodes_per_type)
    if counts == {"H100": 4, "A100": 8} and settings.fleet.gpus_per_node == 1:
        return default_fleet(settings.catalog, settings.classes)
    return generate_fleet(settings.catalog, settings.classes, nodes_per_type=counts,
                          gpus_per_node=settings.fleet.gpus_per_node, seed=seed)


# Sizes (GB) of the generated fleet's models, per class; model k has size sizes[k % len].
_GENERATED_SIZES: Mapping[WorkloadClass, tuple[float, ...]] = MappingProxyType({
    WorkloadClass.TINY: (1.1, 2.0, 2.5, 3.5),
    WorkloadClass.MEDIUM: (7.0, 8.0, 13.0, 15.5),
    WorkloadClass.LARGE: (26.0, 34.0, 38.0),
})
# What fills a shared GPU in a generated fleet (classes of the servers placed on it).
_SHARED_PATTERNS: tuple[tuple[WorkloadClass, ...], ...] = (
    (WorkloadClass.MEDIUM,),
    (WorkloadClass.MEDIUM, WorkloadClass.MEDIUM),
    (WorkloadClass.MEDIUM, WorkloadClass.TINY),
    (WorkloadClass.MEDIUM, WorkloadClass.TINY, WorkloadClass.TINY),
    (WorkloadClass.TINY, WorkloadClass.TINY, WorkloadClass.TINY),
)


def generate_fleet(
    catalog: Catalog,
    classes: ClassRules,
    *,
    nodes_per_type: Mapping[str, int],
    gpus_per_node: int = 1,
    models_per_class: int = 8,
    occupancy: float = 0.8,
    seed: int = 0,
) -> tuple[Node, ...]:
    """A reproducible fleet of any size with model servers placed on it.

    Each class has ``models_per_class`` models (deployments); a GPU hosts one
    large model (on the largest GPU type), a mix of medium and tiny ones, or
    nothing (probability ``1 − occupancy``). Slices never over-commit a GPU.
    All nodes start healthy, ready and schedulable, at idle.
    """
    if gpus_per_node < 1:
        raise ValidationError("fleet.gpus_per_node", "must be ≥ 1")
    if models_per_class < 1:
        raise ValidationError("fleet.models_per_class", "must be ≥ 1")
    if not 0.0 <= occupancy <= 1.0:
        raise ValidationError("fleet.occupancy", "must be within [0, 1]")
    rng = random.Random(seed)
    biggest = max(catalog.names, key=lambda n: catalog[n].memory_mib)
    replicas: dict[str, int] = {}
    nodes = []
    for gpu_type in sorted(nodes_per_type):
        count = nodes_per_type[gpu_type]
        spec = catalog[gpu_type]
        for n in range(count):
            name = f"{gpu_type.lower()}-{n}"
            gpus = []
            for g in range(gpus_per_node):
                wanted: tuple[WorkloadClass, ...] = ()
                if rng.random() < occupancy:
                    if gpu_type == biggest and rng.random() < 0.7:
                        wanted = (WorkloadClass.LARGE,)
                    else:
                        wanted = rng.choice(_SHARED_PATTERNS)
                slices: list[MpsSlice] = []
                free_share, free_mem = 100, spec.memory_mib
                for wc in wanted:
                    k = rng.randrange(models_per_class)
                    sizes = _GENERATED_SIZES[wc]
                    gb = sizes[k % len(sizes)]
                    model = f"llm-{wc.value}-{k:02d}"
                    policy = classes.classify(gb)
                    mib = gb_to_mib(gb)
                    if policy.share_pct > free_share or mib > free_mem:
                        continue
                    replicas[model] = replicas.get(model, -1) + 1
                    slices.append(MpsSlice(owner=f"{model}-{replicas[model]}",
                                           thread_pct=policy.share_pct, memory_mib=mib,
                                           model=model, workload_class=policy.workload_class))
                    free_share -= policy.share_pct
                    free_mem -= mib
                gpus.append(Gpu(index=g, gpu_type=gpu_type, memory_total_mib=spec.memory_mib,
                                utilization=0.0, power_w=spec.idle_w, slices=tuple(slices),
                                uuid=f"GPU-{name}-{g}"))
            nodes.append(Node(name=name, gpus=tuple(gpus),
                              labels={"nvidia.com/gpu.product": gpu_type,
                                      HOSTNAME_LABEL: name}))
    return tuple(nodes)

"""Fleet builders: the default fleet of SPEC §2 and large synthetic fleets.

The default fleet is a static snapshot (4 H100 + 8 A100 nodes, one GPU each)
with model servers already running, so that the console shows a realistic
picture before the simulator drives it. ``synthetic_fleet`` builds large,
reproducible fleets for benchmarks and property tests.
"""

from __future__ import annotations

import random

from core.catalog import Catalog
from core.classify import ClassRules
from core.model import Gpu, MpsSlice, Node, gb_to_mib

# (node, gpu type, utilization, power fraction of TDP, running servers as (model, GB))
_DEFAULT_LAYOUT: tuple[tuple[str, str, float, tuple[tuple[str, float], ...]], ...] = (
    ("h100-0", "H100", 0.58, (("llama-2-70b-awq", 38.0),)),
    ("h100-1", "H100", 0.64, (("mixtral-8x7b-awq", 26.0),)),
    ("h100-2", "H100", 0.41, (("codellama-34b", 34.0),)),
    ("h100-3", "H100", 0.05, ()),
    ("a100-0", "A100", 0.46, (("llama-2-13b", 13.0),)),
    ("a100-1", "A100", 0.52, (("mistral-7b", 8.0), ("phi-2", 2.5))),
    ("a100-2", "A100", 0.37, (("qwen-1-8b", 2.0), ("gemma-2b", 2.5), ("tinyllama", 1.1))),
    ("a100-3", "A100", 0.63, (("llama-2-7b", 7.0), ("codegen-6b", 7.5))),
    ("a100-4", "A100", 0.28, (("mistral-7b-b", 8.0),)),
    ("a100-5", "A100", 0.71, (("starcoder-15b", 15.5),)),
    ("a100-6", "A100", 0.22, (("phi-3-mini", 3.8),)),
    ("a100-7", "A100", 0.12, ()),
)


def _slice(owner: str, model: str, gb: float, rules: ClassRules) -> MpsSlice:
    policy = rules.classify(gb)
    return MpsSlice(owner=owner, thread_pct=policy.share_pct, memory_mib=gb_to_mib(gb),
                    model=model, workload_class=policy.workload_class)


def _power(catalog: Catalog, gpu_type: str, util: float) -> float:
    t = catalog[gpu_type]
    return t.idle_w + (t.tdp_w - t.idle_w) * util**1.5


def default_fleet(catalog: Catalog, rules: ClassRules) -> tuple[Node, ...]:
    nodes = []
    for name, gpu_type, util, servers in _DEFAULT_LAYOUT:
        slices = tuple(_slice(f"{model}-0", model, gb, rules) for model, gb in servers)
        gpu = Gpu(index=0, gpu_type=gpu_type, memory_total_mib=catalog[gpu_type].memory_mib,
                  utilization=util, power_w=round(_power(catalog, gpu_type, util), 1),
                  slices=slices, uuid=f"GPU-{name}-0")
        nodes.append(Node(name=name, gpus=(gpu,),
                          labels={"nvidia.com/gpu.product": gpu_type,
                                  "kubernetes.io/hostname": name}))
    return tuple(nodes)


def synthetic_fleet(
    catalog: Catalog,
    rules: ClassRules,
    *,
    gpus: int,
    gpus_per_node: int = 1,
    seed: int = 0,
    h100_fraction: float = 1 / 3,
) -> tuple[Node, ...]:
    """A reproducible fleet of ``gpus`` GPUs with random occupancy and health."""
    rng = random.Random(seed)
    types = sorted(catalog.names)
    big = max(types, key=lambda n: catalog[n].memory_mib)
    small = [t for t in types if t != big] or [big]
    nodes = []
    for n in range((gpus + gpus_per_node - 1) // gpus_per_node):
        gpu_type = big if rng.random() < h100_fraction else rng.choice(small)
        prefix = gpu_type.lower()
        node_name = f"{prefix}-{n:05d}"
        node_gpus = []
        for g in range(min(gpus_per_node, gpus - n * gpus_per_node)):
            slices: list[MpsSlice] = []
            free_share, free_mem = 100, catalog[gpu_type].memory_mib
            for k in range(rng.choice((0, 0, 1, 1, 2, 3))):
                gb = rng.choice((1.5, 2.5, 3.5, 6.0, 8.0, 12.0, 16.0, 24.0, 38.0))
                sl = _slice(f"m{n}-{g}-{k}", f"model-{k}", gb, rules)
                if sl.thread_pct <= free_share and sl.memory_mib <= free_mem:
                    slices.append(sl)
                    free_share -= sl.thread_pct
                    free_mem -= sl.memory_mib
            util = min(1.0, rng.random() * 0.6 + 0.35 * len(slices) * rng.random())
            node_gpus.append(Gpu(index=g, gpu_type=gpu_type,
                                 memory_total_mib=catalog[gpu_type].memory_mib,
                                 utilization=round(util, 3),
                                 power_w=round(_power(catalog, gpu_type, util), 1),
                                 slices=tuple(slices), healthy=rng.random() > 0.01,
                                 uuid=f"GPU-{node_name}-{g}"))
        nodes.append(Node(name=node_name, gpus=tuple(node_gpus),
                          schedulable=rng.random() > 0.02,
                          labels={"nvidia.com/gpu.product": gpu_type}))
    return tuple(nodes)

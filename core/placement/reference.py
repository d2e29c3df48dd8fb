"""A straightforward per-node, per-GPU Python loop over domain objects.

It implements the same pipeline as ``Scheduler`` with the default plugins
(same filters in the same order, same score formulas, the same Normalize
stage, same arithmetic order, same tie-break) without NumPy. It is the
executable specification that tests compare the vectorized pipeline against,
and the baseline of ``bench.placement_speed``.

Normalize here is what the default plugins' own ``normalize`` does: the
type components and the utilization headroom are on 0–10 by their formulas,
so only the MPS fit is clipped at 10, as ``MpsFit.normalize`` clips it (on a
GPU that passes the filters it never exceeds 10, so the clip changes nothing
the loop scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.catalog import Catalog
from core.classify import ClassRules
from core.model import Node, PlacementRequest, Priority, SchedulerWeights


@dataclass(frozen=True, slots=True)
class LoopChoice:
    node: str | None
    gpu_index: int | None
    score: float | None
    fitting: int


def loop_decide(
    request: PlacementRequest,
    nodes: Sequence[Node],
    *,
    catalog: Catalog,
    classes: ClassRules,
    weights: SchedulerWeights,
    max_utilization: float = 0.90,
    max_clients: int = 48,
) -> LoopChoice:
    policy = classes.classify(request.model_memory_gb)
    need_mem = request.memory_mib
    share = policy.share_pct
    w = weights.as_dict()
    best_tpw = catalog.best_tops_per_watt
    best: tuple[float, str, int] | None = None
    fitting = 0
    for node in nodes:
        replicas = node.gpu_replicas
        for gpu in node.gpus:
            # Filters, in the scheduler's order.
            if not (node.ready and node.schedulable and gpu.healthy):
                continue
            allowed = policy.allowed_types
            if allowed and gpu.gpu_type not in allowed:
                continue
            if share < 100 and gpu.mig_enabled:
                continue
            if gpu.memory_free_mib < need_mem:
                continue
            if not gpu.utilization < max_utilization:
                continue
            free_share = 100 - gpu.share_used_pct
            if free_share < share:
                continue
            held = len(gpu.slices)
            if held >= max_clients:
                continue
            # A free device-plugin replica (None: the node's plugin sets no limit).
            if replicas is not None and held >= replicas:
                continue
            fitting += 1
            # Scores: type-only components first, then the GPU's state.
            t = gpu.gpu_type
            efficiency = 10.0 * catalog.tops_per_watt(t) / best_tpw
            if t == policy.preferred_type:
                affinity = 10.0
            elif not allowed or t in allowed:
                affinity = 5.0
            else:
                affinity = 0.0
            if request.priority in (Priority.HIGH, Priority.CRITICAL):
                power = 10.0 * catalog.throughput(t) / catalog.max_throughput
            elif request.priority is Priority.LOW:
                power = 10.0 * (1.0 - catalog[t].tdp_w / catalog.max_tdp_w)
            else:
                power = 5.0
            total = 0.0 + w["efficiency"] * efficiency
            total = total + w["affinity"] * affinity
            total = total + w["power"] * power
            total = total + w["utilization"] * (10.0 * (1.0 - gpu.utilization))
            mps = share * (10.0 / max(free_share, 1))
            if mps > 10.0:
                mps = 10.0
            total = total + w["mps"] * mps
            if best is None or total > best[0]:
                best = (total, node.name, gpu.index)
    if best is None:
        return LoopChoice(None, None, None, 0)
    return LoopChoice(best[1], best[2], best[0], fitting)

"""Build a Scheduler or a baseline placement policy from the settings.

Why it exists: ``core.placement`` runs plugins over a snapshot and knows nothing of
where its limits come from, so it imports neither ``core.settings`` nor ``core.sim``
(that import closed the cycle ports → placement → settings → autoscale → ports).
This module is the one place that turns ``Settings`` into placement policies.

Invariant: every policy built here gets the same limits from ``settings.placement``
(utilization ceiling, MPS clients per GPU, memory headroom) and the same catalog and
class rules, so a baseline never picks a GPU the Scheduler would reject and an
evaluation compares policies on equal terms.
"""

from __future__ import annotations

from typing import TypedDict

from core.catalog import Catalog
from core.classify import ClassRules
from core.model import SchedulerWeights
from core.placement.baselines import BASELINES, BaselinePolicy, RandomFit
from core.placement.framework import Scheduler
from core.settings import Settings


class _Limits(TypedDict):
    catalog: Catalog
    classes: ClassRules
    max_utilization: float
    max_clients: int
    memory_headroom: float


def _limits(settings: Settings) -> _Limits:
    p = settings.placement
    return _Limits(catalog=settings.catalog, classes=settings.classes,
                   max_utilization=p.max_utilization, max_clients=p.max_mps_clients_per_gpu,
                   memory_headroom=p.memory_headroom)


def build_scheduler(settings: Settings, *, weights: SchedulerWeights | None = None,
                    weight_version: int | None = None) -> Scheduler:
    """The Scheduler with the default plugins and the settings' limits; ``weights``
    default to the settings' own."""
    return Scheduler(weights=weights or settings.placement.weights,
                     weight_version=weight_version, **_limits(settings))


def build_policy(name: str, settings: Settings, *, seed: int = 0) -> BaselinePolicy:
    """The baseline called ``name`` (first-fit, bin-pack, spread, random) with the
    settings' limits; ``seed`` only matters to the random policy."""
    try:
        cls = BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; one of {', '.join(BASELINES)}") from None
    if cls is RandomFit:
        return RandomFit(seed=seed, **_limits(settings))
    return cls(**_limits(settings))

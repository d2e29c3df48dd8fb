"""Invariants of the placement pipeline, checked with Hypothesis on random fleets."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from core.adapters.settings_source import load_settings
from core.errors import ValidationError
from core.fleet import synthetic_fleet
from core.model import COMPONENTS, PlacementRequest, SchedulerWeights
from core.placement import FleetSnapshot, Scheduler
from core.placement.reference import loop_decide

SETTINGS = load_settings(env={})
CAT, RULES = SETTINGS.catalog, SETTINGS.classes
PROFILE = hsettings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

requests = st.builds(
    lambda gb, prio, sla, i: PlacementRequest.parse({
        "model_name": f"m{i}", "model_memory_gb": gb, "priority": prio,
        "latency_sla_ms": sla, "request_id": f"r{i}"}),
    gb=st.floats(min_value=0.1, max_value=80, allow_nan=False),
    prio=st.sampled_from(["LOW", "MEDIUM", "HIGH", "CRITICAL"]),
    sla=st.floats(min_value=1, max_value=10_000),
    i=st.integers(0, 10**9),
)
fleets = st.builds(
    lambda gpus, per_node, seed: synthetic_fleet(CAT, RULES, gpus=gpus, gpus_per_node=per_node,
                                                 seed=seed),
    gpus=st.integers(1, 40), per_node=st.integers(1, 4), seed=st.integers(0, 10**6),
)
weights = st.lists(st.floats(min_value=0, max_value=1, allow_nan=False), min_size=5,
                   max_size=5).filter(lambda v: sum(v) > 1e-6).map(
    lambda v: SchedulerWeights.normalized(dict(zip(COMPONENTS, v, strict=True))))


def make_scheduler(w: SchedulerWeights | None = None) -> Scheduler:
    return Scheduler(catalog=CAT, classes=RULES, weights=w or SETTINGS.placement.weights)


@PROFILE
@given(fleet=fleets, reqs=st.lists(requests, min_size=1, max_size=30))
def test_no_gpu_is_ever_overcommitted_in_threads_memory_or_clients(fleet, reqs) -> None:
    snap = FleetSnapshot(fleet, CAT)
    scheduler = make_scheduler()
    for i, r in enumerate(reqs):
        scheduler.place(dataclasses.replace(r, request_id=f"req-{i}"), snap)
    for node in snap.to_nodes():
        for gpu in node.gpus:
            assert gpu.share_used_pct <= 100
            assert gpu.memory_used_mib <= gpu.memory_total_mib
            assert len(gpu.slices) <= 48
    assert (snap.cols.share_free >= 0).all() and (snap.cols.mem_free >= 0).all()


@PROFILE
@given(fleet=fleets, r=requests, w=weights)
def test_a_filtered_out_gpu_is_never_chosen(fleet, r, w) -> None:
    snap = FleetSnapshot(fleet, CAT)
    d = make_scheduler(w).decide(r, snap)
    if d.placed:
        assert d.first_failure[d.row] == -1
        m = d.matrix()
        assert m.chosen is not None and m.chosen.fits and m.chosen.rank == 1
        # Independent check on the domain objects.
        node = next(n for n in fleet if n.name == d.node)
        gpu = node.gpus[d.gpu_index]
        assert node.schedulable and node.ready and gpu.healthy
        assert gpu.memory_free_mib >= d.memory_mib
        assert 100 - gpu.share_used_pct >= d.share_pct
        assert gpu.utilization < 0.9
    for row in m.rows if d.placed else d.matrix().rows:
        assert row.fits == (row.reason is None)


@PROFILE
@given(fleet=fleets, r=requests)
def test_every_request_gets_a_decision_or_a_zero_of_n_explanation(fleet, r) -> None:
    d = make_scheduler().decide(r, FleetSnapshot(fleet, CAT))
    if d.placed:
        assert d.summary.startswith(f"placed on {d.node}/gpu{d.gpu_index}")
    else:
        assert re.match(rf"^0/{len(fleet)} nodes fit: \d+ ", d.summary), d.summary
        assert d.recommendations, "a refusal must say what would make it fit"


@PROFILE
@given(w=weights)
def test_weights_always_sum_to_one_and_stay_in_unit_range(w) -> None:
    values = list(w.as_dict().values())
    assert abs(sum(values) - 1.0) <= 1e-9
    assert all(0.0 <= v <= 1.0 for v in values)


@PROFILE
@given(v=st.lists(st.floats(min_value=0, max_value=1, allow_nan=False), min_size=5,
                  max_size=5).filter(lambda v: abs(sum(v) - 1) > 1e-3))
def test_weights_that_do_not_sum_to_one_are_refused(v) -> None:
    try:
        SchedulerWeights(*v)
    except ValidationError as exc:
        assert exc.field == "weights"
    else:
        raise AssertionError("weights not summing to 1 were accepted")


@PROFILE
@given(fleet=fleets, r=requests, w=weights)
def test_vectorized_pipeline_chooses_what_the_plain_loop_chooses(fleet, r, w) -> None:
    d = make_scheduler(w).decide(r, FleetSnapshot(fleet, CAT))
    c = loop_decide(r, fleet, catalog=CAT, classes=RULES, weights=w)
    assert (d.node, d.gpu_index) == (c.node, c.gpu_index)
    assert d.gpus_fit == c.fitting
    if d.placed:
        assert np.isclose(d.score, c.score)

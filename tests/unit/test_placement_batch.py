"""The placement fast paths keep what the plain paths say: the stored matrix built from
the kept rows only equals the full matrix cut to the same rows."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from core.adapters.settings_source import load_settings
from core.fleet import synthetic_fleet
from core.model import PlacementRequest
from core.placement import FleetSnapshot, Scheduler

SETTINGS = load_settings(env={})
CAT, RULES = SETTINGS.catalog, SETTINGS.classes

requests = st.builds(
    lambda gb, prio, i: PlacementRequest.parse({
        "model_name": f"m{i}", "model_memory_gb": gb, "priority": prio,
        "latency_sla_ms": 200, "request_id": f"r{i}"}),
    gb=st.floats(min_value=0.1, max_value=90, allow_nan=False),
    prio=st.sampled_from(["LOW", "MEDIUM", "HIGH", "CRITICAL"]),
    i=st.integers(0, 10**6),
)


@hsettings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gpus=st.integers(1, 60), seed=st.integers(0, 10**6), r=requests,
       max_rows=st.integers(1, 70), excluded=st.lists(st.integers(0, 59), max_size=5))
def test_stored_matrix_from_kept_rows_equals_the_full_matrix_cut(gpus, seed, r, max_rows,
                                                                  excluded) -> None:
    snapshot = FleetSnapshot(synthetic_fleet(CAT, RULES, gpus=gpus, gpus_per_node=4,
                                             seed=seed), CAT)
    scheduler = Scheduler(catalog=CAT, classes=RULES, weights=SETTINGS.placement.weights)
    decision = scheduler.decide(r, snapshot, exclude_rows=[e for e in excluded if e < gpus])
    fast = decision.matrix_dict(max_rows=max_rows)
    # A fresh decision, so that the fast path above did not reuse a built matrix.
    full = scheduler.decide(r, snapshot, exclude_rows=[e for e in excluded if e < gpus]
                            ).matrix().to_dict(max_rows=max_rows)
    assert fast == full


def test_stored_matrix_of_a_request_that_fits_nowhere_counts_every_gpu_by_filter() -> None:
    snapshot = FleetSnapshot(synthetic_fleet(CAT, RULES, gpus=30, seed=4), CAT)
    scheduler = Scheduler(catalog=CAT, classes=RULES, weights=SETTINGS.placement.weights)
    huge = PlacementRequest.parse({"model_name": "huge", "model_memory_gb": 500, "priority": "LOW",
                                   "latency_sla_ms": 200, "request_id": "huge"})
    decision = scheduler.decide(huge, snapshot)
    fast = decision.matrix_dict(max_rows=5)
    assert decision.row is None and len(fast["rows"]) == 5
    assert sum(fast["omitted"]["rejected_by_filter"].values()) == 25
    assert fast == decision.matrix().to_dict(max_rows=5)


def test_stored_matrix_cut_among_many_tied_gpus_keeps_fleet_order() -> None:
    # Every GPU idle: the GPUs of one type tie, far more of them than the rows kept.
    snapshot = FleetSnapshot(synthetic_fleet(CAT, RULES, gpus=64, gpus_per_node=8, seed=1),
                             CAT)
    snapshot.set_utilization(np.zeros(snapshot.size))
    scheduler = Scheduler(catalog=CAT, classes=RULES, weights=SETTINGS.placement.weights)
    r = PlacementRequest.parse({"model_name": "m", "model_memory_gb": 2.0, "priority": "LOW",
                                "latency_sla_ms": 200, "request_id": "tie"})
    decision = scheduler.decide(r, snapshot)
    assert decision._total is not None
    fit = decision._total[decision.filter_status.ok]
    values, counts = np.unique(fit, return_counts=True)
    tied = values[counts.argmax()]
    # The cut falls among the largest group of tied GPUs, two rows into it.
    max_rows = int(np.count_nonzero(fit > tied)) + 2
    assert counts.max() > 4 and fit.size > max_rows
    fast = decision.matrix_dict(max_rows=max_rows)
    full = scheduler.decide(r, snapshot).matrix().to_dict(max_rows=max_rows)
    assert fast == full
    text = decision.matrix_json(max_rows=max_rows)
    assert decision.matrix_json(max_rows=max_rows) is text  # built once, then kept
    assert json.loads(text) == full

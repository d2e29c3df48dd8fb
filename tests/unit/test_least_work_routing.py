"""The twin's least-outstanding-work router (core.sim.engine.least_work_picks) against a
brute-force one: every request goes to a replica whose outstanding work after taking it is
least, outstanding work draining exponentially over the load window."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.sim.engine import least_work_picks
from core.sim.traffic import Arrivals


def brute_force_costs(dep_i, deployment, sec_prompt, sec_output, outstanding, arr, picks,
                      drain_s):
    """Replays ``picks`` and returns, per request, (cost of the pick, least cost)."""
    work = list(outstanding)
    last = [float(arr.times[0])] * len(work)
    out = []
    for i, d in enumerate(dep_i.tolist()):
        t = float(arr.times[i])
        cands = [j for j in range(len(deployment)) if deployment[j] == d]
        if not cands:
            out.append((None, None))
            continue
        p_tok, o_tok = int(arr.prefill_tokens[i]), int(arr.decode_tokens[i])
        costs = {j: work[j] * math.exp(-(t - last[j]) / drain_s) + p_tok * sec_prompt[j]
                 + o_tok * sec_output[j] for j in cands}
        least = min(costs.values())
        chosen = costs[int(picks[i])]
        work[int(picks[i])], last[int(picks[i])] = chosen, t
        out.append((chosen, least))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_each_request_goes_where_the_outstanding_work_is_least(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_rep, n_dep, n_req = 40, 4, 3000
    deployment = rng.integers(0, n_dep, n_rep)
    deployment[deployment == 3] = 2  # deployment 3 has no replica
    kinds = [(0.0004, 0.02), (0.0002, 0.011), (0.0008, 0.035)]  # a few GPU/share classes
    kind = rng.integers(0, len(kinds), n_rep)
    sec_prompt = [kinds[k][0] for k in kind]
    sec_output = [kinds[k][1] for k in kind]
    outstanding = (rng.random(n_rep) * 3.0 * (rng.random(n_rep) < 0.5)).tolist()
    times = np.sort(100.0 + rng.random(n_req) * 20.0)
    arr = Arrivals(times, rng.integers(10, 2000, n_req), rng.integers(1, 400, n_req))
    dep_i = rng.integers(0, n_dep, n_req)
    picks = least_work_picks(dep_i, deployment=deployment, sec_prompt=sec_prompt,
                             sec_output=sec_output, outstanding=outstanding, arrivals=arr,
                             drain_s=10.0)
    assert ((picks == -1) == (dep_i == 3)).all()
    served = picks >= 0
    assert (deployment[picks[served]] == dep_i[served]).all()  # never another deployment's
    for chosen, least in brute_force_costs(dep_i, deployment, sec_prompt, sec_output,
                                           outstanding, arr, picks, 10.0):
        if chosen is not None:
            assert chosen == pytest.approx(least, rel=1e-9, abs=1e-12)
    # Load spreads: under this load every replica of a served deployment takes requests.
    for d in range(3):
        mine = np.flatnonzero(deployment == d)
        assert set(mine.tolist()) <= set(picks[dep_i == d].tolist())


def test_a_fast_replica_is_not_filled_to_saturation_before_a_slow_one_gets_work() -> None:
    # One replica 3× as fast as the other, a load of about half their joint capacity: work
    # counted while it is in service spreads the load so both run at similar utilization
    # (a queue-only count would send everything to the fast one until it queued).
    rng = np.random.default_rng(3)
    n_req = 2000  # 5/s; the two serve 1/0.12 + 1/0.36 ≈ 11.1/s
    times = np.sort(rng.random(n_req) * 400.0)
    arr = Arrivals(times, np.full(n_req, 1000), np.full(n_req, 20))
    fast, slow = (1e-4, 1e-3), (3e-4, 3e-3)  # sec/prompt token, sec/output token
    picks = least_work_picks(np.zeros(n_req, dtype=np.int64), deployment=np.array([0, 0]),
                             sec_prompt=[fast[0], slow[0]], sec_output=[fast[1], slow[1]],
                             outstanding=[0.0, 0.0], arrivals=arr, drain_s=10.0)
    work = np.array([1000 * fast[0] + 20 * fast[1], 1000 * slow[0] + 20 * slow[1]])
    busy = np.bincount(picks, minlength=2) * work / 400.0  # utilization of each
    assert busy.max() < 0.75 and busy.min() > 0.3

"""The twin's least-outstanding-work router (core.sim.engine.least_work_picks) against a
brute-force one: every request goes to a replica whose work after taking it is least."""

from __future__ import annotations

import numpy as np
import pytest

from core.sim.engine import least_work_picks
from core.sim.traffic import Arrivals


def brute_force_costs(dep_i, deployment, sec_prompt, sec_output, free_at, arr, picks):
    """Replays ``picks`` and returns, per request, (cost of the pick, least cost)."""
    free = list(free_at)
    out = []
    for i, d in enumerate(dep_i.tolist()):
        t = float(arr.times[i])
        cands = [j for j in range(len(deployment)) if deployment[j] == d]
        if not cands:
            out.append((None, None))
            continue
        p_tok, o_tok = int(arr.prefill_tokens[i]), int(arr.decode_tokens[i])
        costs = {j: max(0.0, free[j] - t) + p_tok * sec_prompt[j] + o_tok * sec_output[j]
                 for j in cands}
        least = min(costs.values())
        chosen = costs[int(picks[i])]
        free[int(picks[i])] = t + chosen
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
    free_at = (100.0 + rng.random(n_rep) * 3.0 * (rng.random(n_rep) < 0.5)).tolist()
    times = np.sort(100.0 + rng.random(n_req) * 20.0)
    arr = Arrivals(times, rng.integers(10, 2000, n_req), rng.integers(1, 400, n_req))
    dep_i = rng.integers(0, n_dep, n_req)
    picks = least_work_picks(dep_i, deployment=deployment, sec_prompt=sec_prompt,
                             sec_output=sec_output, free_at=free_at, arrivals=arr)
    assert ((picks == -1) == (dep_i == 3)).all()
    served = picks >= 0
    assert (deployment[picks[served]] == dep_i[served]).all()  # never another deployment's
    for chosen, least in brute_force_costs(dep_i, deployment, sec_prompt, sec_output,
                                           free_at, arr, picks):
        if chosen is not None:
            assert chosen == pytest.approx(least, rel=1e-12, abs=1e-12)
    # Load spreads: under this load every replica of a served deployment takes requests.
    for d in range(3):
        mine = np.flatnonzero(deployment == d)
        assert set(mine.tolist()) <= set(picks[dep_i == d].tolist())

"""The twin's gateway routing, inter-token latency histogram and SLO counts."""

from __future__ import annotations

import pytest

from core.adapters.settings_source import load_settings
from core.clock import ManualClock
from core.errors import ValidationError
from core.model import Gpu, MpsSlice, Node, WorkloadClass
from core.sim.config import TwinConfig
from core.sim.traffic import constant_traffic
from core.sim.twin import Twin

SETTINGS = load_settings(env={})
T0 = 1_700_000_000.0
QPS = 60.0


def two_replicas() -> tuple[Node, ...]:
    """One deployment with a replica on an H100 and one on an A100 (half of each)."""
    def node(name: str, gpu_type: str) -> Node:
        sl = MpsSlice(owner=f"{name}-m", thread_pct=50, memory_mib=14 * 1024, model="m",
                      workload_class=WorkloadClass.MEDIUM)
        return Node(name=name, gpus=(Gpu(index=0, gpu_type=gpu_type, slices=(sl,),
                                         memory_total_mib=SETTINGS.catalog[gpu_type].memory_mib),))
    return (node("h100-0", "H100"), node("a100-0", "A100"))


def twin(*, routing: str, qps: float = 250.0, nodes: tuple[Node, ...] | None = None,
         targets: dict[str, tuple[float | None, float | None, float | None]] | None = None
         ) -> Twin:
    t = Twin(SETTINGS, clock=ManualClock(T0), traffic=constant_traffic(qps, seed=3),
             nodes=nodes, config=TwinConfig(routing=routing, seed=3, slo_targets=targets))
    t.step(600)
    return t


def mean_latency(t: Twin) -> float:
    total = count = 0.0
    for d in t.telemetry().deployments:
        assert d.counters is not None
        total += d.counters.e2e_latency.sum
        count += d.counters.e2e_latency.count
    return total / count


def test_least_outstanding_work_routing_beats_uniform_on_latency_at_load() -> None:
    # The same requests, the same two replicas of unequal speed: only the routing differs.
    # Uniform routing sends the A100 as much as the H100 and its queue grows; least work
    # sends each request where it finishes first.
    fast = twin(routing="least_work", qps=QPS, nodes=two_replicas())
    slow = twin(routing="uniform", qps=QPS, nodes=two_replicas())
    assert mean_latency(fast) < 0.8 * mean_latency(slow)
    served = {g.gpu_type: g.qps_1m for g in fast.telemetry().gpus}
    assert served["H100"] > served["A100"]


def test_an_unknown_routing_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValidationError) as err:
        TwinConfig(routing="round-robin")
    assert err.value.field == "sim.routing"


def test_inter_token_latency_counts_every_token_after_the_first() -> None:
    tel = twin(routing="least_work", qps=50).telemetry()
    for d in tel.deployments:
        c = d.counters
        assert c is not None and c.itl is not None
        assert c.itl.count == c.generation_tokens_total - c.success_total
        assert c.itl.count > 0 and 0 < c.itl.sum / c.itl.count < 1.0


def test_the_twin_counts_requests_that_met_every_objective() -> None:
    models = {d.model for d in twin(routing="least_work", qps=50).telemetry().deployments}
    loose = twin(routing="least_work", qps=50,
                 targets={m: (60.0, 10.0, None) for m in models})
    met = loose.slo_met()
    for d in loose.telemetry().deployments:
        assert d.counters is not None
        assert met[(d.namespace, d.model)] == d.counters.success_total
    strict = twin(routing="least_work", qps=50, targets={m: (60.0, 1e-6, None) for m in models})
    assert sum(strict.slo_met().values()) == 0  # no token comes that fast
    untold = twin(routing="least_work", qps=50)
    assert untold.slo_met() == {k: v for k, v in met.items()}  # no objective: every success

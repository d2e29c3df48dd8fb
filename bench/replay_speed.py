"""Trace replay speed of the digital twin, against a per-tick pure-Python baseline.

Run: ``python -m bench.replay_speed [--trace PATH] [--baseline-minutes N]``.

Replays the one-hour Azure code trace on the default fleet (4 H100 + 8 A100)
through ``core.sim.Twin`` on a manual clock, reading the full telemetry every
30 simulated seconds as the monitoring loop would; then the same at 10× the
request rate, and in one ``step(3600)``. The baseline steps the same physics
one tick and one request at a time in plain Python over the first few minutes
of the trace and is extrapolated to the hour. Both count every request; the
mean latencies are printed side by side as a sanity check (routing draws
differ, so they agree only roughly). The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from core.adapters.settings_source import load_settings
from core.clock import ManualClock
from core.settings import Settings
from core.sim import Trace, TraceReplay, Twin, read_trace
from core.sim.perf_model import PerfModel, PerfParams, power_w
from core.telemetry import E2E_LATENCY_BUCKETS_S

TRACE = Path(__file__).resolve().parent.parent / "tests" / "data" / \
    "azure_llm_inference_2023_code.csv"
HOUR = 3600.0


def replay_twin(settings: Settings, trace: Trace, *, scale: float, step_s: float
                ) -> tuple[float, int, float]:
    """Wall seconds, requests counted and mean latency (ms) for one hour."""
    clock = ManualClock(0.0)
    started = time.perf_counter()
    twin = Twin(settings, clock=clock, traffic=TraceReplay(trace, start=0.0, scale=scale))
    elapsed = 0.0
    while elapsed < HOUR:
        twin.step(step_s)
        elapsed += step_s
        telemetry = twin.telemetry()
    wall = time.perf_counter() - started
    counters = [d.counters for d in telemetry.deployments if d.counters]
    requests = sum(c.requests_total for c in counters)
    latency_sum = sum(c.e2e_latency.sum for c in counters)
    served = sum(c.e2e_latency.count for c in counters)
    return wall, requests, 1000.0 * latency_sum / max(served, 1)


@dataclass
class _Replica:
    gpu: int
    share: float
    p: PerfParams
    queue: float = 0.0
    pre_frac: float = 0.8
    recent: deque[float] = field(default_factory=lambda: deque([0.0] * 9, maxlen=9))


def replay_scalar(settings: Settings, trace: Trace, *, scale: float, seconds: float
                  ) -> tuple[float, int, float]:
    """The same physics, one tick and one request at a time, in plain Python."""
    perf = PerfModel.for_catalog(settings.catalog)
    twin = Twin(settings, clock=ManualClock(0.0))  # only to read the fleet and traffic shares
    weights = twin.traffic_weights()
    source = TraceReplay(trace, start=0.0, scale=scale)
    started = time.perf_counter()
    deployments = sorted(weights)
    cumulative, total = [], 0.0
    for key in deployments:
        total += weights[key]
        cumulative.append(total)
    replicas: list[_Replica] = []
    by_dep: dict[int, list[int]] = {}
    gpus: list[tuple[float, float]] = []
    for node in twin.nodes():
        for gpu in node.gpus:
            spec = settings.catalog[gpu.gpu_type]
            for sl in gpu.slices:
                assert sl.workload_class is not None
                d = deployments.index(("default", sl.model))
                by_dep.setdefault(d, []).append(len(replicas))
                replicas.append(_Replica(gpu=len(gpus), share=sl.thread_pct / 100.0,
                                         p=perf.params_for(sl.workload_class, gpu.gpu_type)))
            gpus.append((spec.idle_w, spec.tdp_w))
    rng = random.Random(1)
    slow = perf.co_runner_slowdown
    buckets = [0] * (len(E2E_LATENCY_BUCKETS_S) + 1)
    energy = [0.0] * len(gpus)
    requests, latency_sum = 0, 0.0
    for tick in range(int(seconds)):
        batch = source.arrivals(float(tick), float(tick + 1))
        work: list[list[tuple[float, float, int]]] = [[] for _ in replicas]
        for prompt, output in zip(batch.prefill_tokens.tolist(), batch.decode_tokens.tolist(),
                                  strict=True):
            d = min(bisect.bisect_right(cumulative, rng.random() * total), len(cumulative) - 1)
            choices = by_dep[d]
            j = choices[int(rng.random() * len(choices))]
            r, p = replicas[j], replicas[j].p
            pre = prompt * p.kp / (r.share + p.k4)
            dec = output * p.iteration_s(p.max_batch, r.share) / p.max_batch
            work[j].append((pre, dec, output))
            requests += 1
        active_on_gpu = [0] * len(gpus)
        for j, r in enumerate(replicas):
            if work[j] or r.queue:
                active_on_gpu[r.gpu] += 1
        util = [0.0] * len(gpus)
        for j, r in enumerate(replicas):
            p, share = r.p, r.share
            own = 1 if (work[j] or r.queue) else 0
            m = 1.0 + slow * (active_on_gpu[r.gpu] - own)
            offered = sum(a + b for a, b, _ in work[j])
            if offered:
                r.pre_frac = sum(a for a, _, _ in work[j]) / offered
            q_old = r.queue
            r.queue = max(0.0, q_old + offered - 1.0 / m)
            done = offered + q_old - r.queue
            recent = (sum(r.recent) + done) / 10.0
            r.recent.append(done)
            f_p = min(min(recent * m, 1.0) * r.pre_frac, 0.95)
            full = p.iteration_s(p.max_batch, share)
            rate = recent * (1 - r.pre_frac) * p.max_batch / full / (1 - f_p)
            a = rate * m / (share + p.k4)
            beta = 1 - a * p.k2
            c = a * p.k3 + rate * m * p.k5
            disc = beta * beta - 4 * a * p.k1 * c
            conc = 2 * c / (beta + math.sqrt(disc)) if beta > 0 and disc >= 0 else math.inf
            step = m * p.iteration_s(max(min(conc, p.max_batch), 1.0), share)
            wait = 0.5 * (q_old + r.queue) * m
            for pre, _, output in work[j]:
                latency = wait + m * pre + step + max(output - 1, 0) * step / (1 - f_p)
                buckets[bisect.bisect_left(E2E_LATENCY_BUCKETS_S, latency)] += 1
                latency_sum += latency
            util[r.gpu] += share * min(done * m, 1.0)
        for g, (idle, tdp) in enumerate(gpus):
            energy[g] += float(power_w(min(util[g], 1.0), idle_w=idle, tdp_w=tdp))
    wall = time.perf_counter() - started
    return wall, requests, 1000.0 * latency_sum / max(requests, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--baseline-minutes", type=float, default=5.0)
    args = parser.parse_args(argv)
    settings = load_settings(env={})
    started = time.perf_counter()
    trace = read_trace(args.trace)
    parse_s = time.perf_counter() - started
    print(f"trace: {trace.source}, {trace.size} requests over {trace.duration_s / 60:.1f} min "
          f"(parsed in {parse_s:.3f} s)")
    print(f"{'run':<44} {'sim s':>7} {'requests':>9} {'wall s':>8} {'speed-up':>10} "
          f"{'mean ms':>8}")

    def row(name: str, *, sim_s: float, requests: int, wall: float, mean_ms: float,
            note: str = "") -> None:
        print(f"{name:<44} {sim_s:>7.0f} {requests:>9} {wall:>8.3f} {sim_s / wall:>9.0f}× "
              f"{mean_ms:>8.0f}{note}")

    replay_twin(settings, trace, scale=1.0, step_s=30.0)  # warm imports and caches
    wall_1, req_1, mean_1 = replay_twin(settings, trace, scale=1.0, step_s=30.0)
    row("twin, trace ×1, telemetry every 30 s", sim_s=HOUR, requests=req_1, wall=wall_1,
        mean_ms=mean_1)
    wall_10, req_10, mean_10 = replay_twin(settings, trace, scale=10.0, step_s=30.0)
    row("twin, trace ×10, telemetry every 30 s", sim_s=HOUR, requests=req_10, wall=wall_10,
        mean_ms=mean_10)
    one_step = {}
    for scale in (1.0, 10.0):
        wall, req, mean = replay_twin(settings, trace, scale=scale, step_s=HOUR)
        one_step[scale] = wall
        row(f"twin, trace ×{scale:g}, one step(3600)", sim_s=HOUR, requests=req, wall=wall,
            mean_ms=mean)
    seconds = args.baseline_minutes * 60.0
    for scale in (1.0, 10.0):
        wall_b, req_b, mean_b = replay_scalar(settings, trace, scale=scale, seconds=seconds)
        per_hour = wall_b * HOUR / seconds
        row(f"baseline: per-tick Python loop, trace ×{scale:g}", sim_s=seconds, requests=req_b,
            wall=wall_b, mean_ms=mean_b,
            note=f"  (→ {per_hour:.2f} s per hour: "
                 f"{per_hour / one_step[scale]:.0f}× slower than one step)")
    if req_1 != trace.size:
        print(f"replay counted {req_1} requests, the trace has {trace.size}", file=sys.stderr)
        return 1
    print(f"replay_speed hours=1 wall_s={wall_1:.4f} speedup={HOUR / wall_1:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

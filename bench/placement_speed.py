"""Placement decision speed: the vectorized pipeline against a per-node Python loop.

Run: ``python -m bench.placement_speed [--requests N] [--loop-requests N]``.

For fleets of 12 (the default fleet), 1,000 and 5,000 GPUs it times full
decisions (classify → filter → score → choose; reasons and the decision
matrix stay available lazily) over a stream of mixed requests, and the
straightforward loop implementation over a prefix of the same stream. Both
must choose the same GPU for every request the loop runs; the benchmark
fails loudly otherwise. The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time

from core.adapters.settings_source import load_settings
from core.fleet import default_fleet, synthetic_fleet
from core.model import PlacementRequest
from core.placement import FleetSnapshot
from core.placement.reference import loop_decide
from core.scheduling import build_scheduler

SIZES = (12, 1000, 5000)


def request_stream(n: int, seed: int = 7) -> list[PlacementRequest]:
    rng = random.Random(seed)
    sizes = (0.8, 1.5, 2.5, 3.9, 4.0, 6.0, 8.0, 12.0, 16.0, 16.5, 24.0, 40.0, 70.0)
    return [
        PlacementRequest.parse({
            "model_name": f"model-{i % 50}",
            "model_memory_gb": rng.choice(sizes),
            "priority": rng.choice(("LOW", "MEDIUM", "HIGH", "CRITICAL")),
            "latency_sla_ms": rng.choice((80, 200, 1000)),
            "expected_qps": rng.uniform(1, 50),
        })
        for i in range(n)
    ]


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run(requests: int, loop_requests: int) -> dict[int, dict[str, float]]:
    settings = load_settings()
    cat, rules = settings.catalog, settings.classes
    weights = settings.placement.weights
    scheduler = build_scheduler(settings)
    stream = request_stream(requests)
    results: dict[int, dict[str, float]] = {}
    print(f"{'gpus':>6} {'impl':>10} {'decisions/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'requests':>9}")
    for size in SIZES:
        nodes = default_fleet(cat, rules) if size == 12 else synthetic_fleet(
            cat, rules, gpus=size, seed=size)
        snapshot = FleetSnapshot(nodes, cat)
        for r in stream[:50]:  # warm the per-type score tables
            scheduler.decide(r, snapshot)
        gc.collect()
        gc.disable()
        lat = []
        start = time.perf_counter()
        for r in stream:
            t0 = time.perf_counter()
            scheduler.decide(r, snapshot)
            lat.append(time.perf_counter() - t0)
        wall = time.perf_counter() - start
        gc.enable()
        lat.sort()
        fast = {"rate": len(stream) / wall, "p50": percentile(lat, 0.5) * 1e3,
                "p99": percentile(lat, 0.99) * 1e3}

        n_loop = min(loop_requests, len(stream)) if size > 12 else len(stream)
        loop_lat = []
        mismatches = 0
        for r in stream[:n_loop]:
            t0 = time.perf_counter()
            choice = loop_decide(r, nodes, catalog=cat, classes=rules, weights=weights,
                                 max_utilization=settings.placement.max_utilization,
                                 max_clients=settings.placement.max_mps_clients_per_gpu)
            loop_lat.append(time.perf_counter() - t0)
            d = scheduler.decide(r, snapshot)
            if (choice.node, choice.gpu_index) != (d.node, d.gpu_index):
                mismatches += 1
        if mismatches:
            print(f"FAIL: loop and vectorized pipeline disagree on {mismatches} of {n_loop} "
                  f"requests at {size} GPUs", file=sys.stderr)
            raise SystemExit(1)
        loop_lat.sort()
        loop = {"rate": n_loop / sum(loop_lat), "p50": percentile(loop_lat, 0.5) * 1e3,
                "p99": percentile(loop_lat, 0.99) * 1e3}
        for name, m, n in (("vectorized", fast, len(stream)), ("loop", loop, n_loop)):
            print(f"{size:>6} {name:>10} {m['rate']:>12.0f} {m['p50']:>8.3f} {m['p99']:>8.3f} "
                  f"{n:>9}")
        placed = sum(1 for r in stream[:200] if scheduler.decide(r, snapshot).placed)
        print(f"{'':>6} {'':>10} same choices on all {n_loop} loop-run requests; "
              f"{placed}/200 placed; mean loop/vectorized latency ratio "
              f"{statistics.mean(loop_lat) / statistics.mean(lat):.1f}x")
        results[size] = {"rate": fast["rate"], "p99": fast["p99"],
                         "speedup": fast["rate"] / loop["rate"]}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--loop-requests", type=int, default=200)
    args = parser.parse_args(argv)
    results = run(args.requests, args.loop_requests)
    big = results[5000]
    print(f"placement_speed gpus=5000 decisions_per_s={big['rate']:.1f} "
          f"p99_ms={big['p99']:.3f} speedup_vs_loop={big['speedup']:.1f}")


if __name__ == "__main__":
    main()

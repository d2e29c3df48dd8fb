"""The twin's telemetry: ``FleetTelemetry`` readings built from its books, pods and GPUs.

Why: the monitoring loop, the exporter and the console read the twin through
the ``Metrics`` port as they would read Prometheus; this module turns the
twin's state into that one reading. It only reads: building a reading never
changes the simulation.

Invariants: a GPU on a NotReady node reports nothing (its exporter is
unreachable); a failed GPU reports 0 W and 0 utilization; windows cover only
completed ticks; counters are the cumulative ones (they never decrease);
a deployment's replicas are its Running pods that still have endpoints.
A reading is measurements only, as a real exporter's are: ``core.cost``
prices it with the layout (``Twin.nodes()``), as it prices Prometheus'.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from core.sim.books import E2E, GPU_WINDOW_S, TTFT, Books
from core.sim.engine import TrafficEngine
from core.sim.faults import FaultEffects
from core.sim.pods import PodBook, PodRecord
from core.telemetry import (
    E2E_LATENCY_BUCKETS_S,
    ITL_BUCKETS_S,
    TTFT_BUCKETS_S,
    DeploymentCounters,
    DeploymentTelemetry,
    FleetTelemetry,
    FleetTotals,
    GpuTelemetry,
    Histogram,
    histogram_quantile,
)


def fleet_telemetry(*, now: float, eff: FaultEffects, engine: TrafficEngine, pods: PodBook,
                    plugins_down: Collection[str] = ()) -> FleetTelemetry:
    """The reading at ``now``; ``plugins_down``: nodes whose device plugin advertises
    nothing (their GPUs read unhealthy)."""
    books, gpus, ticks = engine.books, engine.gpus, engine.ticks
    held = pods.held_by_row()
    n_dep = len(books.keys)
    qps: dict[int, np.ndarray] = {}
    for window in (60, 300, 900, 3600):
        total, covered = books.window_sum(books.r_req, window, ticks=ticks)
        qps[window] = total / covered if covered else np.zeros(n_dep)
    req5, _ = books.window_sum(books.r_req, 300, ticks=ticks)
    ok5, _ = books.window_sum(books.r_ok, 300, ticks=ticks)
    gen1, covered1 = books.window_sum(books.r_gen, 60, ticks=ticks)
    gpu_req, gpu_cov = books.window_sum(books.r_gpu, GPU_WINDOW_S, ticks=ticks)
    if ticks > 0:
        current = (ticks - 1) // books.ticks_per_hslot
        back = min(engine.hist_window, current + 1)
        slots = (current - np.arange(back)) % books.hist_len
        e2e5 = books.h_e2e[slots].sum(axis=0)
        e2e5_sum = books.h_e2e_sum[slots].sum(axis=0)
        ttft5 = books.h_ttft[slots].sum(axis=0)
    else:
        e2e5 = np.zeros((n_dep, E2E.size + 1), dtype=np.int64)
        e2e5_sum = np.zeros(n_dep)
        ttft5 = np.zeros((n_dep, TTFT.size + 1), dtype=np.int64)

    running_pods: dict[int, list[PodRecord]] = {}
    for p in pods.pods.values():
        if p.deployment >= 0 and pods.serving(p, now=now, eff=eff):
            running_pods.setdefault(p.deployment, []).append(p)
    alive, rep = engine.rep_alive, engine.rep
    queued = np.where(alive, rep.queue / np.maximum(rep.mean_work, 1e-9), 0.0)
    waiting = np.bincount(rep.deployment, weights=queued, minlength=n_dep)
    in_service = np.bincount(rep.deployment, weights=np.where(alive, rep.concurrency, 0.0),
                             minlength=n_dep)

    deployments = []
    for d, (namespace, model) in enumerate(books.keys):
        total5 = int(req5[d])
        count5 = int(e2e5[d].sum())
        p99 = histogram_quantile(0.99, bounds=E2E_LATENCY_BUCKETS_S, counts=e2e5[d].tolist())
        p50_ttft = histogram_quantile(0.5, bounds=TTFT_BUCKETS_S, counts=ttft5[d].tolist())
        on = running_pods.get(d, [])
        deployments.append(DeploymentTelemetry(
            model=model, namespace=namespace, replicas=len(on),
            qps_1m=float(qps[60][d]), qps_5m=float(qps[300][d]),
            qps_15m=float(qps[900][d]), qps_1h=float(qps[3600][d]),
            success_rate=int(ok5[d]) / total5 if total5 else None,
            p99_latency_ms=None if p99 is None else p99 * 1000.0,
            mean_latency_ms=float(e2e5_sum[d]) / count5 * 1000.0 if count5 else None,
            ttft_p50_ms=None if p50_ttft is None else p50_ttft * 1000.0,
            queue_waiting=round(float(waiting[d])), running=round(float(in_service[d])),
            tokens_per_s=float(gen1[d]) / covered1 if covered1 else 0.0,
            nodes=tuple(sorted({p.node for p in on})),
            counters=deployment_counters(books, d),
            pods=tuple(sorted(f"{p.namespace}/{p.name}" for p in on))))
    deployments.sort(key=lambda t: (t.namespace, t.model))

    readings = []
    throughput = 0.0
    power_total = 0.0
    # Whole columns as Python values at once (per-element numpy access and np.clip on a
    # scalar were most of a 5,000-GPU reading); the values are the same floats and ints.
    failed = gpus.failed_rows(eff).tolist()
    util_col = np.clip(engine.util, 0.0, 1.0).tolist()
    power_col = engine.power.tolist()
    energy_col = engine.energy.tolist()
    other_mem = gpus.other_mem.tolist()
    mem_total = gpus.mem_total.tolist()
    tops = gpus.tops.tolist()
    served = gpu_req.tolist()
    not_ready = eff.not_ready_nodes
    for row in range(gpus.count):
        node, index = gpus.node[row], gpus.index[row]
        if node in not_ready:
            continue  # an unreachable node's exporter returns nothing
        usable = eff.gpu_usable(node, index) and node not in plugins_down
        dead = failed[row]
        util = 0.0 if dead else float(util_col[row])
        watts = 0.0 if dead else float(power_col[row])
        on_gpu = held.get(row)
        if on_gpu:
            used = int(other_mem[row]) + sum(p.memory_mib for p in on_gpu)
            pods = tuple(sorted(f"{p.namespace}/{p.name}" for p in on_gpu))
        else:
            used, pods = int(other_mem[row]), ()
        util = round(util, 4)
        readings.append(GpuTelemetry(
            node=node, gpu_index=index, gpu_type=gpus.gpu_type[row], uuid=gpus.uuid[row],
            utilization=util, power_w=round(watts, 1), memory_used_mib=used,
            memory_total_mib=int(mem_total[row]), energy_j=float(energy_col[row]),
            healthy=usable,
            qps_1m=float(served[row]) / gpu_cov if gpu_cov else 0.0,
            pods=pods))
        power_total += watts
        throughput += float(tops[row]) * util
    fleet_qps = float(sum(d.qps_1m for d in deployments))
    all_req, all_ok = int(req5.sum()), int(ok5.sum())
    totals = FleetTotals(
        qps=fleet_qps, power_w=round(power_total, 1),
        tops_per_w=throughput / power_total if power_total > 0 else 0.0,
        success_rate=all_ok / all_req if all_req else None,
        queue_waiting=sum(d.queue_waiting for d in deployments))
    return FleetTelemetry(timestamp=now, gpus=tuple(readings), deployments=tuple(deployments),
                          totals=totals, source="twin")


def deployment_counters(books: Books, d: int) -> DeploymentCounters:
    """Deployment ``d``'s cumulative counters (requests, tokens, latency histograms)."""
    requests, success = int(books.c_requests[d]), int(books.c_success[d])
    return DeploymentCounters(
        requests_total=requests, success_total=success, failure_total=requests - success,
        prompt_tokens_total=int(books.c_prompt[d]),
        generation_tokens_total=int(books.c_gen[d]),
        e2e_latency=Histogram(E2E_LATENCY_BUCKETS_S, tuple(int(c) for c in books.c_e2e[d]),
                              float(books.c_e2e_sum[d])),
        ttft=Histogram(TTFT_BUCKETS_S, tuple(int(c) for c in books.c_ttft[d]),
                       float(books.c_ttft_sum[d])),
        itl=Histogram(ITL_BUCKETS_S, tuple(int(c) for c in books.c_itl[d]),
                      float(books.c_itl_sum[d])))

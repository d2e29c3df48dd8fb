"""Controller throughput end to end: claim → decide → reserve → create the Pod → Running →
recorded, on PostgreSQL with the Kubernetes client against a fake API server over HTTP.

Run: ``python -m bench.controller_throughput [--requests N] [--profile-requests N]``.

Set-up, built here: a throwaway PostgreSQL cluster (``bench.pg_cluster``)
migrated to head; the lean fake API server (``bench.fake_apiserver``) in its
own process, serving ``--nodes`` × ``--gpus-per-node`` GPUs (5,000 by default:
625 nodes × 8, a third H100, the rest A100, each node's device plugin
advertising ``--replicas`` MPS replicas per GPU) with ``--service-ms`` per
request (3 ms: a local kube-apiserver's write latency) and pods Running
``--start-delay-ms`` after they are created; the ``KubernetesCluster``
adapter on the official client; the controller's own loop
(``ControllerLoop`` with ``PlacementStep`` over ``SqlPlacementStore``), with
the production cadence (``interval_s`` 2 s).

Measured: ``--requests`` requests are enqueued, then the loop runs until each
is bound or failed. Placements/s is bound requests over the time from the
first claim to the last one recorded; a placement's latency is from its claim
to its ``bound`` record. Beside it: the decision-only rate on the same
snapshot (classify → filter → score → choose, no I/O) and kube-scheduler's
SchedulingBasic floor at 5,000 nodes (270 pods/s, API binding included).

Checked by the benchmark itself (it exits non-zero otherwise): no GPU is
over-committed, neither in the store (``db.reservations``: the threads,
memory and replicas of the reservations of bound requests, per GPU) nor in the
cluster (the slices the pods' annotations declare), and every bound request
has exactly one Running pod.

Also reported: the controller process's CPU time per placement (all of its
threads; the fake API server and PostgreSQL are other processes), the figure
that does not depend on how busy the machine's other cores are, and beside it
the CPU per placement of the other processes of the run (the fake API server,
PostgreSQL's backends, the adapter's pod-create workers): together they say
what the machine's cores can carry.

Then a second, smaller run under ``cProfile`` (``--profile-requests``) says
where the time goes: by area (decision, store, Kubernetes client, HTTP, JSON,
waiting) and by stage of the pass (claim, snapshot, decide, reserve, record,
create pods, wait for Running, record bound), controller thread only. The
last line is machine-readable.

The placement configuration is the controller's default (``PlacementConfig``)
unless ``--claim-batch``, ``--snapshot-max-age-s``, ``--pipeline-chunk`` or
``--bind-concurrency`` say otherwise; the adapter sends the pod creates from
``--create-processes`` worker processes (``KubeOptions.create_processes``, 2
here; 0: threads of the controller process, as the adapter does by default).
The benchmark runs unchanged against an older checkout (a baseline worktree)
to measure before and after.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s
from sqlalchemy import func, select, text

from bench import pg_cluster
from bench.placement_speed import percentile
from core.adapters.kubernetes import KubeOptions, KubernetesCluster
from core.adapters.settings_source import load_settings
from core.clock import SystemClock
from core.controller import ControllerLoop, PlacementConfig, PlacementStep, PlacementWorker
from core.controller.metrics import ControllerMetrics
from core.model import PlacementRequest
from core.placement import FleetSnapshot
from core.scheduling import build_scheduler
from core.states import RequestState
from db import queue
from db.engine import make_engine, session_factory, upgrade
from db.models import GpuReservationRow, PlacementRequestRow
from db.stores import SqlLeaseStore, SqlPlacementStore

KUBE_SCHEDULER_FLOOR = 270.0  # pods/s, scheduler_perf SchedulingBasic at 5,000 nodes
GOAL = 500.0


def request_stream(n: int, *, seed: int, prefix: str) -> list[PlacementRequest]:
    rng = random.Random(seed)
    return [PlacementRequest.parse({
        "model_name": f"model-{i % 40}",
        "model_memory_gb": rng.choice((2.5, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0)),
        "priority": rng.choice(("LOW", "MEDIUM", "HIGH", "CRITICAL")),
        "latency_sla_ms": rng.choice((80, 200, 1000)),
        "expected_qps": rng.uniform(1, 20),
        "request_id": f"{prefix}-{i:06d}",
    }) for i in range(n)]


class TimedStore(SqlPlacementStore):
    """The production store, noting when each request was claimed and recorded bound."""

    def __init__(self, factory: Any) -> None:
        super().__init__(factory)
        self.claimed_at: dict[int, float] = {}
        self.bound_at: dict[int, float] = {}

    def claim(self, **kwargs: Any) -> Any:
        return self._noted(super().claim(**kwargs))

    def claim_placing(self, **kwargs: Any) -> Any:  # the batched path, where it exists
        return self._noted(super().claim_placing(**kwargs))  # type: ignore[misc]

    def _noted(self, items: Any) -> Any:
        t = time.perf_counter()
        for item in items:
            self.claimed_at.setdefault(item.pk, t)
        return items

    def finish(self, **kwargs: Any) -> None:
        super().finish(**kwargs)
        if kwargs.get("bound"):
            self.bound_at[kwargs["pk"]] = time.perf_counter()

    def finish_many(self, **kwargs: Any) -> Any:  # the batched path, where it exists
        done = super().finish_many(**kwargs)  # type: ignore[misc]
        t = time.perf_counter()
        if kwargs.get("bound"):
            for pk in kwargs["pks"]:
                self.bound_at[pk] = t
        return done


@dataclass
class RunResult:
    requests: int
    bound: int = 0
    failed: int = 0
    wall_s: float = 0.0
    placements_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    passes: int = 0
    cpu_ms_per_placement: float = 0.0
    others_cpu_ms: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def process_cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds of the processes ``pids`` (Linux ``/proc``; 0 elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def postgres_pids(pg: Any) -> list[int]:
    """The postmaster and its children (the backends serving this run)."""
    try:
        root = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    return [root, *_children_of(root)]


def child_pids(*, besides: Sequence[int] = ()) -> list[int]:
    """This process's children (the adapter's pod-create workers), but ``besides``."""
    return [pid for pid in _children_of(os.getpid()) if pid not in besides]


def _children_of(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (from ``/proc/<pid>/stat``)."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == parent:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def start_fake(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.fake_apiserver", "--nodes", str(args.nodes),
         "--gpus-per-node", str(args.gpus_per_node), "--replicas", str(args.replicas),
         "--service-ms", str(args.service_ms), "--start-delay-ms", str(args.start_delay_ms)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        raise SystemExit(f"the fake API server did not start: {url!r}")
    return proc, url


def kube_cluster(url: str, catalog: Any, *, bind_concurrency: int = 0,
                 create_processes: int = -1) -> KubernetesCluster:
    configuration = k8s.Configuration()
    configuration.host = url
    fields = getattr(KubeOptions, "__dataclass_fields__", {})
    overrides: dict[str, int] = {}
    if bind_concurrency > 0 and "bind_concurrency" in fields:
        overrides["bind_concurrency"] = bind_concurrency
    if create_processes >= 0 and "create_processes" in fields:  # an older checkout has none
        overrides["create_processes"] = create_processes
    return KubernetesCluster(configuration, catalog=catalog, options=KubeOptions(**overrides))


def run_controller(*, factory: Any, cluster: KubernetesCluster, settings: Any,
                   requests: Sequence[PlacementRequest], identity: str,
                   config: PlacementConfig, interval_s: float, timeout_s: float,
                   profile: cProfile.Profile | None = None,
                   others: dict[str, Any] | None = None) -> RunResult:
    with factory.begin() as s:
        queue.enqueue_many(s, requests, now=datetime.now(UTC), source="bench")
        s.execute(text("ANALYZE"))
    store = TimedStore(factory)
    metrics = ControllerMetrics()
    worker = PlacementWorker(
        store=store, cluster=cluster, clock=SystemClock(),
        scheduler=lambda: build_scheduler(settings), catalog=settings.catalog,
        max_clients=settings.placement.max_mps_clients_per_gpu, worker=identity,
        config=config, timer=time.perf_counter, on_decision=metrics.decision_seconds.observe)
    step = PlacementStep(worker, metrics=metrics, timer=time.perf_counter)
    loop = ControllerLoop(leases=SqlLeaseStore(factory), queue=store, clock=SystemClock(),
                          identity=identity, steps=[step], metrics=metrics,
                          lease_ttl_s=15.0, interval_s=interval_s)
    step.heartbeat = loop.heartbeat
    target = (lambda: profile.runcall(loop.run)) if profile is not None else loop.run
    thread = threading.Thread(target=target, name="controller", daemon=True)
    ids = [r.request_id for r in requests]
    started = time.perf_counter()
    cpu_started = time.process_time()
    # The other processes' CPU over the same span (PostgreSQL's backends are read at the
    # end: one is opened per connection).
    others = others or {}
    others_started = {name: process_cpu_s(pids()) for name, pids in others.items()}
    thread.start()
    R = PlacementRequestRow
    open_states = (RequestState.QUEUED, RequestState.CLAIMED, RequestState.PLACING)
    # The run's requests by their common prefix: an IN list of thousands of ids, compiled
    # and sent ten times a second, would take this process's GIL from the controller it
    # measures (at 5,000 requests, most of a core).
    prefix = ids[0].rsplit("-", 1)[0] + "-" if ids else ""
    mine = R.request_id.startswith(prefix, autoescape=True) \
        if prefix and all(i.startswith(prefix) for i in ids) else R.request_id.in_(ids)
    while time.perf_counter() - started < timeout_s:
        time.sleep(0.1)
        with factory() as s:
            left = s.scalar(select(func.count()).where(mine, R.status.in_(open_states)))
        if not left:
            break
    loop.stop()
    thread.join(timeout=120)
    cpu_s = time.process_time() - cpu_started
    others_s = {name: process_cpu_s(pids()) - others_started[name]
                for name, pids in others.items()}
    result = RunResult(requests=len(requests), passes=loop.iterations)
    with factory() as s:
        counts = dict(s.execute(select(R.status, func.count()).where(R.request_id.in_(ids))
                                .group_by(R.status)).all())
    result.bound = int(counts.get(RequestState.BOUND, 0))
    result.failed = int(counts.get(RequestState.FAILED, 0))
    result.cpu_ms_per_placement = cpu_s * 1e3 / max(1, result.bound)
    result.others_cpu_ms = {name: secs * 1e3 / max(1, result.bound)
                            for name, secs in others_s.items()}
    if result.bound + result.failed < len(requests):
        result.problems.append(f"{len(requests) - result.bound - result.failed} requests "
                               f"neither bound nor failed after {timeout_s:.0f} s: {counts}")
    lat = sorted(store.bound_at[pk] - store.claimed_at[pk] for pk in store.bound_at
                 if pk in store.claimed_at)
    if store.bound_at:
        first = min(store.claimed_at.values())
        result.wall_s = max(store.bound_at.values()) - first
        result.placements_per_s = result.bound / result.wall_s if result.wall_s > 0 else 0.0
        result.p50_ms = percentile(lat, 0.5) * 1e3
        result.p99_ms = percentile(lat, 0.99) * 1e3
    return result


def check_no_overcommit(factory: Any, cluster: KubernetesCluster, snapshot: FleetSnapshot
                        ) -> list[str]:
    """Problems found: any GPU holding more threads, memory or replicas than it has, in the
    store or in the cluster; a bound request without exactly one Running pod."""
    problems: list[str] = []
    G, R = GpuReservationRow, PlacementRequestRow
    limits = {(snapshot.node_of(r), int(snapshot.gpu_index[r])):
              (int(snapshot.mem_total[r]), snapshot.replicas_of(r)) for r in range(snapshot.size)}
    with factory() as s:
        rows = s.execute(select(G.node, G.gpu_index, func.sum(G.thread_pct),
                                func.sum(G.memory_mib), func.count())
                         .join(R, R.request_id == G.owner)
                         .where(R.status == RequestState.BOUND)
                         .group_by(G.node, G.gpu_index)).all()
        bound = set(s.scalars(select(R.request_id).where(R.status == RequestState.BOUND)))
    for node, gpu, threads, memory, n in rows:
        mem_total, replicas = limits[(node, int(gpu))]
        if threads > 100 or memory > mem_total or (replicas is not None and n > replicas):
            problems.append(f"store: {node}/{gpu} holds {threads} % / {memory} MiB / {n} "
                            f"slices (has {mem_total} MiB, {replicas} replicas)")
    held: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    running: dict[str, int] = defaultdict(int)
    for pod in cluster.pods():
        if pod.phase in ("Pending", "Running", "Unknown"):
            held[(pod.node, pod.gpu_index)].append((pod.mps_slice.thread_pct,
                                                    pod.mps_slice.memory_mib))
        if pod.phase == "Running":
            running[pod.mps_slice.owner] += 1
    for (node, gpu), slices in held.items():
        mem_total, replicas = limits[(node, gpu)]
        threads, memory = sum(t for t, _ in slices), sum(m for _, m in slices)
        if threads > 100 or memory > mem_total or (replicas is not None and
                                                   len(slices) > replicas):
            problems.append(f"cluster: {node}/{gpu} holds {threads} % / {memory} MiB / "
                            f"{len(slices)} pods")
    wrong = [rid for rid in bound if running.get(rid, 0) != 1]
    if wrong:
        problems.append(f"{len(wrong)} bound requests without exactly one Running pod, "
                        f"e.g. {wrong[:3]}")
    return problems


_AREAS = (
    ("decision (core.placement)", ("core/placement/",)),
    ("snapshot read (adapter nodes/pods)", ("adapters/kubernetes/nodes.py",)),
    ("store (db, SQLAlchemy, psycopg)", ("/db/", "sqlalchemy", "psycopg")),
    ("Kubernetes client models", ("kubernetes/client/",)),
    ("HTTP (urllib3, http.client, socket)", ("urllib3", "http/client", "socket", "ssl")),
    ("JSON", ("json/",)),
    ("controller (core.controller, manifest)", ("core/controller/", "core/manifest")),
)


def profile_summary(profile: cProfile.Profile, *, top: int = 12) -> list[str]:
    stats = pstats.Stats(profile)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    by_area: dict[str, float] = defaultdict(float)
    waiting = 0.0
    for (path, _, fn), (_, _, tottime, _, _) in raw.items():
        if fn in ("sleep", "wait", "acquire") or "select" in fn or fn.startswith("<method 'recv"):
            waiting += tottime
            continue
        area = next((name for name, keys in _AREAS if any(k in path for k in keys)), "other")
        by_area[area] += tottime
    lines = [f"  {'area':<44} {'self s':>8} {'share':>7}"]
    for name, secs in sorted(by_area.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:<44} {secs:>8.2f} {secs / total:>6.0%}")
    lines.append(f"  {'waiting (sleep, locks, sockets)':<44} {waiting:>8.2f} "
                 f"{waiting / total:>6.0%}")
    phases = {"claim": ("batching.py", "claim"), "snapshot": ("placement.py", "_fleet"),
              "decide": ("placement.py", "_decide"), "reserve": ("batching.py", "reserve"),
              "record decisions": ("batching.py", "record"),
              "create pods": ("batching.py", "bind_all"),
              "wait for Running": ("placement.py", "_wait"),
              "record bound": ("batching.py", "finish_bound"),
              "claim (single)": ("db/stores.py", "claim"),
              "mark placing (single)": ("db/stores.py", "mark_placing"),
              "reserve (single)": ("db/stores.py", "reserve"),
              "decision (single)": ("db/stores.py", "record_decision"),
              "bind (single)": ("kubernetes/cluster.py", "bind"),
              "poll phase (single)": ("kubernetes/cluster.py", "pod_phase"),
              "finish (single)": ("db/stores.py", "finish"),
              "cluster read": ("kubernetes/cluster.py", "nodes")}
    lines.append("  where the pass's wall time goes (cumulative, controller thread):")
    for label, (file, fn) in phases.items():
        cum = sum(v[3] for (path, _, name), v in raw.items()
                  if path.endswith(file) and name == fn)
        if cum > 0:
            lines.append(f"    {label:<26} {cum:>8.2f} s {cum / total:>6.0%}")
    lines.append(f"  top functions by own time (of {total:.2f} s):")
    ranked = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    for (path, line, fn), (_, calls, tottime, _cum, _) in ranked:
        short = "/".join(path.split("/")[-2:])
        lines.append(f"    {tottime:>7.2f} s {calls:>8} calls  {short}:{line} {fn}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--profile-requests", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=625)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--service-ms", type=float, default=3.0)
    parser.add_argument("--start-delay-ms", type=float, default=20.0)
    parser.add_argument("--interval-s", type=float, default=2.0)
    parser.add_argument("--claim-batch", type=int, default=0,
                        help="requests per pass (0: the controller's default)")
    parser.add_argument("--snapshot-max-age-s", type=float, default=-1.0,
                        help="reuse of the snapshot between passes (-1: the default)")
    parser.add_argument("--bind-concurrency", type=int, default=0,
                        help="pod creations in flight (0: the adapter's default)")
    parser.add_argument("--create-processes", type=int, default=2,
                        help="the adapter's worker processes sending the pod creates "
                             "(KubeOptions.create_processes; 0: threads of the controller "
                             "process; -1: the adapter's default)")
    parser.add_argument("--pipeline-chunk", type=int, default=0,
                        help="requests per pipelined chunk (0: the controller's default)")
    parser.add_argument("--profile-out", default="",
                        help="also write the profile here (pstats format)")
    parser.add_argument("--timeout-s", type=float, default=900.0)
    args = parser.parse_args(argv)
    settings = load_settings()
    scheduler = build_scheduler(settings)
    pg = pg_cluster.start()
    fake, url = start_fake(args)
    problems: list[str] = []
    try:
        engine = make_engine(pg.url())
        upgrade(engine)
        factory = session_factory(engine)
        cluster = kube_cluster(url, settings.catalog, bind_concurrency=args.bind_concurrency,
                               create_processes=args.create_processes)
        workers = getattr(cluster, "_create_pool", None)
        if workers is not None:  # the adapter's create workers start first, not mid-run
            workers.wait_ready()
        t0 = time.perf_counter()
        nodes = cluster.nodes()
        read_s = time.perf_counter() - t0
        snapshot = FleetSnapshot(nodes, settings.catalog,
                                 max_clients=settings.placement.max_mps_clients_per_gpu)
        gpus = snapshot.size
        stream = request_stream(args.requests, seed=3, prefix="tp")
        for r in stream[:50]:
            scheduler.decide(r, snapshot)
        t0 = time.perf_counter()
        for r in stream:
            scheduler.decide(r, snapshot)
        decisions_per_s = len(stream) / (time.perf_counter() - t0)
        print(f"fleet: {len(nodes)} nodes, {gpus} GPUs; reading it through the API took "
              f"{read_s * 1e3:.0f} ms; fake API server {args.service_ms:g} ms per request, "
              f"pods Running {args.start_delay_ms:g} ms after creation")
        overrides: dict[str, Any] = {}
        if args.claim_batch > 0:
            overrides["claim_batch"] = args.claim_batch
        if args.snapshot_max_age_s >= 0:
            overrides["snapshot_max_age_s"] = args.snapshot_max_age_s
        if args.pipeline_chunk > 0:
            overrides["pipeline_chunk"] = args.pipeline_chunk
        config = PlacementConfig(**overrides)
        print(f"placement config: claim_batch={config.claim_batch}, snapshot_max_age_s="
              f"{getattr(config, 'snapshot_max_age_s', 0.0)}, loop interval_s={args.interval_s}"
              f"; kube adapter: bind_concurrency={cluster.options.bind_concurrency}, "
              f"create_processes={getattr(cluster.options, 'create_processes', 0)}")
        # As the controller process does once its runtime is built
        # (app.bootstrap.freeze_long_lived, called by app/controller.py): collect, then take
        # the long-lived objects (modules, settings, the client's models, the snapshot) out of
        # the collector's sight, so that its full passes do not walk them again and again.
        gc.collect()
        gc.freeze()
        result = run_controller(factory=factory, cluster=cluster, settings=settings,
                                requests=stream, identity="bench-controller", config=config,
                                interval_s=args.interval_s, timeout_s=args.timeout_s,
                                others={"fake API server": lambda: [fake.pid],
                                        "PostgreSQL": lambda: postgres_pids(pg),
                                        "pod-create workers":
                                            lambda: child_pids(besides=[fake.pid])})
        problems += result.problems
        problems += check_no_overcommit(factory, cluster, snapshot)
        print(f"{'':<28} {'per s':>10}")
        print(f"{'end to end (this run)':<28} {result.placements_per_s:>10.1f}   "
              f"{result.bound} bound, {result.failed} failed of {result.requests} in "
              f"{result.wall_s:.1f} s, {result.passes} loop iterations; latency claim → "
              f"recorded p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms; controller "
              f"process CPU {result.cpu_ms_per_placement:.2f} ms per placement (every thread; "
              f"the fake API server and PostgreSQL are other processes)")
        if result.others_cpu_ms:
            print(f"{'':<28} {'':>10}   CPU per placement of the other processes: " +
                  ", ".join(f"{name} {ms:.2f} ms" for name, ms in result.others_cpu_ms.items())
                  + f" (the machine has {os.cpu_count()} cores)")
        print(f"{'decision only (no I/O)':<28} {decisions_per_s:>10.1f}")
        print(f"{'kube-scheduler floor':<28} {KUBE_SCHEDULER_FLOOR:>10.1f}   "
              "(scheduler_perf SchedulingBasic, 5,000 nodes, binding included)")
        print(f"{'goal (SPEC §7)':<28} {GOAL:>10.1f}")
        print("over-commit check: " + ("none, in the store and in the cluster"
                                       if not problems else f"{len(problems)} problems"))
        for p in problems[:20]:
            print(f"  PROBLEM: {p}")
        if args.profile_requests > 0:
            profile = cProfile.Profile()
            extra = request_stream(args.profile_requests, seed=5, prefix="prof")
            prof = run_controller(factory=factory, cluster=cluster, settings=settings,
                                  requests=extra, identity="bench-controller", config=config,
                                  interval_s=args.interval_s, timeout_s=args.timeout_s,
                                  profile=profile)
            print(f"profile of a second run of {len(extra)} requests under cProfile "
                  f"({prof.placements_per_s:.1f}/s with the profiler's overhead), controller "
                  "thread only:")
            if args.profile_out:
                profile.dump_stats(args.profile_out)
            for line in profile_summary(profile):
                print(line)
        cluster.close()
        engine.dispose()
    finally:
        if fake.stdin is not None:
            fake.stdin.close()
        fake.wait(timeout=10)
        pg.stop()
    print(f"controller_throughput gpus={gpus} placements_per_s={result.placements_per_s:.1f} "
          f"decisions_per_s={decisions_per_s:.1f} p99_placement_ms={result.p99_ms:.1f}")
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

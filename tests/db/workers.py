"""Worker processes for the concurrency tests.

They live in a module of their own, at top level, so that the ``spawn`` start
method can import and run them in a fresh interpreter. Each worker reports
one dict on the ``results`` queue, also when it fails (with ``error`` set), so
the test never waits for a result that will not come.
"""

from __future__ import annotations

import time
import traceback
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from typing import Any

from db import leases, queue
from db.engine import make_engine, session_factory

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LEASE_NAME = "controller"


def micros(dt: datetime) -> int:
    """Exact integer microseconds since the epoch (no float rounding)."""
    return (dt - EPOCH) // timedelta(microseconds=1)


def claim_worker(*, url: str, worker: str, batch: int, work_s: float, barrier: Barrier,
                 results: Queue[dict[str, Any]]) -> None:
    """Claim requests in batches until the queue is empty; place, then finish each batch.

    As in the controller, the claim and the finish are separate transactions with
    the placement work (``work_s``, outside any transaction) between them.
    """
    claimed: list[str] = []
    batches = empty_polls = largest_batch = 0
    engine = make_engine(url)
    try:
        factory = session_factory(engine)
        barrier.wait(timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with factory.begin() as s:
                got = queue.claim(s, worker=worker, now=datetime.now(UTC), lease_seconds=120,
                                 limit=batch)
            if not got:
                # Nothing for me *now* (PostgreSQL skips rows the other worker holds
                # locked); stop only once no request is left waiting.
                with factory() as s:
                    if queue.queue_counts(s).get("queued", 0) == 0:
                        break
                empty_polls += 1
                time.sleep(0.005)
                continue
            batches += 1
            largest_batch = max(largest_batch, len(got))
            claimed.extend(q.request_id for q in got)
            time.sleep(work_s)
            with factory.begin() as s:
                for q in got:
                    queue.finish(s, pk=q.pk, worker=worker, now=datetime.now(UTC), bound=True)
        error = None
    except BaseException:
        error = traceback.format_exc()
    finally:
        engine.dispose()
    results.put({"worker": worker, "claimed": claimed, "batches": batches,
                 "empty_polls": empty_polls, "largest_batch": largest_batch, "error": error})


def lease_worker(*, url: str, holder: str, ttl: float, poll: float, barrier: Barrier,
                 wait_for: Event | None, leading: Event | None, stopped: Event,
                 hold_for: float | None, deadline_s: float,
                 results: Queue[dict[str, Any]]) -> None:
    """Compete for the lease; record each interval during which this process believed it led.

    An interval starts at the time read *before* the call (the ``now`` handed to
    ``acquire_lease``) and ends ``ttl`` later: exactly the lease's expiry in the
    store, in integer microseconds. ``hold_for``: stop (without releasing) that
    long after first leading, and set ``stopped``. Otherwise run until this
    process has led for a while after ``stopped`` is set, or until the deadline.
    """
    intervals: list[tuple[int, int, int]] = []  # (start_us, end_us, generation)
    refused = 0
    stop_us: int | None = None
    engine = make_engine(url)
    ttl_us = round(ttl * 1e6)
    try:
        factory = session_factory(engine)
        barrier.wait(timeout=60)
        if wait_for is not None and not wait_for.wait(timeout=30):
            raise TimeoutError("the other process never led")
        t_begin = time.time()
        led_since: float | None = None
        led_after_stop = 0
        tick = 0
        while time.time() - t_begin < deadline_s:
            now = datetime.fromtimestamp(time.time(), UTC)
            with factory.begin() as s:
                lease = leases.acquire_lease(s, name=LEASE_NAME, holder=holder, now=now,
                                           ttl_seconds=ttl)
            if lease is None:
                refused += 1
            else:
                start = micros(now)
                intervals.append((start, start + ttl_us, lease.generation))
                if led_since is None:
                    led_since = time.time()
                    if leading is not None:
                        leading.set()
                if stopped.is_set():
                    led_after_stop += 1
            if hold_for is not None and led_since is not None \
                    and time.time() - led_since >= hold_for:
                stop_us = micros(datetime.now(UTC))
                stopped.set()
                break  # exit without releasing the lease: a crashed leader
            if led_after_stop >= 5:
                break
            tick += 1  # poll on a fixed schedule, whatever each call cost
            time.sleep(max(0.0, t_begin + tick * poll - time.time()))
        error = None
    except BaseException:
        error = traceback.format_exc()
    finally:
        engine.dispose()
    results.put({"holder": holder, "intervals": intervals, "refused": refused,
                 "stop_us": stop_us, "error": error})


def controller_worker(*, url: str, kubeconfig: str, identity: str, lease_ttl: float,
                      interval: float, claim_lease: float, ready: Event, stop: Event,
                      results: Queue[dict[str, Any]]) -> None:
    """A whole controller process: ``ControllerLoop`` over the Kubernetes adapter.

    Runs until ``stop`` is set (or it is killed). Reports once, when it stops.
    """
    import threading

    from app.bootstrap import build_controller
    from core.adapters.kubernetes import KubeOptions, KubernetesCluster
    from core.adapters.settings_source import load_settings
    from core.clock import SystemClock
    from core.controller import PlacementConfig

    engine = make_engine(url)
    error = None
    loop = None
    try:
        settings = load_settings(env={})
        cluster = KubernetesCluster.connect(catalog=settings.catalog,
                                            options=KubeOptions(namespace="default"),
                                            kubeconfig=kubeconfig)
        loop = build_controller(
            factory=session_factory(engine), cluster=cluster, clock=SystemClock(),
            settings=settings, identity=identity, lease_ttl_s=lease_ttl, interval_s=interval,
            placement=PlacementConfig(claim_batch=100, lease_seconds=claim_lease,
                                      bind_timeout_s=30, poll_s=0.1, retry_after_s=0.5))
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        ready.set()
        stop.wait(timeout=300)
        loop.stop()
        thread.join(timeout=60)
    except BaseException:
        error = traceback.format_exc()
    finally:
        engine.dispose()
    results.put({"identity": identity, "iterations": loop.iterations if loop else 0,
                 "error": error})


def placer_worker(*, url: str, kubeconfig: str, worker: str, barrier: Barrier,
                  results: Queue[dict[str, Any]]) -> None:
    """A placer that is not the controller (a console tab's "Place now", a second
    console replica): placement passes over the Kubernetes adapter until the queue
    is empty, each on its own snapshot, with no lease. Only the store keeps them from
    booking the same slice."""
    from core.adapters.kubernetes import KubeOptions, KubernetesCluster
    from core.adapters.settings_source import load_settings
    from core.clock import SystemClock
    from core.controller import PlacementConfig, PlacementWorker
    from core.scheduling import build_scheduler
    from db.stores import SqlPlacementStore

    engine = make_engine(url)
    error = None
    bound = 0
    try:
        settings = load_settings(env={})
        cluster = KubernetesCluster.connect(catalog=settings.catalog,
                                            options=KubeOptions(namespace="default"),
                                            kubeconfig=kubeconfig)
        factory = session_factory(engine)
        placer = PlacementWorker(
            store=SqlPlacementStore(factory), cluster=cluster, clock=SystemClock(),
            scheduler=lambda: build_scheduler(settings, weight_version=1),
            catalog=settings.catalog, max_clients=settings.placement.max_mps_clients_per_gpu,
            worker=worker, config=PlacementConfig(claim_batch=3, bind_timeout_s=0,
                                                  retry_after_s=0.0))
        barrier.wait(timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            outcomes = placer.run_once()
            bound += sum(1 for o in outcomes if o.status == "bound")
            if not outcomes:
                with factory() as s:
                    if queue.queue_counts(s).get("queued", 0) == 0:
                        break
                time.sleep(0.01)
    except BaseException:
        error = traceback.format_exc()
    finally:
        engine.dispose()
    results.put({"worker": worker, "bound": bound, "error": error})

"""Real separate processes against one database, on SQLite and on PostgreSQL.

- Two processes drain one queue of 1,000 requests: each request is claimed
  exactly once, none is lost.
- Two processes compete for the leader lease with real clocks: they never
  believe they lead at the same time, and when the leader dies (stops
  renewing without releasing), the other takes over within the TTL plus one
  poll interval.

The workers are in ``tests/db/workers.py`` so that the ``spawn`` start method
can import them. Every wait is bounded.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any

import pytest
from sqlalchemy import func, select

from core.model import PlacementRequest
from db import leases, queue
from db.engine import make_engine, session_factory
from db.models import PlacementRequestRow
from tests.db import workers
from tests.db.conftest import BACKENDS, Store, fresh_database

REQUESTS = 1_000
BATCH = 10
RESULT_TIMEOUT_S = 60


@contextmanager
def processes(ctx: SpawnContext, specs: list[tuple[Any, dict[str, Any]]]
              ) -> Iterator[list[SpawnProcess]]:
    """Start one process per (target, kwargs); always reap them, killing stragglers."""
    procs = [ctx.Process(target=target, kwargs=kwargs, daemon=True) for target, kwargs in specs]
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
        for p in procs:
            p.close()


def exit_codes(procs: list[SpawnProcess]) -> list[int | None]:
    for p in procs:
        p.join(timeout=RESULT_TIMEOUT_S)
    return [p.exitcode for p in procs]


def collect(results: Any, n: int) -> list[dict[str, Any]]:
    out = [results.get(timeout=RESULT_TIMEOUT_S) for _ in range(n)]
    errors = [r["error"] for r in out if r["error"]]
    assert not errors, "\n".join(errors)
    return out


@dataclass(frozen=True)
class ClaimRun:
    backend: str
    request_ids: list[str]
    reports: list[dict[str, Any]]
    counts: dict[str, int]
    bound_by: dict[str, int]
    max_attempts: int


@pytest.fixture(scope="module", params=BACKENDS)
def claim_run(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClaimRun]:
    """Two processes drain one queue of 1,000 requests, once per backend."""
    backend = request.param
    with fresh_database(request, backend=backend,
                        directory=tmp_path_factory.mktemp("claims")) as url:
        engine = make_engine(url)
        try:
            factory = session_factory(engine)
            requests = [PlacementRequest.parse({
                "model_name": f"model-{i % 50}", "model_memory_gb": 8, "priority": "MEDIUM",
                "latency_sla_ms": 200, "request_id": f"r{i:04d}"}) for i in range(REQUESTS)]
            with factory.begin() as s:
                queue.enqueue_many(s, requests, now=datetime.now(UTC), source="test")

            ctx = mp.get_context("spawn")
            barrier = ctx.Barrier(2)
            results = ctx.Queue()
            try:
                specs = [(workers.claim_worker, {"url": url, "worker": name, "batch": BATCH,
                                                 "work_s": 0.002, "barrier": barrier,
                                                 "results": results})
                         for name in ("p1", "p2")]
                with processes(ctx, specs) as procs:
                    reports = collect(results, 2)
                    assert exit_codes(procs) == [0, 0]
            finally:
                results.close()
                results.join_thread()

            R = PlacementRequestRow
            with factory() as s:
                counts = queue.queue_counts(s)
                bound_by = {str(w): int(n) for w, n in s.execute(
                    select(R.claimed_by, func.count()).where(R.status == "bound")
                    .group_by(R.claimed_by)).all()}
                max_attempts = int(s.scalar(select(func.max(R.attempts))) or 0)
        finally:
            engine.dispose()
        yield ClaimRun(backend=backend, request_ids=[r.request_id for r in requests],
                       reports=reports, counts=counts, bound_by=bound_by,
                       max_attempts=max_attempts)


def test_two_processes_claim_every_request_exactly_once(claim_run: ClaimRun) -> None:
    claimed = [rid for r in claim_run.reports for rid in r["claimed"]]
    per_worker = {r["worker"]: len(r["claimed"]) for r in claim_run.reports}

    assert len(claimed) == REQUESTS, per_worker
    assert sorted(claimed) == sorted(claim_run.request_ids)  # none twice, none lost
    assert claim_run.counts == {"bound": REQUESTS}  # the store agrees: all bound …
    assert claim_run.bound_by == {w: n for w, n in per_worker.items() if n}  # … by the claimer
    assert claim_run.max_attempts == 1  # and nobody's claim ever lapsed


def test_two_processes_share_the_queue_in_batches_no_larger_than_asked(
        claim_run: ClaimRun) -> None:
    per_worker = {r["worker"]: (len(r["claimed"]), r["largest_batch"])
                  for r in claim_run.reports}

    assert all(n > 0 for n, _ in per_worker.values()), per_worker  # both really competed
    assert all(largest <= BATCH for _, largest in per_worker.values()), per_worker


def overlaps(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_two_processes_never_lead_at_once_and_a_dead_leader_is_replaced(
        store: Store) -> None:
    ttl, poll = 0.3, 0.05
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    leading, stopped = ctx.Event(), ctx.Event()
    results = ctx.Queue()
    common = {"url": store.url, "ttl": ttl, "poll": poll, "barrier": barrier,
              "stopped": stopped, "results": results}
    try:
        specs = [
            # The first leader: leads for 1 s, then dies without releasing.
            (workers.lease_worker, {**common, "holder": "first", "wait_for": None,
                                    "leading": leading, "hold_for": 1.0, "deadline_s": 5.0}),
            # The standby: polls from the moment the first leads, until it has taken over.
            (workers.lease_worker, {**common, "holder": "standby", "wait_for": leading,
                                    "leading": None, "hold_for": None, "deadline_s": 4.0}),
        ]
        with processes(ctx, specs) as procs:
            reports = {r["holder"]: r for r in collect(results, 2)}
            assert exit_codes(procs) == [0, 0]
    finally:
        results.close()
        results.join_thread()

    first, standby = reports["first"], reports["standby"]
    assert first["intervals"] and standby["intervals"]
    clashes = [(a, b) for a in first["intervals"] for b in standby["intervals"]
               if overlaps(a, b)]
    assert clashes == [], "two processes believed they led at the same time"
    assert standby["refused"] > 0  # it did compete while the first one led

    stop_us = first["stop_us"]
    assert stop_us is not None
    after_stop = [iv for iv in standby["intervals"] if iv[1] > stop_us]
    assert after_stop, "the standby never took over"
    takeover_delay_s = (min(iv[0] for iv in after_stop) - stop_us) / 1e6
    # The dead leader's last lease ends at most `ttl` after it stopped; the standby
    # polls every `poll` seconds; 0.1 s covers the commit and OS scheduling.
    assert takeover_delay_s <= ttl + poll + 0.1, takeover_delay_s
    assert max(g for *_, g in standby["intervals"]) > max(g for *_, g in first["intervals"])
    with store.factory() as s:
        lease = leases.current_lease(s, name=workers.LEASE_NAME, now=datetime.now(UTC))
    assert lease is None or lease.holder == "standby"

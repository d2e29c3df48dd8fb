"""Process-wide services for the console, created once and cached by Streamlit.

Pages read and act through these functions; they never open sessions or build
domain objects themselves. The store is migrated to head when first opened.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.adapters.settings_source import load_settings
from core.batch import parse_batch
from core.errors import ReservationError
from core.fleet import default_fleet
from core.model import MpsSlice, Node, PlacementRequest, SchedulerWeights, WorkloadClass
from core.placement import Decision, FleetSnapshot, Scheduler
from core.settings import Settings
from db import repo
from db.engine import database_url, make_engine, redacted, session_factory, upgrade

FLEET_SOURCE = "embedded default fleet (4 H100 + 8 A100 nodes, 1 GPU each)"
WORKER = f"console@{socket.gethostname()}"
CLAIM_LEASE_SECONDS = 60.0
RETRY_AFTER_SECONDS = 30.0


def now() -> datetime:
    return datetime.now(UTC)


def current_actor() -> str:
    """Who acts. Logins and roles arrive with the auth work; until then, one local operator."""
    return "local-operator"


@st.cache_resource(show_spinner=False)
def settings() -> Settings:
    return load_settings()


@st.cache_resource(show_spinner=False)
def fleet_nodes() -> tuple[Node, ...]:
    s = settings()
    return default_fleet(s.catalog, s.classes)


@dataclass(frozen=True)
class Store:
    url: str
    engine: Engine
    factory: sessionmaker[Session]

    @property
    def display_url(self) -> str:
        return redacted(self.url)


def _dispose(store_: Store) -> None:
    store_.engine.dispose()


@st.cache_resource(show_spinner="Opening the store…", on_release=_dispose)
def store() -> Store:
    url = database_url()
    engine = make_engine(url)
    upgrade(engine)
    factory = session_factory(engine)
    with factory.begin() as s:
        repo.ensure_initial_weights(s, settings().placement.weights, now=now())
    return Store(url, engine, factory)


def scheduler() -> Scheduler:
    """A scheduler with the store's active weight version."""
    with store().factory() as s:
        active = repo.active_weights(s)
    return _scheduler(active.version if active else None,
                      tuple(active.weights.as_dict().items()) if active else ())


@st.cache_resource(show_spinner=False, max_entries=8)
def _scheduler(version: int | None, weights: tuple[tuple[str, float], ...]) -> Scheduler:
    s = settings()
    w = SchedulerWeights(**dict(weights)) if weights else s.placement.weights
    return Scheduler(catalog=s.catalog, classes=s.classes, weights=w, weight_version=version,
                     max_utilization=s.placement.max_utilization,
                     max_clients=s.placement.max_mps_clients_per_gpu,
                     memory_headroom=s.placement.memory_headroom)


def embedded_snapshot() -> FleetSnapshot:
    """The embedded fleet as it stands: the default fleet plus every bound placement."""
    s = settings()
    snap = FleetSnapshot(fleet_nodes(), s.catalog, max_clients=s.placement.max_mps_clients_per_gpu)
    with store().factory() as sess:
        held = repo.held_placements(sess)
    for h in held:
        try:
            row = snap.row_of(h.node, h.gpu_index)
            snap.reserve(row, MpsSlice(owner=h.request_id, thread_pct=h.share_pct,
                                       memory_mib=h.memory_mib, model=h.model_name,
                                       workload_class=WorkloadClass(h.workload_class)))
        except ReservationError:
            continue  # the fleet changed under it; the controller reconciles these
    return snap


def parse_request(raw: Mapping[str, Any]) -> PlacementRequest:
    """Validate operator input; raises ``ValidationError`` naming the field."""
    return PlacementRequest.parse(raw, max_gpu_memory_gb=settings().catalog.max_memory_gb)


def parse_upload(text: str, *, kind: str) -> list[PlacementRequest]:
    return parse_batch(text, kind=kind, max_gpu_memory_gb=settings().catalog.max_memory_gb)


def what_if(request: PlacementRequest) -> Decision:
    """Decide on a fresh snapshot of the fleet: nothing is reserved or changed."""
    return scheduler().decide(request, embedded_snapshot())


def submit(requests: Sequence[PlacementRequest], *, source: str, reason: str) -> list[str]:
    """Enqueue requests and audit it, in one transaction: all of them or none."""
    at = now()
    with store().factory.begin() as s:
        queued = repo.enqueue_many(s, requests, now=at, source=source)
        ids = [q.request_id for q in queued]
        repo.record_audit(s, actor=current_actor(), action="submit-requests",
                          object_type="placement_request", object_id=",".join(ids)[:128],
                          reason=reason, now=at,
                          details={"count": len(ids), "source": source, "request_ids": ids})
    return ids


@dataclass(frozen=True)
class PassResult:
    placed: list[str]
    requeued: list[str]
    failed: list[str]


def place_queued(limit: int = 50) -> PassResult:
    """One embedded placement pass: claim, decide, reserve, record, mark bound.

    Stands in for the background controller until it lands: the same steps,
    on the embedded fleet, each request in its own transaction.
    """
    with store().factory.begin() as s:
        claimed = repo.claim(s, worker=WORKER, now=now(), lease_seconds=CLAIM_LEASE_SECONDS,
                             limit=limit)
    if not claimed:
        return PassResult([], [], [])
    snap = embedded_snapshot()
    sched = scheduler()
    placed, requeued, failed = [], [], []
    for q in claimed:
        decision = sched.decide(q.request, snap)
        at = now()
        with store().factory.begin() as s:
            repo.mark_placing(s, pk=q.pk, worker=WORKER, now=at)
            repo.record_decision(s, request_pk=q.pk, decision=decision, now=at,
                                 decided_by=WORKER)
            if decision.row is not None:
                snap.reserve(decision.row, decision.mps_slice())
                repo.finish(s, pk=q.pk, worker=WORKER, now=at, bound=True)
                placed.append(q.request_id)
            else:
                status = repo.release(s, pk=q.pk, worker=WORKER, now=at,
                                      reason=decision.summary, retry_after=RETRY_AFTER_SECONDS)
                (failed if status == "failed" else requeued).append(q.request_id)
    return PassResult(placed, requeued, failed)


def queue_frame(limit: int = 200) -> tuple[dict[str, int], pd.DataFrame]:
    """Counts per state and the newest requests, as a table."""
    with store().factory() as s:
        counts = repo.queue_counts(s)
        rows = repo.list_requests(s, limit=limit)
    frame = pd.DataFrame([{
        "request": q.request_id, "model": q.request.model_name,
        "memory GB": q.request.model_memory_gb, "priority": q.request.priority.value,
        "SLA ms": q.request.latency_sla_ms, "status": q.status, "attempts": q.attempts,
        "source": q.source, "reason": q.reason or "", "updated": q.updated_at,
    } for q in rows])
    return counts, frame


def decision_history(limit: int = 100) -> list[repo.DecisionRecord]:
    with store().factory() as s:
        return repo.decision_history(s, limit=limit)

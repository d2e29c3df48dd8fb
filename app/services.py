"""Process-wide services for the console, created once and cached by Streamlit.

Pages read and act through these functions; they never open sessions or build
domain objects themselves. The runtime (store migrated to head, the fleet, the
metrics source and the monitor thread) is created once per process.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from app.runtime import MonitorState, Runtime, build_runtime
from core.adapters.settings_source import load_settings
from core.batch import parse_batch
from core.clock import SystemClock
from core.controller import PlacementConfig, PlacementWorker
from core.model import PlacementRequest, SchedulerWeights
from core.placement import Decision, FleetSnapshot, Scheduler
from core.settings import Settings
from db import repo
from db.engine import database_url, redacted
from db.placement_store import SqlPlacementStore

WORKER = f"console@{socket.gethostname()}"
RETRY_AFTER_SECONDS = 30.0


def now() -> datetime:
    return datetime.now(UTC)


def current_actor() -> str:
    """Who acts. Logins and roles arrive with the auth work; until then, one local operator."""
    return "local-operator"


@st.cache_resource(show_spinner=False)
def settings() -> Settings:
    return load_settings()


def _close(rt: Runtime) -> None:
    rt.close()


@st.cache_resource(show_spinner="Starting the fleet and its history…", on_release=_close)
def runtime() -> Runtime:
    return build_runtime(settings(), database_url())


def store_display_url() -> str:
    return redacted(runtime().url)


def fleet_source() -> str:
    rt = runtime()
    if rt.twin is not None:
        return f"embedded digital twin ({rt.twin.gpu_count} GPUs)"
    return "Kubernetes cluster"


def monitor_state() -> MonitorState:
    return runtime().monitor.state


def scheduler() -> Scheduler:
    """A scheduler with the store's active weight version."""
    with runtime().factory() as s:
        active = repo.active_weights(s)
    return _scheduler(active.version if active else None,
                      tuple(active.weights.as_dict().items()) if active else ())


@st.cache_resource(show_spinner=False, max_entries=8)
def _scheduler(version: int | None, weights: tuple[tuple[str, float], ...]) -> Scheduler:
    return Scheduler.from_settings(
        settings(), weights=SchedulerWeights(**dict(weights)) if weights else None,
        weight_version=version)


def fleet_snapshot() -> FleetSnapshot:
    """The fleet as it stands now, read through the cluster port."""
    s = settings()
    return FleetSnapshot(runtime().cluster.nodes(), s.catalog,
                         max_clients=s.placement.max_mps_clients_per_gpu)


def parse_request(raw: Mapping[str, Any]) -> PlacementRequest:
    """Validate operator input; raises ``ValidationError`` naming the field."""
    return PlacementRequest.parse(raw, max_gpu_memory_gb=settings().catalog.max_memory_gb)


def parse_upload(text: str, *, kind: str) -> list[PlacementRequest]:
    return parse_batch(text, kind=kind, max_gpu_memory_gb=settings().catalog.max_memory_gb)


def what_if(request: PlacementRequest) -> Decision:
    """Decide on a fresh snapshot of the fleet: nothing is reserved or changed."""
    return scheduler().decide(request, fleet_snapshot())


def submit(requests: Sequence[PlacementRequest], *, source: str, reason: str) -> list[str]:
    """Enqueue requests and audit it, in one transaction: all of them or none."""
    at = now()
    with runtime().factory.begin() as s:
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
    """One placement pass of the controller's placement step, run from the console.

    Does not wait for pods to reach Running (the background controller does);
    a pod the cluster accepted counts as bound.
    """
    rt = runtime()
    s = settings()
    worker = PlacementWorker(
        store=SqlPlacementStore(rt.factory), cluster=rt.cluster, clock=SystemClock(),
        scheduler=scheduler, catalog=s.catalog,
        max_clients=s.placement.max_mps_clients_per_gpu, worker=WORKER,
        config=PlacementConfig(claim_batch=limit, bind_timeout_s=0,
                               retry_after_s=RETRY_AFTER_SECONDS))
    outcomes = worker.run_once()
    return PassResult([o.request_id for o in outcomes if o.status == "bound"],
                      [o.request_id for o in outcomes if o.status == "queued"],
                      [o.request_id for o in outcomes if o.status == "failed"])


def queue_frame(limit: int = 200) -> tuple[dict[str, int], pd.DataFrame]:
    """Counts per state and the newest requests, as a table."""
    with runtime().factory() as s:
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
    with runtime().factory() as s:
        return repo.decision_history(s, limit=limit)


def fleet_series(metric: str, *, hours: float, key: str = "fleet") -> pd.DataFrame:
    """One stored series as (time, value) over the last ``hours``."""
    until = now()
    since = until - timedelta(hours=hours)
    with runtime().factory() as s:
        points = repo.series(s, metric=metric, key=key, since=since.timestamp(),
                             until=until.timestamp())
    frame = pd.DataFrame(points, columns=["ts", "value"])
    frame["time"] = pd.to_datetime(frame["ts"], unit="s", utc=True)
    return frame


def set_schedulable(node: str, schedulable: bool, *, reason: str) -> None:
    """Cordon or uncordon a node, and audit it."""
    rt = runtime()
    rt.cluster.set_schedulable(node, schedulable)
    with rt.factory.begin() as s:
        repo.record_audit(s, actor=current_actor(),
                          action="uncordon" if schedulable else "cordon",
                          object_type="node", object_id=node, reason=reason, now=now())

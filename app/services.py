"""Process-wide services for the console, created once and cached by Streamlit.

Pages read and act through these functions; they never open sessions or build
domain objects themselves. The runtime (store migrated to head, the fleet, the
metrics source and the monitor thread) is created once per process.

A dependency that does not answer surfaces here as one typed error,
``StoreUnavailable`` or ``ClusterUnavailable`` (both ``Unavailable``, a
``TransientError``), whose message says what failed and whose ``advice`` says
what to do; pages show it (``app.widgets.problems``) instead of a traceback.
Every outcome is remembered per dependency (``health``), so every page can say
which dependency is down, even one that did not call it. URLs are shown through
``core.redact`` only: never with credentials.
"""

from __future__ import annotations

import os
import platform
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import pandas as pd
import streamlit as st
from sqlalchemy import text as sql
from sqlalchemy.exc import SQLAlchemyError
from streamlit.runtime.scriptrunner import get_script_run_ctx

from app import actions, faults, history, history_reads, prestart
from app.actions import action, audit_details
from app.bootstrap import MonitorState, Runtime, build_runtime
from core.adapters.prometheus_history import HISTORY_QUERIES
from core.adapters.settings_source import load_settings
from core.auth import Actor, Role
from core.batch import parse_batch
from core.clock import SystemClock
from core.controller import LEASE_NAME, PlacementConfig, PlacementWorker
from core.cost import (
    FleetCost,
    fleet_cost,
)
from core.errors import TransientError, ValidationError
from core.feedback import LAST_RUN_FLAG
from core.model import Node, PlacementRequest, SchedulerWeights
from core.monitor import LiveReading, live_reading
from core.placement import Decision, FleetSnapshot, Scheduler
from core.redact import redact_url
from core.scheduling import build_scheduler
from core.settings import Settings
from core.telemetry import FleetTelemetry
from db import audit, decisions, flags, leases, queue, versions
from db import weights as weight_store
from db.engine import database_url
from db.stores import SqlPlacementStore

T = TypeVar("T")

WORKER = f"console@{platform.node()}/{os.getpid()}"
RETRY_AFTER_SECONDS = faults.RETRY_AFTER_S


def now() -> datetime:
    return datetime.now(UTC)




@st.cache_resource(show_spinner=False)
def settings() -> Settings:
    return load_settings()


def _close(rt: Runtime) -> None:
    rt.close()


@st.cache_resource(show_spinner="Starting the fleet and its history…", on_release=_close)
def _runtime() -> Runtime:
    # The one `python -m app.serve` started with the process (history already streaming
    # in), or, without it (AppTest, `streamlit run`), one built now.
    rt = prestart.take() or build_runtime(settings())
    # Streamlit compiles its emoji pattern on the first alert with a body (0.7 s): here,
    # with the start-up, rather than in the first page that shows one.
    import streamlit.emojis  # noqa: F401
    return rt


def runtime() -> Runtime:
    """This process's runtime, built on first use; ``StoreUnavailable`` when the store
    does not answer at start-up (nothing is cached then: the next page load retries)."""
    try:
        return _runtime()
    except SQLAlchemyError as exc:
        raise faults.store_unavailable(exc, store_url=store_display_url()) from exc


actions.refusal_session = lambda: runtime().factory.begin()


def store_display_url() -> str:
    """The store's URL without credentials (known before the runtime is built)."""
    return redact_url(database_url(settings().runtime.database_url))


# ---- dependencies that do not answer
Unavailable = faults.Unavailable
StoreUnavailable = faults.StoreUnavailable
ClusterUnavailable = faults.ClusterUnavailable
HEALTH_TTL_S = 10.0  # a dependency no call has reached for this long is probed again
_books: dict[int, tuple[weakref.ref[Runtime], faults.HealthBook]] = {}
_books_lock = threading.Lock()


def _book() -> faults.HealthBook:
    """The health book of this process's runtime (a new runtime starts a new book)."""
    rt = runtime()
    with _books_lock:
        held = _books.get(id(rt))
        if held is None or held[0]() is not rt:
            for key in [k for k, (ref, _) in _books.items() if ref() is None]:
                del _books[key]
            held = _books[id(rt)] = (weakref.ref(rt), faults.HealthBook())
        return held[1]


def store_call() -> AbstractContextManager[None]:
    """Around every store call of a service: a store error becomes ``StoreUnavailable``
    (with the store's address, no credentials) and the health book learns of it."""
    return faults.store_errors(store_url=store_display_url(), book=_book())


def cluster_call() -> AbstractContextManager[None]:
    """Around every cluster call of a service, as ``store_call`` is for the store."""
    return faults.cluster_errors(source=fleet_source(), book=_book())


def _check_store() -> None:
    with store_call(), runtime().factory() as s:
        s.execute(sql("SELECT 1 FROM alembic_version"))


@dataclass(frozen=True)
class Health:
    """What is known to be down now, per dependency (``None``: it answers)."""

    store: str | None
    cluster: str | None
    metrics: LiveReading


def health() -> Health:
    """The store and the cluster (probed when no call reached them for ``HEALTH_TTL_S``)
    and the metrics (the monitor's latest reading)."""
    book = _book()
    return Health(store=book.probe(faults.STORE, _check_store, ttl_s=HEALTH_TTL_S),
                  cluster=book.probe(faults.CLUSTER, _probe_cluster, ttl_s=HEALTH_TTL_S),
                  metrics=live_reading_now())


def _probe_cluster() -> None:
    # The embedded twin cannot go down: its probe shares the pages' read (a 5,000-GPU
    # twin read catches the simulation up); a cluster's probe asks the API server.
    if runtime().twin is not None:
        nodes_this_run()
    else:
        fleet_nodes()


def fleet_source() -> str:
    rt = runtime()
    if rt.twin is not None:
        return f"embedded digital twin ({rt.twin.gpu_count} GPUs)"
    return "Kubernetes cluster"


def monitor_state() -> MonitorState:
    return runtime().monitor.state


def metrics_advice() -> str:
    """What to do while the live figures are unknown, for this metrics source."""
    url = settings().runtime.prometheus_url
    if url:
        return (f"Check that Prometheus ({redact_url(url)}, `PROMETHEUS_URL`) answers and "
                "scrapes dcgm-exporter and vLLM (its /targets page). Update gates stay "
                "closed until fresh data arrives.")
    if runtime().twin is not None:
        return ("The embedded twin's metrics are down (a simulated outage) or its monitor "
                "stopped; figures return with the next sample. Update gates stay closed "
                "meanwhile.")
    return ("Set `PROMETHEUS_URL` to the Prometheus that scrapes the fleet's dcgm-exporter "
            "and vLLM, then restart the console. Update gates stay closed meanwhile.")


STORE_ADVICE = faults.STORE_ADVICE
CLUSTER_ADVICE = faults.CLUSTER_ADVICE


def layout() -> tuple[Node, ...] | None:
    """The cluster's layout now; ``None`` (unknown) when it does not answer."""
    return runtime().monitor.layout()


def live_reading_now(nodes: Sequence[Node] | None = None) -> LiveReading:
    """The monitor's latest reading, or why it is unknown (``core.monitor.live_reading``):
    a failed sample, no data, a sample older than 3 monitor intervals, or, given the
    cluster's ``nodes``, series the layout says must exist but do not."""
    state = monitor_state()
    return live_reading(latest=state.latest, error=state.error,
                        last_sample_at=state.last_sample_at, now=time.time(),
                        max_age_s=3 * runtime().monitor.interval_s, layout=nodes)


def live_cost(telemetry: FleetTelemetry, nodes: Sequence[Node] | None = None
              ) -> FleetCost | None:
    """The fleet's cost rate at ``telemetry``'s instant: ``core.cost``'s one formula over
    the cluster's layout (``nodes``, read now when not given), the same for every
    metrics source. ``None`` (unknown, never 0) when the layout cannot be read."""
    nodes = layout() if nodes is None else nodes
    if nodes is None:
        return None
    # Exact, and computed once per reading and layout: a 5,000-GPU fleet's cost is
    # ~0.1 s, and the Overview reruns every 5 s while the reading changes every 30 s.
    key = (id(telemetry), telemetry.timestamp, _cost_signature(nodes))
    held = _live_costs.get(key)
    if held is not None and held[0] is telemetry:
        return held[1]
    cost = fleet_cost(telemetry, nodes, settings().catalog)
    _live_costs.clear()  # one entry: the latest reading's
    _live_costs[key] = (telemetry, cost)
    return cost


_live_costs: dict[tuple[int, float, int], tuple[FleetTelemetry, FleetCost]] = {}


def _cost_signature(nodes: Sequence[Node]) -> int:
    """What ``fleet_cost`` reads of a layout, hashed: each GPU's place, type and slices."""
    return per_read("cost", nodes, lambda ns: hash(tuple(
        (n.name, tuple((g.index, g.gpu_type, g.slices) for g in n.gpus)) for n in ns)))


_per_read: dict[str, tuple[Sequence[Node], Any]] = {}


def per_read(name: str, nodes: Sequence[Node], compute: Callable[[Sequence[Node]], T]) -> T:
    """``compute(nodes)``, kept while ``nodes`` is the same read (the same tuple: a read is
    immutable), under ``name``. A 5,000-GPU layout's signature takes ~50 ms, and the
    twin's read is shared by every page run for ``NODES_READ_MAX_AGE_S``."""
    last = _per_read.get(name)
    if last is not None and last[0] is nodes:
        return cast(T, last[1])
    value = compute(nodes)
    if isinstance(nodes, tuple):  # a list could change under the kept value
        _per_read[name] = (nodes, value)
    return value


def scheduler() -> Scheduler:
    """A scheduler with the store's active weight version."""
    with store_call(), runtime().factory() as s:
        active = versions.active_weights(s)
    return _scheduler(active.version if active else None,
                      tuple(active.weights.as_dict().items()) if active else ())


@st.cache_resource(show_spinner=False, max_entries=8)
def _scheduler(version: int | None, weights: tuple[tuple[str, float], ...]) -> Scheduler:
    return build_scheduler(
        settings(), weights=SchedulerWeights(**dict(weights)) if weights else None,
        weight_version=version)


def fleet_nodes() -> tuple[Node, ...]:
    """Every node as the cluster reports it now; ``ClusterUnavailable`` when it does not."""
    with cluster_call():
        return tuple(runtime().cluster.nodes())


NODES_READ_MAX_AGE_S = 5.0  # the live panels rerun every 5 s
NODES_READ_KEY = "services._nodes_read"  # a page run's read: (monotonic s, nodes)
_twin_read: dict[int, tuple[float, tuple[Node, ...]]] = {}  # runtime id → (monotonic s, nodes)


def nodes_this_run() -> tuple[Node, ...]:
    """``fleet_nodes``, read once for the panels of a page run: a 5,000-GPU fleet is read
    once, not once per panel. A cluster's read is this run's (``new_page_run`` at the
    page's top: every whole run asks it again, so an API server that went down shows at
    once). The embedded twin's (in-process, it cannot go down; a read catches its
    simulation up to now) is shared by every run for ``NODES_READ_MAX_AGE_S``. A read
    that fails is never kept: ``ClusterUnavailable`` as ``fleet_nodes`` raises it.
    ``forget_nodes_read`` after an action that changes the cluster."""
    rt = runtime()
    at = time.monotonic()
    if rt.twin is not None:
        last = _twin_read.get(id(rt))
        if last is None or at - last[0] >= NODES_READ_MAX_AGE_S:
            last = (at, fleet_nodes())
            _twin_read.clear()  # one runtime per process: only its latest read is kept
            _twin_read[id(rt)] = last
        return last[1]
    if get_script_run_ctx(suppress_warning=True) is None:
        return fleet_nodes()
    last = st.session_state.get(NODES_READ_KEY)
    if last is None or at - last[0] >= NODES_READ_MAX_AGE_S:
        last = (at, fleet_nodes())
        st.session_state[NODES_READ_KEY] = last
    return last[1]


def new_page_run() -> None:
    """At a page's top: this run reads the cluster again (the twin's short reuse stays)."""
    if get_script_run_ctx(suppress_warning=True) is not None:
        st.session_state.pop(NODES_READ_KEY, None)


def forget_nodes_read() -> None:
    """The next ``nodes_this_run`` asks the cluster (or the twin) again."""
    _twin_read.clear()
    new_page_run()


def fleet_snapshot() -> FleetSnapshot:
    """The fleet as it stands now, read through the cluster port."""
    s = settings()
    return FleetSnapshot(fleet_nodes(), s.catalog,
                         max_clients=s.placement.max_mps_clients_per_gpu)


def parse_request(raw: Mapping[str, Any]) -> PlacementRequest:
    """Validate operator input; raises ``ValidationError`` naming the field."""
    return PlacementRequest.parse(raw, max_gpu_memory_gb=settings().catalog.max_memory_gb)


def parse_upload(data: bytes | str, *, kind: str) -> list[PlacementRequest]:
    """Validate an uploaded batch (the file's bytes) within the ``[uploads]`` limits."""
    s = settings()
    return parse_batch(data, kind=kind, max_gpu_memory_gb=s.catalog.max_memory_gb,
                       limits=s.uploads)


def what_if(request: PlacementRequest) -> Decision:
    """Decide on a fresh snapshot of the fleet: nothing is reserved or changed."""
    return scheduler().decide(request, fleet_snapshot())


@action("submit-requests", role=Role.OPERATOR, object_type="placement_request")
def submit(actor: Actor, requests: Sequence[PlacementRequest], *, source: str, reason: str,
           shown: Mapping[str, Any] | None = None) -> list[str]:
    """Enqueue requests and audit it, in one transaction: all of them or none."""
    at = now()
    with store_call(), runtime().factory.begin() as s:
        queued = queue.enqueue_many(s, requests, now=at, source=source)
        ids = [q.request_id for q in queued]
        audit.record_audit(s, actor=actor.name, action="submit-requests",
                          object_type="placement_request", object_id=",".join(ids)[:128],
                          reason=reason, now=at,
                          details=audit_details(actor, shown=shown, count=len(ids),
                                                source=source, request_ids=ids))
    return ids


@dataclass(frozen=True)
class PassResult:
    placed: list[str]
    requeued: list[str]
    failed: list[str]
    # Set when a running controller leads: it places the queue, so this console did not.
    delegated_to: str | None = None


@action("place-queued", role=Role.OPERATOR, object_type="placement_queue")
def place_queued(actor: Actor, limit: int = 50, *, reason: str = "") -> PassResult:
    """One placement pass of the controller's placement step, run from the console when
    no controller leads (when one does, the pass is left to it: ``delegated_to``).

    Does not wait for pods to reach Running (the background controller does);
    a pod the cluster accepted counts as bound. Asks the cluster first, so that a
    cluster that does not answer (``ClusterUnavailable``) leaves every request queued,
    unclaimed and with its attempts untouched.
    """
    rt = runtime()
    s = settings()
    with store_call(), rt.factory() as session:
        lease = leases.current_lease(session, name=LEASE_NAME, now=now())
    if lease is not None:
        # A controller leads and places the queue every iteration: leave it to it rather
        # than race it (the store would keep the two from over-committing, but the
        # leader also waits until pods run, which this button does not).
        return PassResult([], [], [], delegated_to=lease.holder)
    fleet_nodes()  # before claiming: a claim would hold requests for the claim lease
    worker = PlacementWorker(
        store=SqlPlacementStore(rt.factory), cluster=rt.cluster, clock=SystemClock(),
        scheduler=scheduler, catalog=s.catalog,
        max_clients=s.placement.max_mps_clients_per_gpu, worker=WORKER,
        config=PlacementConfig(claim_batch=limit, bind_timeout_s=0,
                               retry_after_s=RETRY_AFTER_SECONDS))
    with store_call(), cluster_call():
        outcomes = worker.run_once()
    with store_call(), rt.factory.begin() as session:
        audit.record_audit(session, actor=actor.name, action="place-queued",
                           object_type="placement_queue", object_id="pass", reason=reason,
                           now=now(), details=audit_details(
                               actor, placed=[o.request_id for o in outcomes
                                              if o.status == "bound"],
                               claimed=len(outcomes)))
    return PassResult([o.request_id for o in outcomes if o.status == "bound"],
                      [o.request_id for o in outcomes if o.status == "queued"],
                      [o.request_id for o in outcomes if o.status == "failed"])


def queue_frame(limit: int = 200) -> tuple[dict[str, int], pd.DataFrame]:
    """Counts per state and the newest requests, as a table."""
    with store_call(), runtime().factory() as s:
        counts = queue.queue_counts(s)
        rows = queue.list_requests(s, limit=limit)
    frame = pd.DataFrame([{
        "request": q.request_id, "model": q.request.model_name,
        "memory GB": q.request.model_memory_gb, "priority": q.request.priority.value,
        "SLA ms": q.request.latency_sla_ms, "status": q.status, "attempts": q.attempts,
        "source": q.source, "reason": q.reason or "", "updated": q.updated_at,
    } for q in rows])
    return counts, frame


def decision_history(limit: int = 100) -> list[decisions.DecisionRecord]:
    with store_call(), runtime().factory() as s:
        return decisions.decision_history(s, limit=limit)


def fleet_series(metric: str, *, hours: float, key: str = "fleet") -> pd.DataFrame:
    """One series as (time, value) over the last ``hours``, at most ``chart_max_points``:
    from Prometheus' range queries when it is configured and holds the fleet series,
    else the store's roll-up tier that fits the range. Cached (``app.history_reads``)
    until the range's refresh interval moves its end on, or the backfill writes more."""
    rt = runtime()
    refresh = history.refresh_s(hours * 3600)
    until = (time.time() // refresh + 1) * refresh  # the end of this refresh interval
    retention = settings().retention
    # Only the Prometheus adapter has range queries (the twin's history is the store's).
    if key == "fleet" and metric in HISTORY_QUERIES and hasattr(rt.metrics, "range_series"):
        try:
            return history_reads.prometheus_series(
                rt.metrics, rt.metrics_source, metric, hours=hours, until=until,
                max_points=retention.chart_max_points)
        except TransientError as exc:
            raise Unavailable(str(exc), advice=metrics_advice()) from exc
    down = _book().probe(faults.STORE, _check_store, ttl_s=HEALTH_TTL_S)
    if down is not None:  # no cached chart of a store known to be down
        raise StoreUnavailable(down, advice=faults.STORE_ADVICE)
    backfill = None if rt.backfill is None else rt.backfill.progress()
    written = -1 if backfill is None or backfill.finished else backfill.samples
    with store_call():
        return history_reads.store_series(rt.factory, rt.url, metric, key, hours=hours,
                                          until=until, retention=retention, written=written)


@action("cordon-or-uncordon", role=Role.OPERATOR, object_type="node", object_arg="node")
def set_schedulable(actor: Actor, node: str, schedulable: bool, *, reason: str,
                    shown: Mapping[str, Any] | None = None) -> None:
    """Cordon or uncordon a node, and audit it. The store is asked first, so that a store
    that does not answer changes nothing in the cluster."""
    rt = runtime()
    _check_store()
    with cluster_call():
        rt.cluster.set_schedulable(node, schedulable)
    forget_nodes_read()
    done = "uncordoned" if schedulable else "cordoned"
    try:
        with store_call(), rt.factory.begin() as s:
            audit.record_audit(s, actor=actor.name,
                              action="uncordon" if schedulable else "cordon",
                              object_type="node", object_id=node, reason=reason, now=now(),
                              details=audit_details(actor, shown=shown))
    except StoreUnavailable as exc:
        raise StoreUnavailable(f"{node} was {done}, but its audit entry was not saved: {exc}",
                               advice=exc.advice) from exc


def twin_models() -> list[str]:
    """Models with replicas on the embedded twin (empty for a real cluster)."""
    twin = runtime().twin
    if twin is None:
        return []
    return sorted({p.model for p in twin.replica_pods()})


@action("simulate-traffic-surge", role=Role.OPERATOR, object_type="deployment",
        object_arg="model")
def surge_traffic(actor: Actor, model: str, *, factor: float, minutes: float,
                  reason: str = "") -> str:
    """Embedded mode only: multiply one model's traffic for a while (audited)."""
    from core.sim.faults import traffic_surge

    twin = runtime().twin
    if twin is None:
        raise ValidationError("cluster", "traffic can only be simulated on the embedded twin")
    if not (0 < minutes <= 240):
        raise ValidationError("minutes", "must be within (0, 240]")
    fault_id = twin.inject(traffic_surge(model, factor=factor, duration_s=minutes * 60))
    forget_nodes_read()
    with store_call(), runtime().factory.begin() as s:
        audit.record_audit(s, actor=actor.name, action="simulate-traffic-surge",
                          object_type="deployment", object_id=model,
                          reason=reason or f"×{factor:g} for {minutes:g} min", now=now(),
                          details=audit_details(actor, fault=fault_id, factor=factor,
                                                minutes=minutes))
    return fault_id


# ---- scheduler weights
WeightConflict = weight_store.WeightConflict
ROLLBACK_TARGETS = weight_store.ROLLBACK_TARGETS


def weight_versions() -> list[versions.WeightVersion]:
    """Every weight version, newest first, with its evidence."""
    with store_call(), runtime().factory() as s:
        return versions.list_weight_versions(s)


@action("decide-weights", role=Role.APPROVER, object_type="weight_version",
        object_arg="version")
def decide_weights(actor: Actor, version: int, *, approve: bool, reason: str,
                   shown: Mapping[str, Any] | None = None) -> versions.WeightVersion:
    """Approve or reject a proposed version; the audit entry lands in the same transaction.

    Raises ``ValidationError`` (no reason), ``KeyError`` (no such version) or
    ``weight_store.WeightConflict`` (it is no longer proposed).
    """
    at = now()
    details = audit_details(actor, shown=shown)
    with store_call(), runtime().factory.begin() as s:
        if approve:
            return weight_store.approve(s, version=version, actor=actor.name, reason=reason,
                                        now=at, details=details)
        return weight_store.reject(s, version=version, actor=actor.name, reason=reason,
                                   now=at, details=details)


@action("roll-back-weights", role=Role.APPROVER, object_type="weight_version",
        object_arg="to_version")
def roll_back_weights(actor: Actor, to_version: int, *, reason: str,
                      shown: Mapping[str, Any] | None = None) -> versions.WeightVersion:
    """Make an earlier version active again, audited in the same transaction."""
    with store_call(), runtime().factory.begin() as s:
        return weight_store.roll_back(s, to_version=to_version, actor=actor.name,
                                      reason=reason, now=now(),
                                      details=audit_details(actor, shown=shown))


def last_feedback_run() -> flags.Flag | None:
    """The controller's latest feedback run: its proposal, or why it made none."""
    with store_call(), runtime().factory() as s:
        return flags.get_flag(s, LAST_RUN_FLAG)

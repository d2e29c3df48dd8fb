"""A small world for rollout fault runs: the twin, a real store, placement and the engine.

Used by ``tests/db/test_rollout_engine.py`` and ``bench/rollout_faults.py``: a fleet of
single-GPU A100 nodes on ``mps-4``, model-server replicas placed through the real
queue and placement worker, and a ``RolloutEngine`` that can be "killed" (thrown
away with everything it held in memory, and a new one built over the same store and
twin) at any step boundary: just after a step was written RUNNING, or just after it
acted and before its result was written.

``settle`` runs the loop (placement, then rollout) on the manual clock until the
plan rests; ``check`` states what must hold afterwards: no node cordoned, each node
on the config the plan chose (its target when it succeeded, its original otherwise),
every request bound or retired (none failed or stuck), each deployment back to its
replica count, and every bound request with a running pod.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.clock import ManualClock
from core.controller import PlacementConfig, PlacementWorker
from core.controller.rollout import RolloutConfig, RolloutEngine
from core.controller.rollout_actions import Ports
from core.controller.rollout_gates import DependencyGates
from core.manifest import HOSTNAME_LABEL
from core.model import Gpu, Node, PlacementRequest, Priority
from core.mps.device_plugin import NODE_LABEL
from core.ports import ActiveRollout
from core.rollout.analysis import Thresholds
from core.rollout.plan import NodeChange, RolloutPlan, Strategy, Timeouts
from core.scheduling import build_scheduler
from core.settings import Settings
from core.sim import Twin, TwinConfig
from core.sim.health import TwinHealth
from core.sim.traffic import ArrivalSource, constant_traffic
from core.states import RequestState, RolloutState
from db import queue, rollouts, versions
from db.rollouts import SqlRolloutStore
from db.stores import SqlPlacementStore

T0 = 1_800_000_000.0
START_CONFIG = "mps-4"
TARGET_CONFIG = "mps-2"
# (model, GB, priority, replicas): tiny (25 % of SM threads) and medium (50 %) servers.
MODELS: tuple[tuple[str, float, Priority, int], ...] = (
    ("mistral-7b", 8.0, Priority.HIGH, 2),
    ("granite-3b", 3.0, Priority.MEDIUM, 2),
    ("phi-2", 2.5, Priority.CRITICAL, 2),
    ("qwen-7b", 7.5, Priority.MEDIUM, 1),
)
RESTING = (RolloutState.SUCCEEDED, RolloutState.ROLLED_BACK, RolloutState.FAILED,
           RolloutState.PAUSED, RolloutState.AWAITING_PROMOTION, RolloutState.ABORTED)


class Killed(Exception):
    """The controller died here (raised by ``KillingStore``)."""


class KillingStore:
    """The rollout store, except that step boundaries kill the caller: the ``kill_at``-th
    boundary met (counting from 0), or with ``kill_every`` the first time each boundary of
    each step is met. A step's boundaries are just after its RUNNING record and just
    before its result record (the action ran; its result is lost)."""

    def __init__(self, inner: SqlRolloutStore, kill_at: int | None, *,
                 kill_every: bool = False) -> None:
        self.inner = inner
        self.kill_at = kill_at
        self.kill_every = kill_every
        self.boundaries = 0
        self._seen: set[tuple[str, int, int]] = set()

    def _boundary(self, kind: str, plan_id: int, seq: int) -> bool:
        index, self.boundaries = self.boundaries, self.boundaries + 1
        if self.kill_every:
            key = (kind, plan_id, seq)
            if key in self._seen:
                return False
            self._seen.add(key)
            return True
        return index == self.kill_at

    def step_started(self, **kw: Any) -> None:
        self.inner.step_started(**kw)
        if self._boundary("started", kw["plan_id"], kw["seq"]):
            raise Killed("after the RUNNING record")

    def step_finished(self, **kw: Any) -> None:
        if self._boundary("finished", kw["plan_id"], kw["seq"]):
            raise Killed("before the result record")
        self.inner.step_finished(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def nodes_of(count: int, settings: Settings) -> tuple[Node, ...]:
    memory = settings.catalog["A100"].memory_mib
    return tuple(
        Node(name=f"a100-{i}", gpus=(Gpu(index=0, gpu_type="A100", memory_total_mib=memory,
                                         uuid=f"GPU-a100-{i}-0"),),
             labels={HOSTNAME_LABEL: f"a100-{i}", "nvidia.com/gpu.product": "A100",
                     NODE_LABEL: START_CONFIG},
             device_plugin_config=START_CONFIG, gpu_replicas=4)
        for i in range(count))


@dataclass
class World:
    settings: Settings
    factory: sessionmaker[Session]
    clock: ManualClock
    twin: Twin
    worker: PlacementWorker
    kill_at: int | None = None
    kill_every: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)
    config: RolloutConfig = field(default_factory=lambda: RolloutConfig(
        interval_s=5.0, rollback_retry_s=30.0))
    kills: int = 0
    store: KillingStore = field(init=False)
    engine: RolloutEngine = field(init=False)

    def __post_init__(self) -> None:
        self.store = KillingStore(SqlRolloutStore(self.factory), self.kill_at,
                                  kill_every=self.kill_every)
        self.engine = self.new_engine()

    def new_engine(self) -> RolloutEngine:
        """A freshly started controller's engine: nothing from the last one survives."""
        ports = Ports(store=self.store, cluster=self.twin, nodes=self.twin,  # type: ignore[arg-type]
                      placement=SqlPlacementStore(self.factory), health=TwinHealth(self.twin),
                      thresholds=self.thresholds)
        gates = DependencyGates(metrics=self.twin, cluster=self.twin)
        return RolloutEngine(ports=ports, gates=gates, clock=self.clock, config=self.config)

    @property
    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now(), UTC)

    def tick(self, dt: float = 5.0) -> None:
        self.clock.advance(dt)
        self.worker.run_once()
        try:
            self.engine.run_once()
        except Killed:
            self.kills += 1
            self.engine = self.new_engine()

    def create(self, plan: RolloutPlan, *, approve: bool = True) -> int:
        with self.factory.begin() as s:
            pid = rollouts.create_plan(s, plan=plan, actor="planner", reason="test plan",
                                       now=self.now, gate_report_json={}, shown={})
            if approve:
                rollouts.apply_event(s, plan_id=pid, event="approve", actor="alice",
                                     reason="looks right", now=self.now, shown={"gates": "ok"})
        return pid

    def state(self, pid: int) -> RolloutState:
        return RolloutState(self.store.inner.rollout(pid).state)

    def rollout(self, pid: int) -> ActiveRollout:
        return self.store.inner.rollout(pid)

    def settle(self, pid: int, *, max_ticks: int = 3000,
               until: Sequence[RolloutState] = RESTING,
               on_tick: Callable[[World], None] | None = None) -> RolloutState:
        for _ in range(max_ticks):
            self.tick()
            if on_tick is not None:
                on_tick(self)
            if self.state(pid) in until and not self.in_flight():
                return self.state(pid)
        return self.state(pid)

    def in_flight(self) -> int:
        with self.factory() as s:
            counts = queue.queue_counts(s)
        return sum(counts.get(st, 0) for st in (RequestState.QUEUED, RequestState.CLAIMED,
                                                  RequestState.PLACING))

    def requests(self) -> dict[str, str]:
        with self.factory() as s:
            return {q.request_id: q.status for q in queue.list_requests(s, limit=10_000)}

    def replicas_by_model(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.twin.pods():
            if p.phase == "Running":
                counts[p.model] = counts.get(p.model, 0) + 1
        return counts

    def check(self, plan: RolloutPlan, pid: int, *, expect_replicas: Mapping[str, int]
              ) -> list[str]:
        """What is wrong after the plan rested (empty when nothing is)."""
        problems = []
        state = self.state(pid)
        if state not in (RolloutState.SUCCEEDED, RolloutState.ROLLED_BACK):
            problems.append(f"plan rests {state.value}")
        changed = {c.node: c for c in plan.changes}
        for n in self.twin.nodes():
            if not n.schedulable:
                problems.append(f"{n.name} left cordoned")
            c = changed.get(n.name)
            want = START_CONFIG if c is None or state != RolloutState.SUCCEEDED \
                else c.to_config
            if n.device_plugin_config != want or self.twin.device_plugin_config(n.name) != want:
                problems.append(f"{n.name} runs {n.device_plugin_config} (selected "
                                f"{self.twin.device_plugin_config(n.name)}), expected {want}")
        stuck = {r: s for r, s in self.requests().items()
                 if s not in (RequestState.BOUND, RequestState.REMOVED)}
        if stuck:
            problems.append(f"requests not bound: {stuck}")
        running = {p.owner for p in self.twin.pods() if p.phase == "Running"}
        lost = [r for r, s in self.requests().items()
                if s == RequestState.BOUND and r not in running]
        if lost:
            problems.append(f"bound without a running pod: {lost}")
        have = self.replicas_by_model()
        for model, want_n in expect_replicas.items():
            if have.get(model, 0) < want_n:
                problems.append(f"{model}: {have.get(model, 0)} running, expected {want_n}")
        return problems


def build_world(*, settings: Settings, factory: sessionmaker[Session], nodes: int = 6,
                seed: int = 0, traffic: ArrivalSource | None = None,
                kill_at: int | None = None, kill_every: bool = False,
                warmup_ticks: int = 40) -> World:
    """The fleet with every model's replicas placed and running, warmed up."""
    clock = ManualClock(T0)
    twin = Twin(settings, clock=clock, nodes=nodes_of(nodes, settings),
                traffic=traffic if traffic is not None else constant_traffic(20.0, seed=seed),
                config=TwinConfig(startup_delay_s=20.0, seed=seed))
    scheduler = build_scheduler(settings, weight_version=1)
    with factory.begin() as s:
        versions.ensure_initial_weights(s, scheduler.weights, now=datetime.fromtimestamp(T0, UTC))
        reqs = [PlacementRequest(model_name=m, model_memory_gb=gb, priority=prio,
                                 latency_sla_ms=1000.0, request_id=f"{m}-{i}")
                for m, gb, prio, n in MODELS for i in range(n)]
        queue.enqueue_many(s, reqs, now=datetime.fromtimestamp(T0, UTC), source="test")
    worker = PlacementWorker(store=SqlPlacementStore(factory), cluster=twin, clock=clock,
                             scheduler=lambda: scheduler, catalog=settings.catalog,
                             max_clients=48, worker="ctrl-1",
                             config=PlacementConfig(poll_s=5.0, bind_timeout_s=180.0))
    world = World(settings=settings, factory=factory, clock=clock, twin=twin, worker=worker,
                  kill_at=kill_at, kill_every=kill_every)
    for _ in range(warmup_ticks):
        world.tick(10.0)
    return world


def expected_replicas() -> dict[str, int]:
    return {m: n for m, _, _, n in MODELS}


def occupied_nodes(world: World) -> list[str]:
    """Nodes that run replicas now, busiest first (ties by name)."""
    counts: dict[str, int] = {}
    for p in world.twin.pods():
        if p.phase == "Running":
            counts[p.node] = counts.get(p.node, 0) + 1
    return sorted(counts, key=lambda n: (-counts[n], n))


def make_plan(world: World, strategy: Strategy, *, nodes: Sequence[str],
              window_s: float = 600.0, auto_promote: bool = True,
              migrate: bool = True) -> RolloutPlan:
    changes = tuple(NodeChange(node=n, from_config=START_CONFIG, to_config=TARGET_CONFIG,
                               gpus=1) for n in nodes)
    return RolloutPlan(strategy=strategy, update_type="routine_optimization", changes=changes,
                       canary_nodes=(nodes[0],) if strategy is Strategy.CANARY else (),
                       auto_promote=auto_promote, migrate=migrate, analysis_window_s=window_s,
                       validation_window_s=min(window_s, 300.0),
                       timeouts=Timeouts(drain_s=600.0, restart_s=300.0, pods_s=900.0))

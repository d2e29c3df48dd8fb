"""The replay harness: the twin serving traffic, replicas that follow the load, each new
replica placed by the policy under test.

Why: a placement policy is judged by what it costs to serve real traffic at
its SLAs; this is the part of ``core.sim.evaluate`` that runs the fleet (the
books that measure it are ``core.sim.evaluate.results``).

How: the fleet starts empty; the starting replicas are placed by the policy
and bound one startup delay before ``start``; then every control interval the
caller advances the twin and ``act`` runs the autoscaler under evaluation:
``slo`` (``core.autoscale_policy.SloPolicy``, the controller's own), ``seed``
(``core.autoscale``'s queue rule, as the controller runs it) or ``target``
(the capacity-target rule, ``ScalingRule``: scale-up adds the neediest
deployment's replica one at a time, scale-down removes the least valuable
replica while what remains covers its target).

Invariants: every replica the harness binds passed the policy's filters and
the twin's own over-commit check, and was bound as the rendered Pod, exactly
as the controller's placement worker does; no wall clock (decisions are timed
only with an injected timer).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np

from core.autoscale import Action, Autoscaler, fleet_views, least_valuable
from core.autoscale_policy import DeploymentSpec, SloPolicy
from core.autoscale_slo import Addition, DeploymentNeed, FleetState, RequestShape
from core.clock import ManualClock
from core.manifest import render_pod
from core.model import Node
from core.placement.baselines import PlacementPolicy
from core.placement.snapshot import FleetSnapshot
from core.settings import Settings
from core.sim.evaluate.deployments import Deployment, ScalingRule, empty_fleet
from core.sim.perf_model import PerfModel
from core.sim.traffic import ArrivalSource
from core.sim.twin import Twin, TwinConfig
from core.telemetry import FleetTelemetry

AUTOSCALERS = ("slo", "seed", "target")


@dataclass(slots=True)
class Replica:
    deployment: int
    owner: str
    pod_name: str
    gpu: tuple[str, int]
    gpu_type: str
    share_pct: int
    created_at: float


class Harness:
    """One replay: the twin, the replicas the harness manages, and the scaling rule."""

    def __init__(self, settings: Settings, *, policy: PlacementPolicy, traffic: ArrivalSource,
                 deployments: Sequence[Deployment], nodes: Sequence[Node], start: float,
                 seed: int, rule: ScalingRule, perf: PerfModel,
                 twin_config: TwinConfig | None,
                 timer: Callable[[], float] | None,
                 initial_rps: Sequence[float] | None = None,
                 initial_tokens: tuple[float, float] | None = None,
                 autoscaler: str = "slo") -> None:
        if autoscaler not in AUTOSCALERS:
            raise ValueError(f"autoscaler must be one of {AUTOSCALERS}")
        self.autoscaler = autoscaler
        self.settings = settings
        self.catalog = settings.catalog
        self.policy = policy
        self.deps = tuple(deployments)
        self.rule = rule
        self.perf = perf
        self.timer = timer
        base = twin_config or TwinConfig()
        self.config = replace(base, seed=seed,
                              traffic_weights={d.name: d.traffic_weight for d in self.deps},
                              slo_targets={d.name: (d.slo.ttft_s, d.slo.tpot_s, d.slo.e2e_s)
                                           for d in self.deps})
        warmup = self.config.startup_delay_s + self.config.tick_s
        self.clock = ManualClock(start - warmup)
        fleet = empty_fleet(nodes, settings)
        self.twin = Twin(settings, clock=self.clock, nodes=fleet, traffic=traffic, perf=perf,
                         config=self.config)
        self.gpu_keys = [(n.name, g.index) for n in fleet for g in n.gpus]
        self.gpu_types = [g.gpu_type for n in fleet for g in n.gpus]
        self.gpu_row = {k: i for i, k in enumerate(self.gpu_keys)}
        self.classes = [settings.classes.classify(d.memory_gb) for d in self.deps]
        self.replicas: list[Replica] = []
        self.serial = 0
        self.decisions = 0
        self.failures = 0
        self.decide_s = 0.0
        # Mean request of each deployment (prompt, output tokens), learned from counters.
        ref = initial_tokens or (float(self.config.reference_prompt_tokens),
                                 float(self.config.reference_output_tokens))
        self.tokens = [ref for _ in self.deps]
        self.counter_history: list[deque[tuple[float, np.ndarray]]] = [deque() for _ in self.deps]
        self.wanted_history: list[deque[tuple[float, float]]] = [deque() for _ in self.deps]

        self.specs = {d.key: DeploymentSpec(
            key=d.key, memory_mib=int(np.ceil(d.memory_gb * 1024)),
            workload_class=c.workload_class, share_pct=c.share_pct,
            allowed_types=c.allowed_types, min_replicas=rule.min_replicas,
            max_replicas=rule.max_replicas, objectives=d.slo,
            tail_prompt_tokens=d.tail_prompt_tokens, tail_output_tokens=d.tail_output_tokens)
            for d, c in zip(self.deps, self.classes, strict=True)}
        self.dep_of = {d.key: i for i, d in enumerate(self.deps)}
        self.slo = SloPolicy(settings, perf)
        self.seed = Autoscaler(settings.autoscaling.policy)
        if autoscaler == "slo" and initial_rps is not None:
            self._slo_warm_start(initial_rps)
        else:
            snapshot = self._snapshot()
            for d in sorted(range(len(self.deps)), key=lambda i: -self.deps[i].memory_gb):
                for _ in range(rule.min_replicas):
                    self._add_replica(d, snapshot)
            if initial_rps is not None:
                self._scale_up([rps / rule.target_utilization for rps in initial_rps], snapshot)
        self.twin.step(warmup)

    # -- placement ---------------------------------------------------------------------
    def _snapshot(self) -> FleetSnapshot:
        """The fleet as placement sees it."""
        return FleetSnapshot(self.twin.nodes(), self.catalog,
                             max_clients=self.settings.placement.max_mps_clients_per_gpu)

    def _add_replica(self, d: int, snapshot: FleetSnapshot,
                     labels: Mapping[str, str] | None = None) -> bool:
        dep = self.deps[d]
        self.serial += 1
        request = dep.request(f"r{self.serial}")
        if labels:
            request = replace(request, labels=MappingProxyType(dict(labels)))
        t0 = self.timer() if self.timer else 0.0
        choice = self.policy.decide(request, snapshot)
        if self.timer:
            self.decide_s += self.timer() - t0
        self.decisions += 1
        if choice.row is None or choice.node is None or choice.gpu_index is None:
            self.failures += 1
            return False
        sl = choice.mps_slice()
        snapshot.reserve(choice.row, sl)
        pod = render_pod(request=request, node=choice.node, gpu_index=choice.gpu_index,
                         mps_slice=sl, workload_class=choice.workload_class,
                         weight_version=choice.weight_version,
                         gpu_memory_total_mib=int(snapshot.mem_total[choice.row]))
        self.twin.bind(pod)
        self.replicas.append(Replica(
            deployment=d, owner=sl.owner, pod_name=pod["metadata"]["name"],
            gpu=(choice.node, choice.gpu_index), gpu_type=snapshot.gpu_type_of(choice.row),
            share_pct=sl.thread_pct, created_at=self.clock.now()))
        return True

    def _remove_replica(self, replica: Replica) -> None:
        self.twin.delete_pod(self.deps[replica.deployment].namespace, replica.pod_name)
        self.replicas.remove(replica)

    # -- capacity ----------------------------------------------------------------------
    def clients(self) -> dict[tuple[str, int], int]:
        count: dict[tuple[str, int], int] = {}
        for r in self.replicas:
            count[r.gpu] = count.get(r.gpu, 0) + 1
        return count

    def _capacity(self, r: Replica, clients: Mapping[tuple[str, int], int]) -> float:
        prompt, output = self.tokens[r.deployment]
        return self.perf.max_throughput_rps(
            self.classes[r.deployment].workload_class, r.gpu_type, share=r.share_pct / 100.0,
            prompt_tokens=prompt, output_tokens=output, co_runners=clients[r.gpu] - 1)

    def _deployment_capacity(self, d: int, clients: Mapping[tuple[str, int], int]) -> float:
        return sum(self._capacity(r, clients) for r in self.replicas if r.deployment == d)

    # -- one control step --------------------------------------------------------------
    def observe(self, now: float, telemetry: FleetTelemetry) -> None:
        """Learn rates, request sizes and wanted capacity from the latest telemetry."""
        rule = self.rule
        by_name = {(t.namespace, t.model): t for t in telemetry.deployments}
        for d, dep in enumerate(self.deps):
            t = by_name.get((dep.namespace, dep.name))
            c = t.counters if t is not None else None
            values = np.zeros(4) if c is None else np.array(
                [c.requests_total, c.success_total, c.prompt_tokens_total,
                 c.generation_tokens_total], dtype=np.float64)
            history = self.counter_history[d]
            history.append((now, values))
            horizon = max(rule.rate_window_s, 300.0)
            while len(history) > 2 and history[1][0] <= now - horizon:
                history.popleft()
            # Arrival rate over the rate window.
            then, old = history[0]
            for when, vals in history:
                if when <= now - rule.rate_window_s:
                    then, old = when, vals
            rate = (values[0] - old[0]) / (now - then) if now > then else 0.0
            # Mean request size over the whole kept history (up to 5 min).
            first = history[0][1]
            ok = values[1] - first[1]
            if ok > 0:
                self.tokens[d] = ((values[2] - first[2]) / ok, (values[3] - first[3]) / ok)
            queue = float(t.queue_waiting) if t is not None else 0.0
            wanted = rate / rule.target_utilization + queue / rule.drain_s
            wanted_history = self.wanted_history[d]
            wanted_history.append((now, wanted))
            keep = max(rule.up_window_s, rule.down_window_s)
            while wanted_history and wanted_history[0][0] < now - keep - 1e-9:
                wanted_history.popleft()

    def _scale_up(self, targets: Sequence[float], snapshot: FleetSnapshot | None) -> set[int]:
        """Add replicas, neediest deployment (lowest capacity/target) first, one at a time,
        until every deployment's capacity covers its target or nothing more can be placed."""
        n = len(self.deps)
        blocked: set[int] = set()
        scaled_up: set[int] = set()
        while True:
            clients = self.clients()
            counts = [0] * n
            for r in self.replicas:
                counts[r.deployment] += 1
            short = []
            for d in range(n):
                if d in blocked or counts[d] >= self.rule.max_replicas or targets[d] <= 0:
                    continue
                ratio = self._deployment_capacity(d, clients) / targets[d]
                if ratio < 1.0:
                    short.append((ratio, -self.deps[d].memory_gb, d))
            if not short:
                return scaled_up
            d = min(short)[2]
            if snapshot is None:
                snapshot = self._snapshot()
            if self._add_replica(d, snapshot):
                scaled_up.add(d)
            else:
                blocked.add(d)

    def scale(self, now: float) -> None:
        """Scale up the deployments short of their target, then scale down the others
        while what remains covers their target."""
        rule = self.rule
        n = len(self.deps)
        up = [min(w for t, w in self.wanted_history[d] if t >= now - rule.up_window_s - 1e-9)
              for d in range(n)]
        scaled_up = self._scale_up(up, None)
        for d in range(n):
            if d in scaled_up:
                continue
            down_target = max(w for _, w in self.wanted_history[d])
            while True:
                mine = [r for r in self.replicas if r.deployment == d]
                if len(mine) <= rule.min_replicas:
                    break
                clients = self.clients()
                victim = min(mine, key=lambda r: (
                    self._capacity(r, clients) / self._price(r), -r.created_at))
                clients[victim.gpu] -= 1
                remaining = sum(self._capacity(r, clients) for r in mine if r is not victim)
                if remaining < down_target:
                    break
                self._remove_replica(victim)

    def _price(self, r: Replica) -> float:
        return float(self.catalog[r.gpu_type].price_per_gpu_hour) * r.share_pct / 100.0 or 1e-9

    # -- the shipped policies ------------------------------------------------------------
    def _slo_warm_start(self, initial_rps: Sequence[float]) -> None:
        """Size the fleet for the period's mean rate with the ``slo`` planner itself, with
        the policy's burst headroom at its cap: with no samples yet, how bursty the traffic
        is inside a minute is unknown, and unknown is assumed the worst the policy allows
        (as unknown load is held, never scaled in). The first scale-in can come once a whole
        down window of samples exists, and sizes to what was measured."""
        prompt, output = self.tokens[0]
        burst = self.slo.slo.max_burst_factor
        needs = []
        for d, dep in enumerate(self.deps):
            spec = self.specs[dep.key]
            shape = RequestShape(prompt, output, spec.tail_prompt_tokens or prompt,
                                 spec.tail_output_tokens or output)
            needs.append(DeploymentNeed(
                key=dep.key, workload_class=spec.workload_class, share_pct=spec.share_pct,
                memory_mib=spec.memory_mib, allowed_types=spec.allowed_types,
                min_replicas=spec.min_replicas, max_replicas=spec.max_replicas,
                need_rps=float(initial_rps[d]) * burst, keep_rps=float(initial_rps[d]) * burst,
                shape=shape,
                objectives=spec.objectives))
        plans = self.slo.planner.plan(needs, FleetState.of(self.twin.nodes(), ()))
        self._apply_additions({p.key: p.additions for p in plans})

    def _apply_additions(self, additions: Mapping[str, Sequence[Addition]]) -> None:
        """Place the planned replicas as the controller does: each request carries the
        autoscaler's choice as labels (``AutoscalerChoice`` filter). Replicas on fresh GPUs
        first (largest models first), then those planned into free slots of GPUs in use."""
        snapshot = self._snapshot()
        order = sorted(((a.on_gpu_in_use, -self.deps[self.dep_of[k]].memory_gb, k, a)
                        for k, adds in additions.items() for a in adds),
                       key=lambda x: (x[0], x[1], x[2]))
        for _, _, key, add in order:
            self._add_replica(self.dep_of[key], snapshot, add.labels())

    def _remove_pods(self, names: Sequence[str]) -> None:
        by_pod = {r.pod_name: r for r in self.replicas}
        for name in names:
            r = by_pod.get(name)
            if r is not None:
                self._remove_replica(r)

    def prime(self, now: float, telemetry: FleetTelemetry) -> None:
        """The first reading: learn from it, act on none yet."""
        if self.autoscaler == "target":
            self.observe(now, telemetry)
        elif self.autoscaler == "slo":
            self.slo.observe(telemetry, now=now)

    def act(self, now: float, telemetry: FleetTelemetry) -> None:
        """One control step of the autoscaler under evaluation."""
        if self.autoscaler == "target":
            self.observe(now, telemetry)
            self.scale(now)
        elif self.autoscaler == "slo":
            self.slo.observe(telemetry, now=now)
            decisions = self.slo.decide(now=now, nodes=self.twin.nodes(),
                                        pods=self.twin.replica_pods(), specs=self.specs)
            self.last_decisions = decisions
            self._apply_additions({d.plan.key: d.plan.additions for d in decisions})
            self._remove_pods([n for d in decisions for n in d.plan.removals])
        else:
            self._seed_step(now, telemetry)

    def _seed_step(self, now: float, telemetry: FleetTelemetry) -> None:
        """SPEC §3.6's queue rule, literally, through ``core.autoscale`` (as the controller)."""
        policy = replace(self.settings.autoscaling.policy, min_replicas=self.rule.min_replicas,
                         max_replicas=self.rule.max_replicas)
        views = fleet_views(telemetry, self.twin.replica_pods(), self.catalog)
        for view in views:
            d = self.dep_of.get(view.signals.deployment)
            if d is None:
                continue
            rec = self.seed.observe(view.signals, now=now, policy=policy)
            if rec.action is Action.UP:
                snapshot = self._snapshot()
                for _ in range(rec.target - rec.replicas):
                    self._add_replica(d, snapshot)
            elif rec.action is Action.DOWN:
                victims = least_valuable(view.replicas, rec.replicas - rec.target)
                self._remove_pods([v.name for v in victims])

"""What each durable rollout step does to the cluster and the queue (one function each).

Why: ``core.controller.rollout`` decides *which* step runs; this module holds
*how* each kind runs, through the ports only (``Cluster``,
``NodeConfigurator``, ``PlacementStore`` for reservations, ``RolloutStore`` for
the queue, ``HealthSource``), so the same code runs on the twin and on
Kubernetes.

Every action is idempotent, because a controller may die after a step was
written RUNNING and before it was written finished, and the next leader runs it
again: cordoning, selecting a config and uncordoning are naturally so; copies
of replicas have deterministic request ids (queueing one twice is a no-op); a
replica bound directly onto a node has a deterministic pod name (the second
bind is refused as a duplicate and judged by its phase); a drain is redone and
then reconciled from the targets written before it started, so every evicted
replica is given back (its request requeued, or retired when its copy runs).
Waiting steps return ``WAIT`` and are polled again at the next run, with a
deadline written in their details.

Invariants: no request is lost (an evicted replica's request is requeued unless
a copy of it is bound; a copy is retired only once the replica it replaced, or
that replaces it, runs); reservations of replicas that leave a node are
released; rollback steps skip the work on a node that already runs the config
they restore.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from core.controller.rollout_replicas import (
    copy_id,
    pod_key,
    pod_of,
    request_from_pod,
    union,
    with_id,
    workload_class,
)
from core.errors import SchedulerError, TransientError
from core.manifest import render_pod
from core.model import MpsSlice, Node, PlacementRequest, Priority
from core.ports import (
    Cluster,
    GpuCapacity,
    HealthSource,
    HeldSlice,
    NodeConfigurator,
    PlacementStore,
    PodExistsError,
    PodPhase,
    ReplicaPod,
    ReservationConflict,
    RolloutStepRecord,
    RolloutStore,
)
from core.rollout import analysis
from core.rollout.plan import RolloutPlan
from core.rollout.strategies import Action, StepSpec
from core.settings import device_plugin_replicas
from core.states import RequestState, StepState

ROLLOUT_WORKER = "rollout"
MAX_SAMPLES = 120
DRAIN_SLICE_S = 30.0  # one drain call per run waits at most this long
_HOLDING = (PodPhase.PENDING.value, PodPhase.RUNNING.value, PodPhase.UNKNOWN.value)


class Result(StrEnum):
    DONE = "done"
    WAIT = "wait"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"  # a check without data: the plan pauses for a person


@dataclass(frozen=True, slots=True)
class Outcome:
    result: Result
    details: Mapping[str, Any]
    reason: str = ""


@dataclass
class Ports:
    store: RolloutStore
    cluster: Cluster
    nodes: NodeConfigurator
    placement: PlacementStore
    health: HealthSource | None  # None: no metrics source, every check is inconclusive
    thresholds: analysis.Thresholds = field(default_factory=analysis.Thresholds)
    image: str | None = None


@dataclass(frozen=True, slots=True)
class Context:
    plan_id: int
    plan: RolloutPlan
    record: RolloutStepRecord
    steps: tuple[RolloutStepRecord, ...]
    now: float

    @property
    def spec(self) -> StepSpec:
        spec: StepSpec = self.record.spec
        return spec

    def earlier(self, action: Action, node: str | None = None, *,
                same_phase: bool = True) -> list[RolloutStepRecord]:
        """Earlier steps of ``action`` (on ``node``) of this phase (forward or rollback)."""
        out = []
        for r in self.steps:
            if r.seq >= self.record.seq:
                break
            spec: StepSpec = r.spec
            if spec.action is action and (node is None or spec.node == node) and \
                    (not same_phase or spec.rollback == self.spec.rollback):
                out.append(r)
        return out


class Actions:
    """Runs one step (``begin`` once, when it is written RUNNING; ``run`` every time)."""

    def __init__(self, ports: Ports) -> None:
        self.p = ports

    # --- helpers ------------------------------------------------------------------------
    def _node(self, name: str) -> Node | None:
        return next((n for n in self.p.cluster.nodes() if n.name == name), None)

    def _untouched(self, node: str, config: str) -> bool:
        """The node already runs ``config`` (selected and advertised): a rollback skips it."""
        n = self._node(node)
        return n is not None and self.p.nodes.device_plugin_config(node) == config and \
            n.gpu_replicas == device_plugin_replicas(config)

    def _pods_on(self, node: str) -> list[ReplicaPod]:
        return [p for p in self.p.cluster.replica_pods() if p.node == node and
                p.phase in _HOLDING]

    def _deadline(self, ctx: Context) -> float:
        return float(ctx.record.details.get("deadline", ctx.now + 1.0))

    # --- begin: what is written with the RUNNING record ---------------------------------
    def begin(self, ctx: Context) -> dict[str, Any]:
        spec = ctx.spec
        details: dict[str, Any] = {}
        timeout = spec.params.get("timeout_s")
        if timeout is not None:
            details["deadline"] = ctx.now + float(timeout)
        a = spec.action
        if a in (Action.MIGRATE, Action.EVACUATE):
            details["moves"] = self._plan_moves(ctx)
        elif a is Action.DRAIN:
            details["targets"] = [
                {"pod": pod_key(p), "owner": p.owner, "model": p.model,
                 "namespace": p.namespace, "memory_mib": p.memory_mib}
                for p in self._pods_on(spec.node or "")]
        elif a is Action.RETURN:
            moves = [m for r in ctx.earlier(Action.MIGRATE, spec.node) +
                     ctx.earlier(Action.EVACUATE, spec.node) for m in r.details.get("moves", ())]
            details["returns"] = [{"copy": m["copy"], "back": copy_id(
                m["copy"], plan_id=ctx.plan_id, seq=ctx.record.seq)} for m in moves]
        elif a is Action.SHIFT:
            moves = [m for r in ctx.earlier(Action.MIGRATE) for m in r.details.get("moves", ())]
            done = sum(len(r.details.get("returns", ())) for r in ctx.earlier(Action.SHIFT))
            target = math.ceil(len(moves) * int(spec.params["percent"]) / 100 - 1e-9)
            details["returns"] = [{"copy": m["copy"], "back": copy_id(
                m["copy"], plan_id=ctx.plan_id, seq=ctx.record.seq)}
                for m in moves[done:target]]
        if a in (Action.ANALYZE, Action.VALIDATE, Action.SHIFT):
            details.setdefault("samples", [])
        return details

    def _plan_moves(self, ctx: Context) -> list[dict[str, Any]]:
        spec = ctx.spec
        pods = [p for p in self._pods_on(spec.node or "") if p.phase == PodPhase.RUNNING.value]
        known = self.p.store.requests([p.owner for p in pods])
        moves = []
        for p in pods:
            _, req = known.get(p.owner, ("", None))
            priority = req.priority if req is not None else Priority.MEDIUM
            if spec.action is Action.EVACUATE and priority is not Priority.CRITICAL:
                continue
            moves.append({"original": p.owner, "pod": pod_key(p), "known": req is not None,
                          "copy": copy_id(p.owner, plan_id=ctx.plan_id, seq=ctx.record.seq),
                          "model": p.model, "namespace": p.namespace,
                          "memory_mib": p.memory_mib, "priority": priority.value})
        return moves

    # --- run ----------------------------------------------------------------------------
    def run(self, ctx: Context) -> Outcome:
        handler: Callable[[Context], Outcome] = getattr(
            self, "_" + ctx.spec.action.value.replace("-", "_"))
        try:
            return handler(ctx)
        except SchedulerError as exc:
            return Outcome(Result.FAILED, ctx.record.details,
                           f"{ctx.spec.label}: {type(exc).__name__}: {exc}")

    def _done(self, ctx: Context, **extra: Any) -> Outcome:
        return Outcome(Result.DONE, {**ctx.record.details, **extra})

    def _cordon(self, ctx: Context) -> Outcome:
        self.p.nodes.cordon(ctx.spec.node or "")
        return self._done(ctx)

    def _uncordon(self, ctx: Context) -> Outcome:
        self.p.nodes.uncordon(ctx.spec.node or "")
        return self._done(ctx)

    def _skip_restored(self, ctx: Context) -> bool:
        spec = ctx.spec
        return spec.rollback and self._untouched(spec.node or "", str(spec.params["config"]))

    def _migrate(self, ctx: Context) -> Outcome:
        details = dict(ctx.record.details)
        if ctx.spec.rollback and "config" in ctx.spec.params and self._skip_restored(ctx):
            return Outcome(Result.DONE, {**details, "moves": [], "skipped": "already restored"})
        moves = details.get("moves", [])
        known = self.p.store.requests([m["original"] for m in moves if m["known"]])
        copies = []
        for m in moves:
            entry = known.get(m["original"])
            base = entry[1] if entry is not None else request_from_pod(
                pod_of(m), request_id=m["copy"], priority=Priority(m["priority"]))
            copies.append(with_id(base, m["copy"]))
        self.p.store.enqueue_requests(copies, now=ctx.now)
        states = self.p.store.requests([m["copy"] for m in moves])
        bad = [f"{c}: {s}" for c, (s, _) in states.items()
               if s in (RequestState.FAILED, RequestState.REMOVED)]
        if bad:
            return Outcome(Result.FAILED, details, "a copy could not be placed: " + "; ".join(bad))
        waiting = [m["copy"] for m in moves
                   if states.get(m["copy"], ("",))[0] != RequestState.BOUND]
        if waiting:
            if ctx.now >= self._deadline(ctx):
                return Outcome(Result.FAILED, details,
                               f"{len(waiting)} copy(ies) not running in time")
            return Outcome(Result.WAIT, details)
        # Every copy runs: the originals are terminated on the node (SPEC §4.1 graceful
        # migration, §4.4 evacuation), not evicted: they are surplus now, and a disruption
        # budget would count each eviction as a replica owed back.
        for m in moves:
            ns, name = m["pod"].split("/", 1)
            self.p.cluster.delete_pod(ns, name)
            self.p.placement.release_reservation(owner=m["original"])
        self.p.store.retire_requests([m["original"] for m in moves if m["known"]],
                                     reason="moved: its copy runs", now=ctx.now)
        return Outcome(Result.DONE, details)

    _evacuate = _migrate

    def _drain(self, ctx: Context) -> Outcome:
        spec = ctx.spec
        node = spec.node or ""
        if self._skip_restored(ctx):
            return self._done(ctx, skipped="already restored")
        # A short drain per run: evicted replicas come back through the queue, which the
        # placement step serves between runs, so a budget that refuses now may allow later.
        left = self._deadline(ctx) - ctx.now
        result = self.p.nodes.drain(node, timeout_s=max(min(left, DRAIN_SLICE_S), 1.0))
        given_back = self._give_back(ctx, node)
        if not result.completed:
            details = {**ctx.record.details, **given_back, "last_refusal": result.reason}
            if left > DRAIN_SLICE_S:
                return Outcome(Result.WAIT, details)
            return Outcome(Result.FAILED, details, f"drain of {node}: {result.reason}")
        return self._done(ctx, evicted=list(result.evicted), **given_back)

    def _give_back(self, ctx: Context, node: str) -> dict[str, Any]:
        """Every drain target that left the node gets its replica back: its request is
        requeued (its reservation released), retired when a copy of it runs, or a new
        request is queued for a replica the store never placed."""
        moved = {m["original"]: m["copy"]
                 for r in ctx.earlier(Action.MIGRATE, node) + ctx.earlier(Action.EVACUATE, node)
                 for m in r.details.get("moves", ())}
        targets = list(ctx.record.details.get("targets", ()))
        pods = {p.owner: p for p in self.p.cluster.replica_pods() if p.phase in _HOLDING}
        gone = [t for t in targets if t["owner"] not in pods or pods[t["owner"]].node != node]
        known = self.p.store.requests([t["owner"] for t in gone])
        copies = self.p.store.requests([moved[t["owner"]] for t in gone if t["owner"] in moved])
        retire, requeue, fresh = [], [], []
        for t in gone:
            owner = t["owner"]
            copy = moved.get(owner)
            if copy is not None and copies.get(copy, ("",))[0] == RequestState.BOUND:
                retire.append(owner)
            elif owner in known:
                if owner not in pods:
                    requeue.append(owner)
            else:  # a replica the store never placed: a new request brings it back
                fresh.append(request_from_pod(pod_of(t), request_id=copy_id(
                    owner, plan_id=ctx.plan_id, seq=ctx.record.seq)))
        for owner in retire + requeue:
            self.p.placement.release_reservation(owner=owner)
        self.p.store.retire_requests(retire, reason=f"drained from {node}: its copy runs",
                                     now=ctx.now)
        self.p.store.requeue_requests(requeue, reason=f"evicted by the drain of {node}",
                                      now=ctx.now)
        self.p.store.enqueue_requests(fresh, now=ctx.now)
        before = ctx.record.details
        return {"retired": union(before.get("retired"), retire),
                "requeued": union(before.get("requeued"), requeue),
                "recreated": union(before.get("recreated"), [r.request_id for r in fresh])}

    def _set_config(self, ctx: Context) -> Outcome:
        node, config = ctx.spec.node or "", str(ctx.spec.params["config"])
        if self._skip_restored(ctx):
            return self._done(ctx, skipped="already restored")
        self.p.nodes.set_device_plugin_config(node, config)
        return self._done(ctx)

    def _restart_plugin(self, ctx: Context) -> Outcome:
        spec = ctx.spec
        node = spec.node or ""
        if self._skip_restored(ctx):
            return self._done(ctx, skipped="already restored")
        timeout = max(self._deadline(ctx) - ctx.now, 1.0)
        res = self.p.nodes.restart_device_plugin(node, expected_gpus=int(
            spec.params["expected_gpus"]), timeout_s=timeout)
        if not res.ready:
            return Outcome(Result.FAILED, ctx.record.details, res.reason or
                           f"device plugin on {node} not ready")
        return self._done(ctx, allocatable=res.allocatable_gpus)

    def _wait_advertised(self, ctx: Context) -> Outcome:
        spec = ctx.spec
        n = self._node(spec.node or "")
        want = device_plugin_replicas(str(spec.params["config"]))
        if n is not None and n.gpu_replicas == want and all(g.healthy for g in n.gpus) and \
                len(n.gpus) * want == int(spec.params["expected_gpus"]):
            return self._done(ctx)
        if ctx.now >= self._deadline(ctx):
            got = None if n is None else n.gpu_replicas
            return Outcome(Result.FAILED, ctx.record.details,
                           f"{spec.node} advertises {got} replicas per GPU, expected {want}")
        return Outcome(Result.WAIT, ctx.record.details)

    # --- replicas bound back onto a node ------------------------------------------------
    def _return(self, ctx: Context) -> Outcome:
        out = self._bring_back(ctx, nodes=[ctx.spec.node or ""], retire_copies=True)
        if out.result is not Result.DONE:
            return out
        return self._rescheduled(ctx, out)

    def _rescheduled(self, ctx: Context, out: Outcome) -> Outcome:
        """Wait until the replicas the drain gave back to the queue are bound again; one that
        failed for want of room while the node was out is queued again now it is back."""
        node = ctx.spec.node or ""
        ids = [i for r in ctx.earlier(Action.DRAIN, node) for key in ("requeued", "recreated")
               for i in r.details.get(key, ())]
        states = self.p.store.requests(ids)
        failed = [i for i, (st, _) in states.items() if st == RequestState.FAILED]
        if failed:
            self.p.store.requeue_requests(failed, reason=f"{node} is back", now=ctx.now)
        waiting = [i for i in ids if states.get(i, ("",))[0] != RequestState.BOUND]
        if not waiting:
            return out
        if ctx.now >= self._deadline(ctx):
            return Outcome(Result.FAILED, out.details,
                           f"{len(waiting)} replica(s) not back in time: {', '.join(waiting)}")
        return Outcome(Result.WAIT, out.details)

    def _bring_back(self, ctx: Context, *, nodes: Sequence[str], retire_copies: bool
                    ) -> Outcome:
        """Bind each entry's ``back`` replica onto one of ``nodes`` (where it fits), wait until
        it runs, then (``retire_copies``) retire the copy it replaces."""
        details = dict(ctx.record.details)
        returns = [dict(r) for r in details.get("returns", ())]
        copies = self.p.store.requests([r["copy"] for r in returns])
        backs = self.p.store.requests([r["back"] for r in returns])
        pods = {p.owner: p for p in self.p.cluster.replica_pods()}
        open_ = 0
        for r in returns:
            if r.get("outcome"):
                continue
            if copies.get(r["copy"], ("",))[0] != RequestState.BOUND or r["copy"] not in pods:
                r["outcome"] = "stayed: no running copy to bring back"
                continue
            pod = pods.get(r["back"])
            if r["back"] not in backs or pod is None:
                if not self._bind_back(ctx, r, source=pods[r["copy"]], nodes=nodes,
                                       request=copies[r["copy"]][1]):
                    continue
                open_ += 1
                continue
            if pod.phase == PodPhase.RUNNING.value:
                r["outcome"] = "back"
                r["node"] = pod.node
            elif pod.phase == PodPhase.FAILED.value or ctx.now >= self._deadline(ctx):
                self._drop(pod, r["back"], ctx.now, reason="did not start on its node")
                r["outcome"] = f"stayed: the replica bound back {pod.phase}"
            else:
                open_ += 1
        details["returns"] = returns
        if open_:
            return Outcome(Result.WAIT, details)
        if retire_copies:
            self._retire_copies(returns, pods, ctx.now)
        return Outcome(Result.DONE, details)

    def _retire_copies(self, returns: Sequence[Mapping[str, Any]],
                       pods: Mapping[str, ReplicaPod], now: float) -> None:
        for r in returns:
            if r.get("outcome") == "back" and r["copy"] in pods:
                self._drop(pods[r["copy"]], r["copy"], now, reason="its replica is back")

    def _drop(self, pod: ReplicaPod, request_id: str, now: float, *, reason: str) -> None:
        self.p.cluster.delete_pod(pod.namespace, pod.name)
        self.p.placement.release_reservation(owner=request_id)
        self.p.store.retire_requests([request_id], reason=reason, now=now)

    def _bind_back(self, ctx: Context, r: dict[str, Any], *, source: ReplicaPod,
                   nodes: Sequence[str], request: PlacementRequest) -> bool:
        """Reserve and bind ``r['back']`` like ``source`` onto the first of ``nodes`` with room;
        False (and ``r['outcome']`` says why) when none has."""
        wc = workload_class(self.p.cluster.nodes(), source)
        back = with_id(request, r["back"])
        for n in self.p.cluster.nodes():
            if n.name not in nodes or not n.schedulable:
                continue
            for g in n.gpus:
                held = [HeldSlice(owner=s.owner, thread_pct=s.thread_pct,
                                  memory_mib=s.memory_mib) for s in g.slices]
                free_mem = g.memory_total_mib - g.other_memory_mib - sum(h.memory_mib
                                                                         for h in held)
                if not g.healthy or sum(h.thread_pct for h in held) + source.thread_pct > 100 \
                        or source.memory_mib > free_mem or \
                        (n.gpu_replicas is not None and len(held) >= n.gpu_replicas):
                    continue
                try:
                    self.p.placement.reserve(
                        owner=r["back"], node=n.name, gpu_index=g.index,
                        thread_pct=source.thread_pct, memory_mib=source.memory_mib,
                        capacity=GpuCapacity(memory_mib=g.memory_total_mib - g.other_memory_mib,
                                             replicas=n.gpu_replicas),
                        observed=held, observed_at=ctx.now, worker=ROLLOUT_WORKER, now=ctx.now)
                except ReservationConflict:
                    continue
                self.p.store.record_bound(back, now=ctx.now)
                sl = MpsSlice(owner=r["back"], thread_pct=source.thread_pct,
                              memory_mib=source.memory_mib, model=source.model,
                              workload_class=wc)
                kw = {} if self.p.image is None else {"image": self.p.image}
                pod = render_pod(request=back, node=n.name, gpu_index=g.index, mps_slice=sl,
                                 workload_class=wc, gpu_memory_total_mib=g.memory_total_mib,
                                 **kw)
                # A duplicate is our own earlier attempt: judged by its phase next time.
                with contextlib.suppress(PodExistsError):
                    self.p.cluster.bind(pod)
                return True
        r["outcome"] = "stayed: no room on " + ", ".join(nodes)
        return False

    # --- rollback helpers ---------------------------------------------------------------
    def _unmigrate(self, ctx: Context) -> Outcome:
        """Copies made for a node whose replicas still run there are not needed any more."""
        node = ctx.spec.node or ""
        pods = {p.owner: p for p in self.p.cluster.replica_pods() if p.phase in _HOLDING}
        moves = [m for r in ctx.steps if r.spec.action is Action.MIGRATE and
                 r.spec.node == node and not r.spec.rollback for m in r.details.get("moves", ())]
        states = self.p.store.requests([m["copy"] for m in moves])
        settling = []
        for m in moves:
            original = pods.get(m["original"])
            if original is None or original.node != node:
                continue  # the original left: its copy is the replica now
            state = states.get(m["copy"], ("",))[0]
            if state in (RequestState.CLAIMED, RequestState.PLACING):
                settling.append(m["copy"])
            elif state == RequestState.QUEUED or state == RequestState.BOUND:
                copy_pod = pods.get(m["copy"])
                if copy_pod is not None:
                    self._drop(copy_pod, m["copy"], ctx.now, reason="rollback: not needed")
                else:
                    self.p.store.retire_requests([m["copy"]], reason="rollback: not needed",
                                                 now=ctx.now)
        if settling and ctx.now < float(ctx.record.details.get("deadline", ctx.now + 600)):
            return Outcome(Result.WAIT, {**ctx.record.details,
                                         "deadline": ctx.record.details.get(
                                             "deadline", ctx.now + 600)})
        return self._done(ctx)

    def _unshift(self, ctx: Context) -> Outcome:
        """Instant rollback of blue-green: green's replicas go while blue's copies run."""
        pods = {p.owner: p for p in self.p.cluster.replica_pods() if p.phase in _HOLDING}
        for r in ctx.steps:
            if r.spec.action is not Action.SHIFT:
                continue
            for entry in r.details.get("returns", ()):
                copy, back = pods.get(entry["copy"]), pods.get(entry["back"])
                if back is not None and copy is not None:
                    self._drop(back, entry["back"], ctx.now, reason="blue-green rolled back")
        return self._done(ctx)

    # --- checks -------------------------------------------------------------------------
    def _sampled(self, ctx: Context, nodes: Sequence[str], window_s: float, *,
                 fleet_if_idle: bool = False) -> tuple[dict[str, Any], analysis.Judgement]:
        details = dict(ctx.record.details)
        started = float(details.setdefault("watch_from", ctx.now))
        samples = [analysis.Sample.from_json(s) for s in details.get("samples", ())]
        every = max(window_s / MAX_SAMPLES, 1.0)
        if not samples or ctx.now - samples[-1].at >= every:
            try:
                if self.p.health is None:
                    raise TransientError("no metrics source is configured")
                every_node = [n.name for n in self.p.cluster.nodes()]
                health = self.p.health.node_health(every_node)
                taken = analysis.sample(at=ctx.now, health=health, canary=nodes)
                if fleet_if_idle and taken.canary.qps <= 0:
                    taken = analysis.sample(at=ctx.now, health=health, canary=every_node)
                samples.append(taken)
            except SchedulerError as exc:
                details["last_error"] = f"metrics unavailable: {exc}"
        details["samples"] = [s.to_json() for s in samples[-MAX_SAMPLES:]]
        verdict = analysis.judge(samples, started_at=started, window_s=window_s, now=ctx.now,
                                 thresholds=self.p.thresholds)
        details["judgement"] = verdict.to_json()
        return details, verdict

    def _check(self, ctx: Context, nodes: Sequence[str], *, fleet_if_idle: bool = False
               ) -> Outcome:
        details, verdict = self._sampled(ctx, nodes, float(ctx.spec.params["window_s"]),
                                         fleet_if_idle=fleet_if_idle)
        if verdict.verdict is analysis.Verdict.RUNNING:
            return Outcome(Result.WAIT, details)
        if verdict.verdict is analysis.Verdict.FAILED:
            return Outcome(Result.FAILED, details, verdict.reason)
        if verdict.verdict is analysis.Verdict.INCONCLUSIVE:
            details.pop("watch_from", None)
            details["samples"] = []
            return Outcome(Result.INCONCLUSIVE, details, verdict.reason)
        return Outcome(Result.DONE, details)

    def _analyze(self, ctx: Context) -> Outcome:
        return self._check(ctx, list(ctx.spec.params["nodes"]))

    def _validate(self, ctx: Context) -> Outcome:
        """An emergency change is validated on the changed nodes, or on the whole fleet it
        was made for while they carry no traffic (their pods were evacuated)."""
        return self._check(ctx, list(ctx.spec.params["nodes"]), fleet_if_idle=True)

    def _await_promotion(self, ctx: Context) -> Outcome:
        return self._done(ctx)  # reached only once promoted (the plan runs again)

    def _shift(self, ctx: Context) -> Outcome:
        nodes = list(ctx.spec.params["nodes"])
        if not ctx.record.details.get("moved"):
            out = self._bring_back(ctx, nodes=nodes, retire_copies=False)
            if out.result is not Result.DONE:
                return out
            ctx = _with_details(ctx, {**out.details, "moved": True})
        out = self._check(ctx, nodes)
        if out.result is Result.DONE and int(ctx.spec.params["percent"]) >= 100:
            pods = {p.owner: p for p in self.p.cluster.replica_pods()}
            for r in ctx.steps:
                if r.spec.action is Action.SHIFT and r.seq <= ctx.record.seq:
                    src = r.details.get("returns", ()) if r.seq != ctx.record.seq \
                        else out.details.get("returns", ())
                    self._retire_copies(src, pods, ctx.now)
        return out


def _with_details(ctx: Context, details: Mapping[str, Any]) -> Context:
    r = ctx.record
    record = RolloutStepRecord(seq=r.seq, spec=r.spec, status=StepState.RUNNING.value,
                               details=dict(details), started_at=r.started_at)
    return Context(plan_id=ctx.plan_id, plan=ctx.plan, record=record, steps=ctx.steps,
                   now=ctx.now)

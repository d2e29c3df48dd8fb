"""Ports: the narrow interfaces through which the core reaches the outside world.

The controller and the console depend only on these protocols. Cluster-side
ports (``Cluster``, ``NodeConfigurator``, ``Metrics``) have two kinds of
implementation: the real adapters (``core.adapters.*``: Kubernetes, Prometheus,
NVML) and the digital twin (``core.sim.twin.Twin``), which is both the embedded
default and the one fake used by tests. Store-side ports (``PlacementStore``,
``LeaseStore``, ``FlagStore``, ``WeightSource``, ``MetricSink``,
``AutoscalingStore``, ``QueueStats``, ``FeedbackStore``, ``RetentionStore``) are
what the controller's steps use of the store; ``db.stores`` implements them with
one transaction per call, so each call's unit of work lands whole or not at all.

Invariants every implementation keeps:
- values crossing a port are the project's own frozen dataclasses (``Node``,
  ``FleetTelemetry``) or plain ``dict`` manifests, never client objects;
- client failures surface as ``core.errors`` types (``TransientError`` when a
  retry may help, ``PermanentError`` when it will not);
- ``Clock`` is the only source of time: nothing in ``core`` reads the wall clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from core.errors import PermanentError, TransientError
from core.model import Node, PlacementRequest, SchedulerWeights
from core.telemetry import FleetTelemetry

if TYPE_CHECKING:
    from core.feedback import PlacedReplica, Proposal
    from core.placement import Decision


class PodPhase(StrEnum):
    """Pod phases as Kubernetes reports them (``status.phase``)."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"


class PodExistsError(PermanentError):
    """``bind`` was asked to create a pod whose namespace/name already exists.

    A retried placement renders the same pod name, so the cluster refuses the
    duplicate instead of starting a second replica (HTTP 409 in Kubernetes).
    """


class ClaimLost(PermanentError):
    """The store no longer has this request claimed by this worker (its claim expired, or
    a new leader requeued it); whoever holds it now finishes it."""


class PodNotFoundError(PermanentError):
    """The pod asked about does not exist (HTTP 404 in Kubernetes)."""


@runtime_checkable
class Clock(Protocol):
    """Time, injectable so that simulations and tests never wait."""

    def now(self) -> float:
        """Seconds since the Unix epoch (UTC)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of this clock's time pass."""
        ...


@dataclass(frozen=True, slots=True)
class ReplicaPod:
    """A model-server pod the scheduler manages, with the GPU slice it holds."""

    namespace: str
    name: str
    node: str
    gpu_index: int
    model: str
    owner: str  # the slice's owner: the placement request id for pods the console placed
    thread_pct: int
    memory_mib: int
    phase: str

    @property
    def deployment(self) -> str:
        return f"{self.namespace}/{self.model}"


@runtime_checkable
class Cluster(Protocol):
    """The cluster the controller places model servers on."""

    def nodes(self) -> tuple[Node, ...]:
        """Every GPU node with its GPUs, their MPS slices and current state."""
        ...

    def bind(self, pod: Mapping[str, Any]) -> None:
        """Create the pod rendered by ``core.manifest.render_pod``.

        The pod names its node in ``spec.nodeSelector["kubernetes.io/hostname"]``
        and its slice in the annotations ``gpu-scheduler.io/mps-owner``,
        ``gpu-scheduler.io/gpu-index``, ``gpu-scheduler.io/mps-thread-percentage``
        and ``gpu-scheduler.io/mps-pinned-memory``. Returns once the pod object
        exists (it starts ``Pending``); raises ``PodExistsError`` for a
        duplicate and ``ValidationError`` for a malformed manifest.
        """
        ...

    def pod_phase(self, namespace: str, name: str) -> str:
        """One of ``PodPhase``'s values; ``PodNotFoundError`` when there is no such pod."""
        ...

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete the pod; deleting a pod that does not exist is not an error."""
        ...

    def set_schedulable(self, node: str, schedulable: bool) -> None:
        """Cordon (``False``) or uncordon (``True``) ``node``."""
        ...

    def replica_pods(self) -> tuple[ReplicaPod, ...]:
        """Every model-server pod with a GPU slice (any phase), for autoscaling."""
        ...


@dataclass(frozen=True, slots=True)
class PodWaitResult:
    """How waiting for one pod ended: ``Running``, or its phase and why it did not run
    (failed, stuck in a container waiting reason, deleted, or ``timed_out``)."""

    phase: str
    reason: str = ""
    timed_out: bool = False

    @property
    def running(self) -> bool:
        return self.phase == PodPhase.RUNNING.value


@runtime_checkable
class PodBatchCluster(Protocol):
    """A ``Cluster`` that also creates many pods at once and waits for them together
    (the Kubernetes adapter: concurrent creates, one watch). The controller uses these
    when the cluster has them, else ``bind`` and ``pod_phase`` one by one."""

    def bind_many(self, pods: Sequence[Mapping[str, Any]]) -> list[Exception | None]:
        """``bind`` each pod, concurrently; per pod None when it was created, else the
        error ``bind`` would have raised (``PodExistsError`` for a duplicate)."""
        ...

    def wait_for_pods(self, pods: Sequence[tuple[str, str]], *, timeout_s: float,
                      heartbeat: Callable[[], None] | None = None
                      ) -> dict[tuple[str, str], PodWaitResult]:
        """Wait until each ``(namespace, name)`` runs or cannot, at most ``timeout_s``;
        calls ``heartbeat`` at least every few seconds (it may raise to abandon the wait)."""
        ...


@dataclass(frozen=True, slots=True)
class DrainResult:
    """How draining a node ended: ``completed`` when every evictable pod left it in time.

    ``evicted`` holds ``namespace/name`` of each pod the eviction took; ``owners``
    maps each of those to the slice owner it held (the placement request id of a
    pod the console placed), so that the caller can give the replica back to its
    deployment (requeue the request) once the pod is gone.
    """

    node: str
    completed: bool
    evicted: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (namespace/name, why it stays)
    blocked: tuple[tuple[str, str], ...] = ()  # (namespace/name, last refusal)
    reason: str = ""
    owners: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class PluginRestart:
    """``ready`` when the node's device plugin runs again and the node advertises the
    expected number of ``nvidia.com/gpu`` (GPUs × replicas of its config)."""

    node: str
    ready: bool
    pods: tuple[str, ...] = ()
    allocatable_gpus: int | None = None
    reason: str = ""

    @classmethod
    def advertised(cls, *, node: str, pods: tuple[str, ...], count: int | None,
                   expected: int, timeout_s: float) -> PluginRestart:
        """The outcome once the plugin runs again: ready only when the node advertises
        exactly ``expected`` ``nvidia.com/gpu``."""
        if count != expected:
            return cls(node=node, ready=False, pods=pods, allocatable_gpus=count,
                       reason=f"node {node} advertises {count} nvidia.com/gpu after "
                              f"{timeout_s:g} s, expected {expected}")
        return cls(node=node, ready=True, pods=pods, allocatable_gpus=count)


@runtime_checkable
class NodeConfigurator(Protocol):
    """What changing a node's MPS configuration needs (SPEC §4.1, rolling node update).

    The Kubernetes adapter and the twin implement it, so a reconfiguration runs the
    same code on a cluster, in embedded mode and in tests. Invariants:
    - ``cordon`` stops new binds on the node at once; ``uncordon`` allows them again;
    - ``drain`` evicts the way the Eviction API does: per pod, refused while the pod's
      deployment would go below its disruption budget (retried until ``timeout_s``);
      DaemonSet-like system pods stay;
    - ``set_device_plugin_config`` only selects a named config the cluster knows
      (``exclusive``, ``mps-<N>``); nothing changes on the GPUs until
      ``restart_device_plugin``, which restarts the MPS daemon and the plugin: every pod
      still using a GPU of the node loses it, then the node advertises
      ``GPUs × replicas`` of the new config;
    - failures are ``core.errors`` types; no call leaves the node half-labelled.
    """

    def cordon(self, node: str) -> None: ...

    def uncordon(self, node: str) -> None: ...

    def drain(self, node: str, *, timeout_s: float) -> DrainResult: ...

    def device_plugin_config(self, node: str) -> str:
        """The named config the node's device plugin was told to use (``""``: the default)."""
        ...

    def set_device_plugin_config(self, node: str, config: str) -> None: ...

    def restart_device_plugin(self, node: str, *, expected_gpus: int,
                              timeout_s: float) -> PluginRestart: ...


@runtime_checkable
class Metrics(Protocol):
    """Fleet telemetry as the monitoring loop reads it (SPEC §3.5)."""

    def available(self) -> bool:
        """Whether the source answers now; gates fail closed when it does not."""
        ...

    def telemetry(self) -> FleetTelemetry:
        """The latest fleet reading; ``TransientError`` when the source is down."""
        ...


class QueuedItem(Protocol):
    """A claimed placement request as the store hands it out."""

    @property
    def pk(self) -> int: ...

    @property
    def request_id(self) -> str: ...

    @property
    def request(self) -> PlacementRequest: ...


@dataclass(frozen=True, slots=True)
class HeldSlice:
    """A slice held on a GPU, by owner (the placement request id for the console's)."""

    owner: str
    thread_pct: int
    memory_mib: int


@dataclass(frozen=True, slots=True)
class GpuCapacity:
    """What a GPU can hold: 100 % of threads, its schedulable memory and, when its
    device-plugin config limits it, the replicas it advertises."""

    memory_mib: int
    replicas: int | None = None
    thread_pct: int = 100


class ReservationConflict(TransientError):
    """The slice no longer fits on that GPU: another placer reserved first."""

    def __init__(self, message: str) -> None:
        super().__init__(message, delay=0.0)


class PlacementStore(Protocol):
    """The durable queue and decision log, one transaction per call."""

    def claim(self, *, worker: str, now: float, lease_seconds: float,
              limit: int) -> Sequence[QueuedItem]: ...

    def mark_placing(self, *, pk: int, worker: str, now: float) -> None: ...

    def reserve(self, *, owner: str, node: str, gpu_index: int, thread_pct: int,
                memory_mib: int, capacity: GpuCapacity, observed: Sequence[HeldSlice],
                observed_at: float, worker: str, now: float) -> None:
        """Reserve the slice in the store, checked against everything held on the GPU
        (``observed``: what the placer's snapshot, read at ``observed_at``, shows);
        ``ReservationConflict`` when another placer took the space first."""
        ...

    def release_reservation(self, *, owner: str) -> None:
        """Drop ``owner``'s reservation; never raises for a missing one."""
        ...

    def record_decision(self, *, request_pk: int, decision: Decision, now: float,
                        decided_by: str) -> int: ...

    def finish(self, *, pk: int, worker: str, now: float, bound: bool,
               reason: str | None = None) -> None: ...

    def release(self, *, pk: int, worker: str, now: float, reason: str,
                retry_after: float, refund: bool = False) -> str:
        """Back to the queue, or failed when out of attempts; returns the new status.
        ``refund``: no attempt was made (the attempt does not count)."""
        ...


@dataclass(frozen=True, slots=True)
class SliceReservation:
    """One slice to reserve in a batch (``BatchPlacementStore.reserve_many``): the GPU,
    the slice, the GPU's capacity and what the placer's snapshot shows held on it."""

    owner: str
    node: str
    gpu_index: int
    thread_pct: int
    memory_mib: int
    capacity: GpuCapacity
    observed: tuple[HeldSlice, ...] = ()


@runtime_checkable
class BatchPlacementStore(PlacementStore, Protocol):
    """A ``PlacementStore`` that also takes a pass's writes in batches, one transaction
    per call (the controller uses these when the store has them, else the single calls).
    Each batch call keeps the guarantees of the single one for every item in it."""

    def claim_placing(self, *, worker: str, now: float, lease_seconds: float,
                      limit: int) -> Sequence[QueuedItem]:
        """``claim`` and ``mark_placing`` in one transaction."""
        ...

    def reserve_many(self, *, reservations: Sequence[SliceReservation], observed_at: float,
                     worker: str, now: float) -> list[str | None]:
        """``reserve`` each slice in order, in one transaction: per item None when it was
        reserved, else why it conflicted (nothing is written for that item). Items of the
        batch count against each other as stored reservations do."""
        ...

    def release_reservations(self, *, owners: Sequence[str]) -> None:
        """Drop the owners' reservations; never raises."""
        ...

    def record_decisions(self, *, decisions: Sequence[tuple[int, Decision]], now: float,
                         decided_by: str) -> list[int]:
        """``record_decision`` for ``(request pk, decision)`` pairs; ids in order."""
        ...

    def finish_many(self, *, pks: Sequence[int], worker: str, now: float, bound: bool,
                    reason: str | None = None) -> set[int]:
        """``finish`` for a batch; the pks still held by ``worker`` (finished now). A pk
        missing from the result was lost to another worker."""
        ...


# ------------------------------------------------------------------------------------------
# Store protocols the controller's steps use (``db`` implements them; one transaction per
# call, so a unit of work lands whole or not at all). Time is seconds since the epoch.
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """The leader lease as held after ``LeaseStore.acquire``."""

    name: str
    holder: str
    generation: int
    expires_at: float
    # Set when this call took the lease over from another holder (expired); that holder's
    # claims were requeued in the same transaction.
    took_over_from: str | None = None
    requeued: int = 0


class LeaseStore(Protocol):
    def acquire(self, *, name: str, holder: str, now: float, ttl_s: float,
                renewing: bool) -> LeaseGrant | None:
        """Renew ``holder``'s lease or take over an expired one; None when another leads.

        A takeover (``renewing`` False and the last holder was someone else) requeues
        the previous holder's claims at once: only the leader places, so they are orphans.
        """
        ...

    def release(self, *, name: str, holder: str, now: float) -> bool: ...


class FlagStore(Protocol):
    """Durable switches and published status, one JSON object per key."""

    def get_flag(self, key: str) -> Mapping[str, Any] | None: ...

    def set_flag(self, key: str, value: Mapping[str, Any], *, actor: str, now: float) -> None: ...


class WeightSource(Protocol):
    def active_weights(self) -> tuple[SchedulerWeights, int] | None:
        """The active weight version's weights and number; None before any exists."""
        ...


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One point of a stored series (keys as ``core.monitor`` builds them)."""

    ts: float
    metric: str
    key: str
    value: float


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """An alert that started firing or resolved at ``at``."""

    name: str
    severity: str
    state: str  # core.states.AlertState value: firing or resolved
    labels: Mapping[str, str]
    summary: str
    at: float


class MetricSink(Protocol):
    def record_sample(self, *, points: Sequence[MetricPoint], alerts: Sequence[AlertTransition],
                      cost_lines: Sequence[Any]) -> None:
        """Store one or more samples' metric points, alert transitions and cost-ledger
        lines (``core.cost.CostLine``) in one transaction."""
        ...


@dataclass(frozen=True, slots=True)
class AutoscalingRecord:
    """One autoscaling decision as stored, with the inputs it was made on."""

    deployment: str
    action: str  # core.states.AutoscalingAction value
    replicas_before: int
    replicas_after: int
    inputs: Mapping[str, Any]
    reason: str


class AutoscalingStore(Protocol):
    def in_flight_by_deployment(self) -> Mapping[str, int]:
        """Requests still on their way to a GPU, per ``namespace/model``."""
        ...

    def latest_request_for(self, *, namespace: str, model: str) -> PlacementRequest | None: ...

    def record_autoscaling(self, record: AutoscalingRecord, *, now: float,
                           enqueue: Sequence[PlacementRequest] = (),
                           removed_requests: Sequence[str] = ()) -> None:
        """Store the decision together with what it does to the queue (scale-up requests
        enqueued, scaled-down requests marked removed), in one transaction."""
        ...


class QueueStats(Protocol):
    def queue_counts(self) -> Mapping[str, int]:
        """Placement requests by ``core.states.RequestState`` value."""
        ...


class FeedbackStore(Protocol):
    """What a feedback run reads and writes (``core.controller.feedback``)."""

    def placed_replicas(self) -> Sequence[PlacedReplica]: ...

    def active_weights(self) -> tuple[SchedulerWeights, int] | None: ...

    def fleet_qps_series(self, *, since: float, until: float) -> Sequence[tuple[float, float]]:
        ...

    def last_run_at(self) -> float | None:
        """When the last run was published (the store's timestamp, not its payload's)."""
        ...

    def publish_run(self, run: Mapping[str, Any], *, actor: str, now: float) -> None: ...

    def record_run(self, *, proposal: Proposal | None, auto_apply: bool, author: str,
                   applier: str, actor: str, now: float,
                   run_for: Callable[[int | None, bool], Mapping[str, Any]]) -> int | None:
        """In one transaction: store the proposal (if any) with its audit entry, approve
        it when ``auto_apply``, and publish ``run_for(version, applied)``; returns the
        proposed version."""
        ...


@dataclass(frozen=True, slots=True)
class RollupBatch:
    """One roll-up transaction: the raw samples of ``[start, end)`` (whole coarse buckets)
    aggregated into ``buckets`` new roll-up rows, over every tier at once."""

    start: float
    end: float
    buckets: int


class RetentionStore(Protocol):
    """The metric history's roll-ups and pruning (``core.controller.retention``); every
    call is one short transaction, bounded by ``max_rows`` (or one coarse bucket) or
    ``limit`` rows."""

    def rolled_until(self, *, resolution_s: int) -> float | None:
        """The end of the newest roll-up bucket of ``resolution_s``; None before any."""
        ...

    def roll_up_next(self, *, before_ts: float, resolutions: Sequence[int],
                     max_rows: int) -> RollupBatch | None:
        """Roll up the next coarse buckets (of the coarsest of ``resolutions``) after the
        newest rolled one, from the first that holds raw samples: one bucket, or more
        while together they hold at most ``max_rows`` samples, all ended by
        ``before_ts``; idempotent. None when no such bucket is complete yet."""
        ...

    def prune_samples(self, *, before_ts: float, limit: int) -> int:
        """Delete at most ``limit`` raw samples older than ``before_ts``; how many went."""
        ...

    def prune_rollups(self, *, resolution_s: int, before_ts: float, limit: int) -> int:
        """Delete at most ``limit`` roll-up buckets of ``resolution_s`` that start before
        ``before_ts``; how many went."""
        ...


@dataclass(frozen=True, slots=True)
class DueNotification:
    """A webhook message claimed for one delivery attempt (``core.controller.notify``).

    ``attempt`` counts this attempt (1 = the first) and fences the claim: a report for
    an attempt that is no longer the row's latest is ignored. ``payload`` is
    ``core.notify.Notification.to_json()``."""

    id: int
    attempt: int
    payload: Mapping[str, Any]
    created_at: float


class NotificationOutbox(Protocol):
    """The store's durable outbox of webhook messages; each call is one transaction."""

    def claim_due(self, *, now: float, limit: int, lease_s: float,
                  expire_before: float) -> Sequence[DueNotification]:
        """Give up pending messages queued before ``expire_before`` (dead), then claim at
        most ``limit`` due ones for ``lease_s`` seconds, counting an attempt each; two
        callers never claim the same row at once."""
        ...

    def mark_sent(self, *, notification_id: int, attempt: int, now: float) -> bool:
        """Record the delivery; False when the claim was no longer this attempt's."""
        ...

    def prune(self, *, before: float, limit: int, include_pending: bool = False) -> int:
        """Delete at most ``limit`` sent or dead messages queued before ``before`` (and
        pending ones too with ``include_pending``: no webhook will ever send them)."""
        ...

    def mark_failed(self, *, notification_id: int, attempt: int, error: str,
                    next_at: float, max_attempts: int) -> str | None:
        """Record a failed attempt (``error`` redacted and cut): due again at ``next_at``,
        or dead once ``attempt`` reached ``max_attempts``. The new state
        (``core.states.NotificationState`` value), None when the claim was lost."""
        ...


class WebhookSender(Protocol):
    """Delivers one message body (``core.adapters.webhook``); the URL and secret stay in
    the implementation. Raises ``TransientError`` for anything but a 2xx reply."""

    def send(self, body: bytes, *, timestamp: int, delivery_id: str, event: str) -> int:
        """POST ``body``; returns the 2xx status."""
        ...


# The rollout engine's ports (``core.rollout_ports``), importable from here like the others.
from core.rollout_ports import *  # noqa: E402, F403

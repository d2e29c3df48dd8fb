"""The store behind the controller's store protocols (``core.ports``).

Each method is one transaction (``factory.begin()``), so a step's unit of work
(a decision with its queue change, a sample with its alerts and cost lines)
lands whole or not at all. Timestamps cross the port as epoch seconds and are
stored as timezone-aware UTC datetimes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.cost import CostLine
from core.feedback import PlacedReplica, Proposal
from core.model import PlacementRequest, SchedulerWeights
from core.monitor import FLEET
from core.placement import Decision
from core.ports import (
    AlertTransition,
    AutoscalingRecord,
    GpuCapacity,
    HeldSlice,
    LeaseGrant,
    MetricPoint,
    RollupBatch,
    SliceReservation,
)
from core.states import FlagKey
from db import (
    autoscaling,
    decisions,
    flags,
    leases,
    metrics,
    outbox,
    queue,
    reservations,
    versions,
    weights,
)
from db import decisions as decisions_
from db import reservations as reservations_
from db.costs import add_cost_lines

Factory = sessionmaker[Session]
log = logging.getLogger(__name__)


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class SqlPlacementStore:
    """``core.ports.PlacementStore``: the durable queue and the decision log."""

    def __init__(self, factory: Factory) -> None:
        self.factory = factory

    def claim(self, *, worker: str, now: float, lease_seconds: float,
              limit: int) -> Sequence[queue.QueuedRequest]:
        with self.factory.begin() as s:
            return queue.claim(s, worker=worker, now=utc(now), lease_seconds=lease_seconds,
                               limit=limit)

    def mark_placing(self, *, pk: int, worker: str, now: float) -> None:
        with self.factory.begin() as s:
            queue.mark_placing(s, pk=pk, worker=worker, now=utc(now))

    def reserve(self, *, owner: str, node: str, gpu_index: int, thread_pct: int,
                memory_mib: int, capacity: GpuCapacity, observed: Sequence[HeldSlice],
                observed_at: float, worker: str, now: float) -> None:
        with self.factory.begin() as s:
            reservations.reserve(s, owner=owner, node=node, gpu_index=gpu_index,
                                 thread_pct=thread_pct, memory_mib=memory_mib,
                                 capacity=capacity, observed=observed,
                                 observed_at=utc(observed_at), worker=worker, now=utc(now))

    def release_reservation(self, *, owner: str) -> None:
        try:
            with self.factory.begin() as s:
                reservations.release(s, owners=[owner])
        except Exception:  # never raises: the sweep drops what a failed release leaves
            log.exception("could not release the reservation of %s", owner)

    def record_decision(self, *, request_pk: int, decision: Decision, now: float,
                        decided_by: str) -> int:
        with self.factory.begin() as s:
            return decisions.record_decision(s, request_pk=request_pk, decision=decision,
                                             now=utc(now), decided_by=decided_by)

    def finish(self, *, pk: int, worker: str, now: float, bound: bool,
               reason: str | None = None) -> None:
        with self.factory.begin() as s:
            queue.finish(s, pk=pk, worker=worker, now=utc(now), bound=bound, reason=reason)

    def release(self, *, pk: int, worker: str, now: float, reason: str,
                retry_after: float, refund: bool = False) -> str:
        with self.factory.begin() as s:
            return queue.release(s, pk=pk, worker=worker, now=utc(now), reason=reason,
                                 retry_after=retry_after, refund=refund)

    # -- batches (``core.ports.BatchPlacementStore``): one transaction per call ---------------
    def claim_placing(self, *, worker: str, now: float, lease_seconds: float,
                      limit: int) -> Sequence[queue.QueuedRequest]:
        with self.factory.begin() as s:
            return queue.claim(s, worker=worker, now=utc(now), lease_seconds=lease_seconds,
                               limit=limit, placing=True)

    def reserve_many(self, *, reservations: Sequence[SliceReservation], observed_at: float,
                     worker: str, now: float) -> list[str | None]:
        with self.factory.begin() as s:
            return reservations_.reserve_many(s, reservations=reservations,
                                              observed_at=utc(observed_at), worker=worker,
                                              now=utc(now))

    def release_reservations(self, *, owners: Sequence[str]) -> None:
        if not owners:
            return
        try:
            with self.factory.begin() as s:
                reservations_.release(s, owners=owners)
        except Exception:  # never raises: the sweep drops what a failed release leaves
            log.exception("could not release the reservations of %d owners", len(owners))

    def record_decisions(self, *, decisions: Sequence[tuple[int, Decision]], now: float,
                         decided_by: str) -> list[int]:
        if not decisions:
            return []
        with self.factory.begin() as s:
            return decisions_.record_decisions(s, decisions=decisions, now=utc(now),
                                               decided_by=decided_by)

    def finish_many(self, *, pks: Sequence[int], worker: str, now: float, bound: bool,
                    reason: str | None = None) -> set[int]:
        if not pks:
            return set()
        with self.factory.begin() as s:
            return queue.finish_held(s, pks=pks, worker=worker, now=utc(now), bound=bound,
                                     reason=reason)

    def queue_counts(self) -> Mapping[str, int]:
        with self.factory() as s:
            return queue.queue_counts(s)


class SqlLeaseStore:
    """``core.ports.LeaseStore``: the leader lease, with the takeover's requeue."""

    def __init__(self, factory: Factory) -> None:
        self.factory = factory

    def acquire(self, *, name: str, holder: str, now: float, ttl_s: float,
                renewing: bool) -> LeaseGrant | None:
        at = utc(now)
        with self.factory.begin() as s:
            # Whoever held the lease last, expired or not (a leader renewing needs no look).
            before = None if renewing else leases.current_lease(
                s, name=name, now=datetime.min.replace(tzinfo=UTC))
            lease = leases.acquire_lease(s, name=name, holder=holder, now=at,
                                         ttl_seconds=ttl_s)
            if lease is None:
                return None
            previous = before.holder if before is not None and before.holder != holder \
                else None
            requeued = queue.requeue_claims_of(s, worker=previous, now=at) if previous else 0
        return LeaseGrant(name=name, holder=holder, generation=lease.generation,
                          expires_at=lease.expires_at.timestamp(), took_over_from=previous,
                          requeued=requeued)

    def release(self, *, name: str, holder: str, now: float) -> bool:
        with self.factory.begin() as s:
            return leases.release_lease(s, name=name, holder=holder, now=utc(now))


class SqlFlagStore:
    """``core.ports.FlagStore``."""

    def __init__(self, factory: Factory) -> None:
        self.factory = factory

    def get_flag(self, key: str) -> Mapping[str, Any] | None:
        with self.factory() as s:
            flag = flags.get_flag(s, key)
        return None if flag is None else flag.value

    def set_flag(self, key: str, value: Mapping[str, Any], *, actor: str, now: float) -> None:
        with self.factory.begin() as s:
            flags.set_flag(s, key=key, value=value, actor=actor, now=utc(now))


class SqlWeightSource:
    """``core.ports.WeightSource``."""

    def __init__(self, factory: Factory) -> None:
        self.factory = factory

    def active_weights(self) -> tuple[SchedulerWeights, int] | None:
        with self.factory() as s:
            active = versions.active_weights(s)
        return None if active is None else (active.weights, active.version)


class SqlMetricSink:
    """``core.ports.MetricSink``: points, alert transitions and cost lines together.

    ``notify_alerts``: queue a webhook message when a critical alert starts firing (off
    for simulated history, whose alerts are not news)."""

    def __init__(self, factory: Factory, *, notify_alerts: bool = True) -> None:
        self.factory = factory
        self.notify_alerts = notify_alerts

    def record_sample(self, *, points: Sequence[MetricPoint], alerts: Sequence[AlertTransition],
                      cost_lines: Sequence[CostLine]) -> None:
        with self.factory.begin() as s:
            metrics.add_samples(s, points)
            for a in alerts:
                metrics.record_alert(s, name=a.name, severity=a.severity, state=a.state,
                                     labels=a.labels, summary=a.summary, now=utc(a.at))
                # A critical alert that starts firing queues its webhook message with it.
                if self.notify_alerts:
                    outbox.notify_alert(s, name=a.name, severity=a.severity, state=a.state,
                                        labels=a.labels, summary=a.summary, at=utc(a.at))
            add_cost_lines(s, cost_lines)


class SqlAutoscalingStore:
    """``core.ports.AutoscalingStore``."""

    def __init__(self, factory: Factory) -> None:
        self.factory = factory

    def in_flight_by_deployment(self) -> Mapping[str, int]:
        with self.factory() as s:
            return queue.in_flight_by_deployment(s)

    def latest_request_for(self, *, namespace: str, model: str) -> PlacementRequest | None:
        with self.factory() as s:
            return queue.latest_request_for(s, namespace=namespace, model=model)

    def record_autoscaling(self, record: AutoscalingRecord, *, now: float,
                           enqueue: Sequence[PlacementRequest] = (),
                           removed_requests: Sequence[str] = ()) -> None:
        at = utc(now)
        with self.factory.begin() as s:
            if enqueue:
                queue.enqueue_many(s, enqueue, now=at, source="autoscaler")
            if removed_requests:
                queue.mark_removed(s, request_ids=removed_requests,
                                   reason=f"scaled down: {record.reason}", now=at)
            autoscaling.record_autoscaling(
                s, deployment=record.deployment, action=str(record.action),
                replicas_before=record.replicas_before, replicas_after=record.replicas_after,
                inputs=record.inputs, reason=record.reason, now=at)


class SqlFeedbackStore(SqlWeightSource):
    """``core.controller.feedback.FeedbackStore``."""

    def placed_replicas(self) -> Sequence[PlacedReplica]:
        with self.factory() as s:
            return weights.placed_replicas(s)

    def fleet_qps_series(self, *, since: float, until: float) -> Sequence[tuple[float, float]]:
        with self.factory() as s:
            return metrics.series(s, metric="qps_1m", key=FLEET, since=since, until=until)

    def last_run_at(self) -> float | None:
        with self.factory() as s:
            flag = flags.get_flag(s, FlagKey.FEEDBACK_LAST_RUN)
        return None if flag is None else flag.updated_at.timestamp()

    def publish_run(self, run: Mapping[str, Any], *, actor: str, now: float) -> None:
        with self.factory.begin() as s:
            flags.set_flag(s, key=FlagKey.FEEDBACK_LAST_RUN, value=run, actor=actor,
                           now=utc(now))

    def record_run(self, *, proposal: Proposal | None, auto_apply: bool, author: str,
                   applier: str, actor: str, now: float,
                   run_for: Callable[[int | None, bool], Mapping[str, Any]]) -> int | None:
        at = utc(now)
        with self.factory.begin() as s:
            version = None
            applied = False
            if proposal is not None:
                version = weights.record_proposal(s, proposal, author=author, now=at).version
                if auto_apply:
                    weights.approve(s, version=version, actor=applier,
                                    reason="within the auto-apply bounds", now=at)
                    applied = True
                else:
                    outbox.notify_approval_waiting(
                        s, object_type="weights", object_id=version, now=at,
                        summary=f"Scheduler weights v{version} proposed: {proposal.reason}",
                        fields=(("Improvement", f"{proposal.improvement:.1%}"),))
            flags.set_flag(s, key=FlagKey.FEEDBACK_LAST_RUN, value=run_for(version, applied),
                           actor=actor, now=at)
        return version


class SqlRetentionStore:
    """``core.ports.RetentionStore``: roll-ups and pruning, one short transaction each
    (one coarse bucket of raw samples, or at most ``limit`` deleted rows)."""

    def __init__(self, factory: Factory) -> None:
        self.factory = factory

    def rolled_until(self, *, resolution_s: int) -> float | None:
        with self.factory() as s:
            return metrics.rolled_until(s, resolution_s=resolution_s)

    def roll_up_next(self, *, before_ts: float, resolutions: Sequence[int],
                     max_rows: int) -> RollupBatch | None:
        with self.factory.begin() as s:
            return metrics.roll_up_next(s, before_ts=before_ts, resolutions=resolutions,
                                        max_rows=max_rows)

    def prune_samples(self, *, before_ts: float, limit: int) -> int:
        with self.factory.begin() as s:
            return metrics.prune_samples(s, before_ts=before_ts, limit=limit)

    def prune_rollups(self, *, resolution_s: int, before_ts: float, limit: int) -> int:
        with self.factory.begin() as s:
            return metrics.prune_rollups(s, resolution_s=resolution_s, before_ts=before_ts,
                                         limit=limit)

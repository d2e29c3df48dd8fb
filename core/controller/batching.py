"""One placement pass's store and cluster calls, in batches where the ports allow.

Why: end to end, a placement pass is bounded by round trips, not by deciding
(a decision takes a fraction of a millisecond at 5,000 GPUs; a transaction or
an API request takes milliseconds). A store that implements
``core.ports.BatchPlacementStore`` takes a pass's claims, reservations,
decisions and finishes in one transaction each; a cluster that implements
``core.ports.PodBatchCluster`` creates a pass's pods concurrently and waits
for them with one watch. Any other store or cluster gets the single calls, one
by one, with the same results: these shims are where the two meet, so that
the worker (``core.controller.placement``) has one code path.

Invariants: every batch result is per item and in the items' order; an item
that fails (a claim lost, a reservation conflict, a pod not created) never
fails the others; releasing reservations never raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.errors import SchedulerError
from core.placement import Decision
from core.ports import (
    BatchPlacementStore,
    ClaimLost,
    Cluster,
    PlacementStore,
    PodBatchCluster,
    QueuedItem,
    ReservationConflict,
    SliceReservation,
)


class PassStore:
    """The store calls of a placement pass, batched when the store can."""

    def __init__(self, store: PlacementStore) -> None:
        self.store = store
        self.batch: BatchPlacementStore | None = (
            store if isinstance(store, BatchPlacementStore) else None)

    def claim(self, *, worker: str, now: float, lease_seconds: float, limit: int
              ) -> tuple[list[QueuedItem], list[tuple[QueuedItem, ClaimLost]]]:
        """Claim up to ``limit`` requests and mark them placing: ``(held, lost)``."""
        if self.batch is not None:
            return list(self.batch.claim_placing(worker=worker, now=now,
                                                 lease_seconds=lease_seconds, limit=limit)), []
        held: list[QueuedItem] = []
        lost: list[tuple[QueuedItem, ClaimLost]] = []
        for item in self.store.claim(worker=worker, now=now, lease_seconds=lease_seconds,
                                     limit=limit):
            try:
                self.store.mark_placing(pk=item.pk, worker=worker, now=now)
                held.append(item)
            except ClaimLost as exc:
                lost.append((item, exc))
        return held, lost

    def reserve(self, reservations: Sequence[SliceReservation], *, observed_at: float,
                worker: str, now: float) -> list[str | None]:
        """Per reservation None when it is held now, else why it conflicted."""
        if not reservations:
            return []
        if self.batch is not None:
            return self.batch.reserve_many(reservations=reservations, observed_at=observed_at,
                                           worker=worker, now=now)
        out: list[str | None] = []
        for r in reservations:
            try:
                self.store.reserve(owner=r.owner, node=r.node, gpu_index=r.gpu_index,
                                   thread_pct=r.thread_pct, memory_mib=r.memory_mib,
                                   capacity=r.capacity, observed=r.observed,
                                   observed_at=observed_at, worker=worker, now=now)
                out.append(None)
            except ReservationConflict as exc:
                out.append(str(exc))
        return out

    def release_reservations(self, owners: Sequence[str]) -> None:
        if not owners:
            return
        if self.batch is not None:
            self.batch.release_reservations(owners=owners)
            return
        for owner in owners:
            self.store.release_reservation(owner=owner)

    def record(self, decisions: Sequence[tuple[int, Decision]], *, now: float,
               decided_by: str) -> None:
        if not decisions:
            return
        if self.batch is not None:
            self.batch.record_decisions(decisions=decisions, now=now, decided_by=decided_by)
            return
        for pk, decision in decisions:
            self.store.record_decision(request_pk=pk, decision=decision, now=now,
                                       decided_by=decided_by)

    def finish_bound(self, pks: Sequence[int], *, worker: str, now: float) -> set[int]:
        """Mark the requests bound; the pks still held (a missing one was lost)."""
        if not pks:
            return set()
        if self.batch is not None:
            return self.batch.finish_many(pks=pks, worker=worker, now=now, bound=True)
        finished = set()
        for pk in pks:
            try:
                self.store.finish(pk=pk, worker=worker, now=now, bound=True)
                finished.add(pk)
            except ClaimLost:
                pass
        return finished


def bind_all(cluster: Cluster, pods: Sequence[Mapping[str, Any]]) -> list[Exception | None]:
    """Create the pods (concurrently where the cluster can); per pod None or the error."""
    if isinstance(cluster, PodBatchCluster):
        return cluster.bind_many(pods)
    out: list[Exception | None] = []
    for pod in pods:
        try:
            cluster.bind(pod)
            out.append(None)
        except SchedulerError as exc:
            out.append(exc)
    return out

"""Reservations in the store (``db.reservations``): the checks one placer's snapshot
cannot make alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.model import PlacementRequest
from core.ports import GpuCapacity, HeldSlice, ReservationConflict
from db import queue, reservations
from tests.db.conftest import Store

T0 = datetime(2026, 12, 1, tzinfo=UTC)
GPU = {"node": "a100-0", "gpu_index": 0}
CAP = GpuCapacity(memory_mib=40960, replicas=4)


def reserve(store: Store, owner: str, pct: int = 25, mib: int = 2048, *,
            observed: tuple[HeldSlice, ...] = (), capacity: GpuCapacity = CAP,
            at: datetime = T0) -> None:
    with store.factory.begin() as s:
        reservations.reserve(s, owner=owner, thread_pct=pct, memory_mib=mib, capacity=capacity,
                             observed=observed, observed_at=at, worker="w", now=at, **GPU)


def test_a_second_placer_cannot_take_what_the_first_reserved(store: Store) -> None:
    reserve(store, "a", 50)
    reserve(store, "b", 50)
    with pytest.raises(ReservationConflict, match="threads already held"):
        reserve(store, "c", 25)


def test_memory_and_replicas_are_checked_too(store: Store) -> None:
    reserve(store, "a", 25, 30000)
    with pytest.raises(ReservationConflict, match="MiB already held"):
        reserve(store, "b", 25, 20000)
    for owner in ("b", "c", "d"):
        reserve(store, owner, 10, 100)
    with pytest.raises(ReservationConflict, match="advertised replicas"):
        reserve(store, "e", 10, 100)


def test_what_the_placer_observed_counts_and_is_not_counted_twice(store: Store) -> None:
    running = (HeldSlice("server-0", 50, 10000),)
    reserve(store, "a", 25, observed=running)
    # The snapshot of the next placer shows both: "a" must not count twice.
    both = (*running, HeldSlice("a", 25, 2048))
    reserve(store, "b", 25, observed=both)
    with pytest.raises(ReservationConflict):
        reserve(store, "c", 25, observed=both)


def test_reserving_again_moves_the_reservation_and_release_is_idempotent(store: Store) -> None:
    reserve(store, "a", 100)
    reserve(store, "a", 100)  # the same request again: still fits (it is its own)
    with store.factory.begin() as s:
        assert reservations.release(s, owners=["a"]) == 1
        assert reservations.release(s, owners=["a", "never"]) == 0
    reserve(store, "b", 100)


def test_a_request_that_failed_or_was_removed_holds_nothing(store: Store) -> None:
    with store.factory.begin() as s:
        queue.enqueue(s, PlacementRequest.parse({
            "model_name": "m", "model_memory_gb": 1.5, "priority": "LOW",
            "latency_sla_ms": 500, "request_id": "gone"}), now=T0)
        (item,) = queue.claim(s, worker="w", now=T0, lease_seconds=60, limit=1)
    reserve(store, "gone", 100)
    with pytest.raises(ReservationConflict):
        reserve(store, "other", 25)
    with store.factory.begin() as s:
        queue.finish(s, pk=item.pk, worker="w", now=T0, bound=False, reason="failed")
    reserve(store, "other", 25)  # the failed request's slice is free again
    with store.factory.begin() as s:
        assert reservations.sweep(s) == 1


def test_an_old_reservation_the_cluster_no_longer_shows_holds_nothing(store: Store) -> None:
    reserve(store, "evicted", 100, at=T0)
    later = T0 + timedelta(minutes=5)
    # Five minutes on, the pod is not in the snapshot any more (evicted, failed): free.
    reserve(store, "next", 100, at=later)
    # A fresh one (its pod may not be visible yet) still counts.
    with pytest.raises(ReservationConflict):
        reserve(store, "third", 25, at=later + timedelta(seconds=1))

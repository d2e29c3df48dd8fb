"""GPU reservations in the store: the guarantee that no GPU is ever over-committed.

A placer's snapshot is its own; two placers (console tabs, console replicas, a
controller) that overlap would otherwise book the same free slice. So a
reservation is a transaction that first takes the GPU's lock row (an upsert:
PostgreSQL holds the row lock until commit, SQLite its single write lock), then
checks threads, memory and advertised replicas against everything held on the
GPU — the slices the placer observed in the cluster, united by owner with the
store's own reservations of requests still claimed, placing or bound — and
fails with ``ReservationConflict`` if the new slice does not fit. Reserving is
idempotent per request (``owner``): reserving again moves the reservation, and
releasing never raises. The caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, or_, select, tuple_
from sqlalchemy.orm import Session

from core.ports import GpuCapacity, HeldSlice, ReservationConflict, SliceReservation
from core.states import RequestState
from db.base import upsert_insert
from db.models import GpuLockRow, GpuReservationRow, PlacementRequestRow

# Requests whose reservations no longer hold anything.
_RELEASED = (RequestState.QUEUED, RequestState.FAILED, RequestState.REMOVED)
_CHUNK = 500  # GPUs or owners per statement (bound parameters stay well within limits)


def _lock(s: Session, node: str, gpu_index: int) -> None:
    stmt = upsert_insert(s)(GpuLockRow).values(node=node, gpu_index=gpu_index, version=1)
    s.execute(stmt.on_conflict_do_update(
        index_elements=["node", "gpu_index"], set_={"version": GpuLockRow.version + 1}))


def held_in_store(s: Session, *, node: str, gpu_index: int
                  ) -> list[tuple[HeldSlice, datetime]]:
    """The store's reservations on one GPU that still hold (their request is not
    queued, failed or removed; a reservation without a request row holds), with
    when each was made."""
    G, R = GpuReservationRow, PlacementRequestRow
    rows = s.execute(
        select(G.owner, G.thread_pct, G.memory_mib, G.reserved_at)
        .outerjoin(R, R.request_id == G.owner)
        .where(G.node == node, G.gpu_index == gpu_index,
               or_(R.status.is_(None), R.status.not_in(_RELEASED)))).all()
    return [(HeldSlice(owner=o, thread_pct=int(t), memory_mib=int(m)), at)
            for o, t, m, at in rows]


def reserve(s: Session, *, owner: str, node: str, gpu_index: int, thread_pct: int,
            memory_mib: int, capacity: GpuCapacity, observed: Sequence[HeldSlice],
            observed_at: datetime, worker: str, now: datetime,
            visible_after_s: float = 30.0) -> None:
    """Hold ``thread_pct`` % and ``memory_mib`` of the GPU for ``owner``, or raise
    ``ReservationConflict`` (nothing written) when it does not fit.

    ``observed`` is what the placer's snapshot, read at ``observed_at``, shows on the
    GPU. A stored reservation counts when its slice is observed, or when it is too
    recent to be in the snapshot (made less than ``visible_after_s`` before it was
    read: its pod may not exist yet). An older one the snapshot does not show is a
    pod that went away (evicted, failed, deleted) and holds nothing any more."""
    if not 1 <= thread_pct <= 100 or memory_mib < 0:
        raise ReservationConflict(f"invalid slice {thread_pct} % / {memory_mib} MiB")
    _lock(s, node, gpu_index)
    held = {h.owner: h for h in observed if h.owner != owner}
    horizon = observed_at - timedelta(seconds=visible_after_s)
    for h, at in held_in_store(s, node=node, gpu_index=gpu_index):
        if h.owner != owner and (h.owner in held or at > horizon):
            held[h.owner] = h
    conflict = _conflict(f"{node}/{gpu_index}", thread_pct=thread_pct, memory_mib=memory_mib,
                         capacity=capacity, held=held.values())
    if conflict is not None:
        raise ReservationConflict(conflict)
    s.execute(delete(GpuReservationRow).where(GpuReservationRow.owner == owner))
    s.add(GpuReservationRow(owner=owner, node=node, gpu_index=gpu_index,
                            thread_pct=thread_pct, memory_mib=memory_mib, reserved_by=worker,
                            reserved_at=now))
    s.flush()


def _conflict(where: str, *, thread_pct: int, memory_mib: int, capacity: GpuCapacity,
              held: Iterable[HeldSlice]) -> str | None:
    """Why the slice does not fit beside ``held`` (None when it does)."""
    held = list(held)
    threads = sum(h.thread_pct for h in held)
    memory = sum(h.memory_mib for h in held)
    if threads + thread_pct > capacity.thread_pct:
        return (f"{where}: {threads} % of threads already held, {thread_pct} % more does "
                "not fit (another placer took it first)")
    if memory + memory_mib > capacity.memory_mib:
        return (f"{where}: {memory} MiB already held of {capacity.memory_mib} MiB, "
                f"{memory_mib} MiB more does not fit (another placer took it first)")
    if capacity.replicas is not None and len(held) + 1 > capacity.replicas:
        return (f"{where}: all {capacity.replicas} advertised replicas are held "
                "(another placer took the last one first)")
    return None


def _lock_many(s: Session, gpus: Sequence[tuple[str, int]]) -> None:
    """Take the lock rows of ``gpus`` in one sorted order, the same for every placer, so
    that two batches over the same GPUs never wait on each other in a cycle."""
    insert = upsert_insert(s)
    for start in range(0, len(gpus), _CHUNK):
        stmt = insert(GpuLockRow).values([{"node": n, "gpu_index": g, "version": 1}
                                          for n, g in gpus[start:start + _CHUNK]])
        s.execute(stmt.on_conflict_do_update(
            index_elements=["node", "gpu_index"], set_={"version": GpuLockRow.version + 1}))


def held_in_store_many(s: Session, *, gpus: Sequence[tuple[str, int]]
                       ) -> dict[tuple[str, int], list[tuple[HeldSlice, datetime]]]:
    """``held_in_store`` for many GPUs in one query per chunk, by ``(node, gpu index)``."""
    G, R = GpuReservationRow, PlacementRequestRow
    out: dict[tuple[str, int], list[tuple[HeldSlice, datetime]]] = {g: [] for g in gpus}
    for start in range(0, len(gpus), _CHUNK):
        rows = s.execute(
            select(G.node, G.gpu_index, G.owner, G.thread_pct, G.memory_mib, G.reserved_at)
            .outerjoin(R, R.request_id == G.owner)
            .where(tuple_(G.node, G.gpu_index).in_(list(gpus[start:start + _CHUNK])),
                   or_(R.status.is_(None), R.status.not_in(_RELEASED)))).all()
        for node, gpu, o, t, m, at in rows:
            out[(node, int(gpu))].append(
                (HeldSlice(owner=o, thread_pct=int(t), memory_mib=int(m)), at))
    return out


def reserve_many(s: Session, *, reservations: Sequence[SliceReservation],
                 observed_at: datetime, worker: str, now: datetime,
                 visible_after_s: float = 30.0) -> list[str | None]:
    """``reserve`` for a batch, in order: per item None when it was reserved, else why it
    conflicted (nothing is written for that item, the others still are).

    Every GPU of the batch is locked first (in sorted order); then each slice is checked
    as ``reserve`` checks it, against what the placer observed, the store's reservations
    and the slices reserved earlier in this batch."""
    if not reservations:
        return []
    gpus = sorted({(r.node, r.gpu_index) for r in reservations})
    _lock_many(s, gpus)
    stored = held_in_store_many(s, gpus=gpus)
    horizon = observed_at - timedelta(seconds=visible_after_s)
    added: dict[tuple[str, int], dict[str, HeldSlice]] = {g: {} for g in gpus}
    results: list[str | None] = []
    rows: list[dict[str, object]] = []
    for r in reservations:
        gpu = (r.node, r.gpu_index)
        if not 1 <= r.thread_pct <= 100 or r.memory_mib < 0:
            results.append(f"invalid slice {r.thread_pct} % / {r.memory_mib} MiB")
            continue
        held = {h.owner: h for h in r.observed if h.owner != r.owner}
        for h, at in stored[gpu]:
            if h.owner != r.owner and (h.owner in held or at > horizon):
                held[h.owner] = h
        held.update((o, h) for o, h in added[gpu].items() if o != r.owner)
        conflict = _conflict(f"{r.node}/{r.gpu_index}", thread_pct=r.thread_pct,
                             memory_mib=r.memory_mib, capacity=r.capacity,
                             held=held.values())
        results.append(conflict)
        if conflict is None:
            for other in added.values():  # reserving again in one batch moves the slice
                other.pop(r.owner, None)
            added[gpu][r.owner] = HeldSlice(owner=r.owner, thread_pct=r.thread_pct,
                                            memory_mib=r.memory_mib)
            rows = [row for row in rows if row["owner"] != r.owner]
            rows.append({"owner": r.owner, "node": r.node, "gpu_index": r.gpu_index,
                         "thread_pct": r.thread_pct, "memory_mib": r.memory_mib,
                         "reserved_by": worker, "reserved_at": now})
    if rows:
        owners = [str(row["owner"]) for row in rows]
        for start in range(0, len(owners), _CHUNK):
            s.execute(delete(GpuReservationRow)
                      .where(GpuReservationRow.owner.in_(owners[start:start + _CHUNK])))
        s.execute(insert(GpuReservationRow), rows)
    return results


def release(s: Session, *, owners: Iterable[str]) -> int:
    """Drop the reservations of ``owners`` (idempotent)."""
    wanted = list(owners)
    if not wanted:
        return 0
    return int(s.execute(delete(GpuReservationRow)
                         .where(GpuReservationRow.owner.in_(wanted))).rowcount or 0)


def sweep(s: Session) -> int:
    """Drop reservations whose request no longer holds anything (failed, removed,
    requeued); returns how many."""
    G, R = GpuReservationRow, PlacementRequestRow
    stale = select(R.request_id).where(R.status.in_(_RELEASED))
    return int(s.execute(delete(G).where(G.owner.in_(stale))
                         .execution_options(synchronize_session=False)).rowcount or 0)

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
from typing import Any

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
    postgres = s.get_bind().dialect.name == "postgresql"
    if postgres:
        stored = _lock_and_read_pg(s, gpus)
    else:
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
    if rows and postgres:
        _write_pg(s, rows, worker=worker, now=now)
    elif rows:
        owners = [str(row["owner"]) for row in rows]
        for start in range(0, len(owners), _CHUNK):
            s.execute(delete(GpuReservationRow)
                      .where(GpuReservationRow.owner.in_(owners[start:start + _CHUNK])))
        s.execute(insert(GpuReservationRow), rows)
    return results


# PostgreSQL: the batch's statements with its GPUs and owners as array parameters, sent
# on the session's own connection (its transaction). Through SQLAlchemy, a multi-row
# upsert and a tuple IN list are compiled and their hundreds of parameters bound and
# adapted one by one at every call: most of a reservation's cost to the placer's CPU.
_LOCK_PG = (f"INSERT INTO {GpuLockRow.__tablename__} (node, gpu_index, version) "
            "SELECT n, g, 1 FROM unnest(%s::varchar[], %s::int[]) WITH ORDINALITY AS t(n, g, i) "
            "ORDER BY i ON CONFLICT (node, gpu_index) DO UPDATE "
            f"SET version = {GpuLockRow.__tablename__}.version + 1")
_HELD_PG = (f"SELECT g.node, g.gpu_index, g.owner, g.thread_pct, g.memory_mib, g.reserved_at "
            f"FROM {GpuReservationRow.__tablename__} g "
            "JOIN unnest(%s::varchar[], %s::int[]) AS t(n, gi) "
            "ON g.node = t.n AND g.gpu_index = t.gi "
            f"LEFT JOIN {PlacementRequestRow.__tablename__} r ON r.request_id = g.owner "
            "WHERE r.status IS NULL OR r.status <> ALL(%s::varchar[])")
_DELETE_PG = f"DELETE FROM {GpuReservationRow.__tablename__} WHERE owner = ANY(%s::varchar[])"
_INSERT_PG = (f"INSERT INTO {GpuReservationRow.__tablename__} "
              "(owner, node, gpu_index, thread_pct, memory_mib, reserved_by, reserved_at) "
              "SELECT o, n, g, t, m, %s, %s FROM unnest(%s::varchar[], %s::varchar[], "
              "%s::int[], %s::int[], %s::int[]) AS x(o, n, g, t, m)")


def _raw_cursor(s: Session) -> Any:
    raw = s.connection().connection.driver_connection
    assert raw is not None
    return raw.cursor()


def _lock_and_read_pg(s: Session, gpus: Sequence[tuple[str, int]]
                      ) -> dict[tuple[str, int], list[tuple[HeldSlice, datetime]]]:
    """``_lock_many`` then ``held_in_store_many``, as two statements (the locks are taken
    in the sorted order of ``gpus``, as ``_lock_many`` takes them)."""
    nodes, indexes = [n for n, _ in gpus], [g for _, g in gpus]
    out: dict[tuple[str, int], list[tuple[HeldSlice, datetime]]] = {g: [] for g in gpus}
    with _raw_cursor(s) as cur:
        cur.execute(_LOCK_PG, (nodes, indexes))
        cur.execute(_HELD_PG, (nodes, indexes, [str(st.value) for st in _RELEASED]))
        for node, gpu, o, t, m, at in cur.fetchall():
            out[(node, int(gpu))].append(
                (HeldSlice(owner=o, thread_pct=int(t), memory_mib=int(m)), at))
    return out


def _write_pg(s: Session, rows: Sequence[dict[str, Any]], *, worker: str,
              now: datetime) -> None:
    """Move the batch's reservations: drop the owners' old rows, insert the new ones."""
    if now.tzinfo is None:  # as ``UtcDateTime`` refuses
        raise ValueError("naive datetime given to a UTC column; use datetime.now(UTC)")
    owners = [str(r["owner"]) for r in rows]
    with _raw_cursor(s) as cur:
        cur.execute(_DELETE_PG, (owners,))
        cur.execute(_INSERT_PG, (worker, now, owners, [str(r["node"]) for r in rows],
                                 [int(r["gpu_index"]) for r in rows],
                                 [int(r["thread_pct"]) for r in rows],
                                 [int(r["memory_mib"]) for r in rows]))


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

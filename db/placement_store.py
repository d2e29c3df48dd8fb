"""The store behind the controller's ``PlacementStore`` port: one transaction per call."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from core.placement import Decision
from db import decisions, queue


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class SqlPlacementStore:
    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def claim(self, *, worker: str, now: float, lease_seconds: float,
              limit: int) -> Sequence[queue.QueuedRequest]:
        with self.factory.begin() as s:
            return queue.claim(s, worker=worker, now=_dt(now), lease_seconds=lease_seconds,
                              limit=limit)

    def mark_placing(self, *, pk: int, worker: str, now: float) -> None:
        with self.factory.begin() as s:
            queue.mark_placing(s, pk=pk, worker=worker, now=_dt(now))

    def record_decision(self, *, request_pk: int, decision: Decision, now: float,
                        decided_by: str) -> int:
        with self.factory.begin() as s:
            return decisions.record_decision(s, request_pk=request_pk, decision=decision,
                                        now=_dt(now), decided_by=decided_by)

    def finish(self, *, pk: int, worker: str, now: float, bound: bool,
               reason: str | None = None) -> None:
        with self.factory.begin() as s:
            queue.finish(s, pk=pk, worker=worker, now=_dt(now), bound=bound, reason=reason)

    def release(self, *, pk: int, worker: str, now: float, reason: str,
                retry_after: float) -> str:
        with self.factory.begin() as s:
            return queue.release(s, pk=pk, worker=worker, now=_dt(now), reason=reason,
                                retry_after=retry_after)

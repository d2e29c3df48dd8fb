"""Leader leases: renewed or taken over with one ``UPDATE … WHERE holder = me OR
expired``, created with ``INSERT … ON CONFLICT DO NOTHING``, so two controllers
never both lead. The caller owns the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, or_, update
from sqlalchemy.orm import Session

from db.base import upsert_insert
from db.models import (
    LeaderLeaseRow,
)


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    holder: str
    generation: int
    acquired_at: datetime
    expires_at: datetime


def acquire_lease(s: Session, *, name: str, holder: str, now: datetime,
                  ttl_seconds: float) -> Lease | None:
    """Renew ``holder``'s lease or take over an expired one; None when another leads."""
    L = LeaderLeaseRow
    expires = now + timedelta(seconds=ttl_seconds)
    is_mine = L.holder == holder
    renewed = s.execute(
        update(L).where(L.name == name, or_(is_mine, L.expires_at <= now))
        .values(generation=case((is_mine, L.generation), else_=L.generation + 1),
                acquired_at=case((is_mine, L.acquired_at), else_=now),
                holder=holder, renewed_at=now, expires_at=expires)
        .returning(L.generation, L.acquired_at)).first()
    if renewed is None:
        created = s.execute(
            upsert_insert(s)(L).values(name=name, holder=holder, generation=1,
                                        acquired_at=now, renewed_at=now, expires_at=expires)
            .on_conflict_do_nothing(index_elements=["name"]).returning(L.name)).first()
        if created is None:
            return None
        return Lease(name, holder, 1, now, expires)
    generation, acquired_at = renewed
    return Lease(name, holder, int(generation), acquired_at, expires)


def release_lease(s: Session, *, name: str, holder: str, now: datetime) -> bool:
    L = LeaderLeaseRow
    return s.execute(update(L).where(L.name == name, L.holder == holder, L.expires_at > now)
                     .values(expires_at=now, renewed_at=now)).rowcount == 1


def current_lease(s: Session, *, name: str, now: datetime) -> Lease | None:
    row = s.get(LeaderLeaseRow, name)
    if row is None or row.expires_at <= now:
        return None
    return Lease(row.name, row.holder, row.generation, row.acquired_at, row.expires_at)



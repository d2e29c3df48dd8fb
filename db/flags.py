"""Control flags: durable operator switches and status the controller publishes,
one JSON value per key (last writer wins)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from db.base import upsert_insert
from db.models import (
    ControlFlagRow,
)


@dataclass(frozen=True, slots=True)
class Flag:
    key: str
    value: dict[str, Any]
    updated_by: str
    updated_at: datetime


def set_flag(s: Session, *, key: str, value: Mapping[str, Any], actor: str,
             now: datetime) -> None:
    """Create or replace one durable switch (last writer wins)."""
    F = ControlFlagRow
    stmt = upsert_insert(s)(F).values(key=key, value=dict(value), updated_by=actor,
                                       updated_at=now)
    s.execute(stmt.on_conflict_do_update(
        index_elements=["key"],
        set_={"value": stmt.excluded.value, "updated_by": stmt.excluded.updated_by,
              "updated_at": stmt.excluded.updated_at}))


def get_flag(s: Session, key: str) -> Flag | None:
    row = s.get(ControlFlagRow, key)
    if row is None:
        return None
    return Flag(row.key, dict(row.value), row.updated_by, row.updated_at)



"""The Audit page's reads: the merged trail of actions, refusals and decisions, filtered
in the store, and its CSV (text cells neutralized like the cost reports')."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from app import services
from core.cost import to_csv
from core.errors import ValidationError
from db import audit

COLUMNS = ("time (UTC)", "source", "actor", "role", "action", "outcome", "object",
           "reason", "shown")
MAX_OBJECT_FILTER = 128


@dataclass(frozen=True)
class TrailFilter:
    since: datetime | None = None
    until: datetime | None = None
    actor: str = ""
    action: str = ""
    object_text: str = ""
    limit: int = 500

    def check(self) -> TrailFilter:
        if self.since and self.until and self.since >= self.until:
            raise ValidationError("range", "the start is not before the end")
        if len(self.object_text) > MAX_OBJECT_FILTER:
            raise ValidationError("object", f"at most {MAX_OBJECT_FILTER} characters")
        if not 1 <= self.limit <= audit.MAX_TRAIL_ROWS:
            raise ValidationError("limit", f"must be within 1..{audit.MAX_TRAIL_ROWS}")
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "actor": self.actor,
                "action": self.action, "object": self.object_text, "limit": self.limit}


def facets() -> tuple[list[str], list[str]]:
    """Known actors and actions, for the filters."""
    with services.store_call(), services.runtime().factory() as s:
        actors, actions = audit.trail_facets(s)
    extra = ["place", "place-failed", "scale-up", "scale-down", "scale-hold"]
    return sorted({*actors, "controller"}), sorted({*actions, *extra})


def trail(f: TrailFilter) -> list[audit.TrailEntry]:
    f = f.check()
    with services.store_call(), services.runtime().factory() as s:
        return audit.trail(s, since=f.since, until=f.until, actor=f.actor or None,
                           action=f.action or None, object_text=f.object_text, limit=f.limit)


def rows(entries: list[audit.TrailEntry]) -> list[dict[str, Any]]:
    """One row per entry, as the table shows it and the CSV holds it."""
    return [{
        "time (UTC)": e.at.strftime("%Y-%m-%d %H:%M:%S"),
        "source": e.source, "actor": e.actor, "role": e.details.get("role", ""),
        "action": e.action, "outcome": e.outcome,
        "object": f"{e.object_type}:{e.object_id}" if e.object_id else e.object_type,
        "reason": e.reason,
        "shown": json.dumps(e.shown, sort_keys=True, default=str) if e.shown else "",
    } for e in entries]


def frame(entries: list[audit.TrailEntry]) -> pd.DataFrame:
    return pd.DataFrame(rows(entries), columns=list(COLUMNS))


def csv_text(entries: list[audit.TrailEntry]) -> str:
    return to_csv(rows(entries), columns=COLUMNS)

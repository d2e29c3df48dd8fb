"""Batch uploads of placement requests (YAML or CSV), validated all-or-nothing.

Every row is validated before anything is returned: one bad row refuses the
whole batch with an error naming the row and the field, so nothing half is
ever enqueued.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import yaml

from core.errors import ValidationError
from core.model import PlacementRequest

MAX_ROWS = 10_000


def _rows_from_yaml(text: str) -> list[Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValidationError("file", f"is not valid YAML{where}") from None
    if isinstance(data, dict) and "requests" in data:
        data = data["requests"]
    if not isinstance(data, list):
        raise ValidationError("file", "YAML must be a list of requests (or {requests: [...]})")
    return data


def _rows_from_csv(text: str) -> list[Any]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise ValidationError("file", "CSV has no header row")
    rows = []
    for row in reader:
        if None in row:
            raise ValidationError(f"row {reader.line_num}", "has more cells than the header")
        labels = {}
        for key in [k for k in row if k.startswith("label.")]:
            if row[key]:
                labels[key[len("label."):]] = row[key]
            del row[key]
        clean: dict[str, Any] = {k: v for k, v in row.items() if v not in (None, "")}
        if labels:
            clean["labels"] = labels
        rows.append(clean)
    return rows


def parse_batch(text: str, *, kind: str, max_gpu_memory_gb: float | None = None,
                ) -> list[PlacementRequest]:
    """Requests from a YAML or CSV document; raises ``ValidationError`` naming row and field."""
    if kind not in ("yaml", "csv"):
        raise ValidationError("file", "must be .yaml, .yml or .csv")
    rows = _rows_from_yaml(text) if kind == "yaml" else _rows_from_csv(text)
    if not rows:
        raise ValidationError("file", "holds no requests")
    if len(rows) > MAX_ROWS:
        raise ValidationError("file", f"holds {len(rows)} requests; at most {MAX_ROWS}")
    out = []
    for i, raw in enumerate(rows, start=1):
        try:
            out.append(PlacementRequest.parse(raw, max_gpu_memory_gb=max_gpu_memory_gb))
        except ValidationError as exc:
            raise ValidationError(f"request {i}: {exc.field}", exc.message) from None
    ids = [r.request_id for r in out if r.request_id]
    if len(ids) != len(set(ids)):
        raise ValidationError("request_id", "appears more than once in the batch")
    return out

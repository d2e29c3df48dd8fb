"""JSON on the wire for the feedback payloads: rounded going out, validated coming in.

Why: a proposal's evidence and the published last run cross processes (the
controller writes them to the store; consoles, possibly of another version,
read them back). Going out, every number is rounded and finite or ``null``, so
the JSON is plain and equal inputs give equal text. Coming in, ``Fields`` reads
one JSON object and raises ``ValidationError`` naming the full path of the
first bad field (``feedback.last_run.scored[2].sla``): a garbled payload is
refused whole, never half-read.

Invariants: ``num``/``money_value`` are idempotent (a value read back and
written again is the same JSON), and ``Fields`` never returns NaN, infinities,
booleans where numbers are expected, or naive datetimes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeVar

from core.errors import ValidationError
from core.model import SchedulerWeights

E = TypeVar("E", bound=StrEnum)


# ---------------------------------------------------------------------------- out
def num(x: float | Decimal | None, digits: int = 6) -> float | None:
    """A JSON-safe number: rounded, ``None`` for missing or non-finite values."""
    if x is None:
        return None
    v = float(x)
    return round(v, digits) if math.isfinite(v) else None


def dec(x: float) -> Decimal:
    """A float as a Decimal with nine places (0 for a non-finite value)."""
    return Decimal(f"{x:.9f}") if math.isfinite(x) else Decimal(0)


def money_value(x: float | Decimal | None, digits: int = 8) -> Decimal | None:
    """Money rounded the way the JSON stores it, so it reads back equal."""
    v = num(x, digits)
    return None if v is None else Decimal(repr(v))


def money_json(x: Decimal | None) -> float | None:
    return None if x is None else float(x)


def weights_value(w: SchedulerWeights) -> SchedulerWeights:
    """Weights rounded the way the JSON stores them (nine places)."""
    return SchedulerWeights(**weights_json(w))


def weights_json(w: SchedulerWeights) -> dict[str, float]:
    return {c: round(v, 9) for c, v in w.as_dict().items()}


def dollars(x: Decimal) -> str:
    return f"${x:.4f}" if x >= Decimal("0.01") else f"${x:.6f}"


# ---------------------------------------------------------------------------- in
class Fields:
    """One JSON object read field by field, each failure naming ``path.key``.

    Optional readers (``opt_*``) take a missing key like ``null``: a field added
    later reads as unknown in an older payload.
    """

    __slots__ = ("_data", "path")

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ValidationError(path, "must be a JSON object")
        self._data: Mapping[str, Any] = data
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def has(self, key: str) -> bool:
        return self._data.get(key) is not None

    def raw(self, key: str) -> Any:
        if key not in self._data or self._data[key] is None:
            raise ValidationError(self.at(key), "is missing")
        return self._data[key]

    def text(self, key: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str):
            raise ValidationError(self.at(key), "must be text")
        return value

    def flag(self, key: str) -> bool:
        value = self.raw(key)
        if not isinstance(value, bool):
            raise ValidationError(self.at(key), "must be true or false")
        return value

    def count(self, key: str) -> int:
        """A whole number ≥ 0."""
        return _count(self.at(key), self.raw(key))

    def opt_count(self, key: str) -> int | None:
        return self.count(key) if self.has(key) else None

    def real(self, key: str, *, low: float | None = None, high: float | None = None) -> float:
        return _real(self.at(key), self.raw(key), low=low, high=high)

    def opt_real(self, key: str, *, low: float | None = None,
                 high: float | None = None) -> float | None:
        return self.real(key, low=low, high=high) if self.has(key) else None

    def money(self, key: str) -> Decimal:
        """Dollars ≥ 0 (a JSON number), as the Decimal it was written from."""
        value = self.real(key, low=0.0)
        return Decimal(repr(value))

    def opt_money(self, key: str) -> Decimal | None:
        return self.money(key) if self.has(key) else None

    def choice(self, key: str, enum: type[E]) -> E:
        value = self.text(key)
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(m.value for m in enum)
            raise ValidationError(self.at(key), f"{value!r} is not one of {allowed}") from None

    def when(self, key: str) -> datetime:
        """An ISO 8601 timestamp with its time zone."""
        value = self.text(key)
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(self.at(key), f"{value!r} is not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            raise ValidationError(self.at(key), "needs a time zone")
        return parsed

    def weights(self, key: str) -> SchedulerWeights:
        raw = self.raw(key)
        if not isinstance(raw, Mapping):
            raise ValidationError(self.at(key), "must be a JSON object")
        try:
            return SchedulerWeights.from_mapping(raw)
        except ValidationError as exc:
            rest = exc.field.removeprefix("weights").lstrip(".")
            raise ValidationError(self.at(key) + (f".{rest}" if rest else ""),
                                  exc.message) from None

    def obj(self, key: str) -> Fields:
        return Fields(self.raw(key), self.at(key))

    def objects(self, key: str) -> list[Fields]:
        """A list of JSON objects (an empty list when the key is missing or null)."""
        if not self.has(key):
            return []
        value = self._data[key]
        if not isinstance(value, list):
            raise ValidationError(self.at(key), "must be a list")
        return [Fields(v, f"{self.at(key)}[{i}]") for i, v in enumerate(value)]


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(name, "must be a whole number")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValidationError(name, "must be a whole number")
    if value < 0:
        raise ValidationError(name, "must be ≥ 0")
    return int(value)


def _real(name: str, value: Any, *, low: float | None, high: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(name, "must be a number")
    v = float(value)
    if not math.isfinite(v):
        raise ValidationError(name, "must be a finite number")
    if low is not None and v < low:
        raise ValidationError(name, f"must be ≥ {low:g}")
    if high is not None and v > high:
        raise ValidationError(name, f"must be ≤ {high:g}")
    return v

"""Validation of untrusted scalars into typed values, naming the field on error.

Shared by request parsing and settings parsing so that both refuse the same
inputs (booleans, NaN, infinities, text that is not a number) the same way.
"""

from __future__ import annotations

import math
from typing import Any

from core.errors import ValidationError


def number(name: str, value: Any) -> float:
    """A finite float; ``None``, booleans, NaN and infinities are refused."""
    if value is None or isinstance(value, bool):
        raise ValidationError(name, "is required and must be a number")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ValidationError(name, f"{value!r} is not a number") from None
    if not math.isfinite(result):
        raise ValidationError(name, "must be a finite number")
    return result


def integer(name: str, value: Any) -> int:
    """A whole number (``2.0`` is accepted, ``2.5`` is not)."""
    result = number(name, value)
    if result != int(result):
        raise ValidationError(name, "must be a whole number")
    return int(result)

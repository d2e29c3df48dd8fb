"""Validation of untrusted scalars into typed values, naming the field on error.

Shared by request parsing and settings parsing so that both refuse the same
inputs (booleans, NaN, infinities, text that is not a number) the same way.

Invariant: a value is type-checked before anything is computed from it. No
``str()``, ``repr()`` or ``float()`` is ever applied to a container or an
object of unknown type, and an error message quotes at most ``SHOWN_CHARS``
characters of a value, so a hostile value (a nested structure, a megabyte of
text, an integer of ten thousand digits) costs nothing to refuse.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, TypeVar

from core.errors import ValidationError

T = TypeVar("T")

# The longest text that is still read as a number (a float has at most ~25 characters).
MAX_NUMBER_TEXT = 64
# How much of a value an error message quotes.
SHOWN_CHARS = 40
# Integers beyond this many bits are described, never printed (str() of a huge int is slow
# and, past 4300 digits, raises).
_MAX_SHOWN_INT_BITS = 128


def kind_of(value: Any) -> str:
    """What ``value`` is, in words, computed from its type alone (never from its contents)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return "text"
    if isinstance(value, numbers.Number | Decimal):
        return "a number"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple | set | frozenset):
        return "a list"
    if isinstance(value, datetime | date | time):
        return "a date or time"
    if isinstance(value, bytes | bytearray):
        return "binary data"
    return f"a value of type {type(value).__name__}"


def show(value: Any) -> str:
    """A short, safe rendering of ``value`` for an error message.

    Text is quoted and cut at ``SHOWN_CHARS`` characters; small numbers are
    printed; anything else is described by its type (``kind_of``).
    """
    # The built-in methods, never a subclass's own __repr__.
    if isinstance(value, str):
        if len(value) <= SHOWN_CHARS:
            return str.__repr__(value)
        return str.__repr__(value[:SHOWN_CHARS]) + f"… ({len(value)} characters)"
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if isinstance(value, int):
        return int.__repr__(value) if value.bit_length() <= _MAX_SHOWN_INT_BITS \
            else "a huge integer"
    if isinstance(value, float):
        return float.__repr__(value)
    return kind_of(value)


def number(name: str, value: Any) -> float:
    """A finite float from a number or a numeric text.

    ``None``, booleans, NaN, infinities, containers and any other type are
    refused by type before any conversion is tried.
    """
    if value is None or isinstance(value, bool):
        raise ValidationError(name, "is required and must be a number")
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_TEXT:
            raise ValidationError(name, f"{show(value)} is not a number")
        try:
            result = float(value)
        except ValueError:
            raise ValidationError(name, f"{show(value)} is not a number") from None
    elif isinstance(value, numbers.Real | Decimal):
        try:
            result = float(value)
        except OverflowError:
            raise ValidationError(name, "is too large") from None
    else:
        raise ValidationError(name, f"must be a number, not {kind_of(value)}")
    if not math.isfinite(result):
        raise ValidationError(name, "must be a finite number")
    return result


def integer(name: str, value: Any) -> int:
    """A whole number (``2.0`` is accepted, ``2.5`` is not)."""
    result = number(name, value)
    if result != int(result):
        raise ValidationError(name, "must be a whole number")
    return int(result)


def text(name: str, value: Any, *, max_length: int) -> str:
    """Text of at most ``max_length`` characters, stripped; any other type is refused."""
    if not isinstance(value, str):
        raise ValidationError(name, f"must be text, not {kind_of(value)}")
    if len(value) > max_length:
        raise ValidationError(name, f"is longer than {max_length} characters "
                                    f"({len(value)})")
    return value.strip()


def dataclass_from_table(cls: type[T], raw: Any, *, section: str) -> T:
    """``cls(**raw)`` for a settings table of a flat dataclass: a non-table or an unknown key
    is refused, naming it (each field's own checks run in ``cls.__post_init__``)."""
    from dataclasses import fields

    if not isinstance(raw, Mapping):
        raise ValidationError(section, "must be a table of settings")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    for key in raw:
        if key not in known:
            raise ValidationError(f"{section}.{key}", "unknown setting; expected one of "
                                                      f"{', '.join(sorted(known))}")
    return cls(**dict(raw))

"""Trace replay: requests of a recorded trace (arrival time, prompt and output tokens).

Why: the twin must be driven by real traffic (the Azure LLM inference trace,
or any CSV with the same columns) to evaluate placement on it.

Parsing is pure (``parse_trace`` over an iterable of lines). Reading a file is
the one edge in this module (``read_trace``). Invariants: a ``Trace`` has at
least one request, sorted arrival offsets starting at 0 (relative to the
earliest row), and non-negative integer token counts; a malformed file is
refused with a ``ValidationError`` naming the column and the line.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import numpy as np

from core.errors import ValidationError
from core.sim.traffic import Arrivals

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass(frozen=True, slots=True)
class Trace:
    offsets_s: np.ndarray  # float64, sorted, first = 0
    prefill_tokens: np.ndarray  # int64
    decode_tokens: np.ndarray  # int64
    start_epoch: float  # epoch seconds of the earliest row (naive timestamps read as UTC)
    source: str = "trace"

    @property
    def size(self) -> int:
        return int(self.offsets_s.shape[0])

    @property
    def duration_s(self) -> float:
        return float(self.offsets_s[-1])

    def per_minute_counts(self) -> np.ndarray:
        """Requests per minute, minute 0 starting at the earliest row."""
        return np.bincount((self.offsets_s // 60).astype(np.int64))


def parse_trace(lines: Iterable[str], *, source: str = "trace") -> Trace:
    """Parse CSV lines with the columns ``TIMESTAMP, ContextTokens, GeneratedTokens``.

    Other columns are ignored; column order is free. Timestamps are ISO 8601
    (``2023-11-16 18:17:03.9799600``; up to 7 fractional digits are accepted,
    naive times are UTC). Unsorted rows are sorted by time.
    """
    reader = csv.reader(lines)
    try:
        header = [h.strip().lstrip("\ufeff") for h in next(reader)]
    except StopIteration:
        raise ValidationError(COLUMNS[0], f"{source} is empty: expected a header with "
                              f"{', '.join(COLUMNS)}") from None
    position = {}
    for column in COLUMNS:
        if column not in header:
            raise ValidationError(column, f"{source} has no {column} column "
                                  f"(its header is: {', '.join(header) or 'empty'})")
        position[column] = header.index(column)
    width = max(position.values()) + 1
    stamps: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    for line_no, row in enumerate(reader, start=2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) < width:
            missing = next(c for c in COLUMNS if position[c] >= len(row))
            raise ValidationError(missing, f"{source} line {line_no}: value is missing")
        stamps.append(_timestamp(row[position["TIMESTAMP"]], line_no=line_no, source=source))
        prompt.append(_tokens(row[position["ContextTokens"]], column="ContextTokens",
                              line_no=line_no, source=source))
        output.append(_tokens(row[position["GeneratedTokens"]], column="GeneratedTokens",
                              line_no=line_no, source=source))
    if not stamps:
        raise ValidationError(COLUMNS[0], f"{source} has a header but no requests")
    t = np.array(stamps, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    t = t[order]
    return Trace(offsets_s=t - t[0], prefill_tokens=np.array(prompt, dtype=np.int64)[order],
                 decode_tokens=np.array(output, dtype=np.int64)[order],
                 start_epoch=float(t[0]), source=source)


def _timestamp(text: str, *, line_no: int, source: str) -> float:
    raw = text.strip()
    value = raw
    # datetime.fromisoformat takes at most 6 fractional digits on some versions; the
    # Azure trace writes 7, so drop what is beyond microseconds.
    if "." in value:
        head, _, frac = value.partition(".")
        digits = len(frac) - len(frac.lstrip("0123456789"))
        value = f"{head}.{frac[:min(digits, 6)]}{frac[digits:]}"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError("TIMESTAMP", f"{source} line {line_no}: {raw!r} is not an "
                              "ISO 8601 time such as 2023-11-16 18:17:03.979") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _tokens(text: str, *, column: str, line_no: int, source: str) -> int:
    raw = text.strip()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise ValidationError(column, f"{source} line {line_no}: {raw!r} is not a whole "
                              "number ≥ 0")
    return int(value)


# --- edge: the only file access of core/sim --------------------------------------------
def read_trace(path_or_stream: str | Path | TextIO) -> Trace:
    """EDGE: read and parse a trace CSV from a path or an open text stream."""
    if not isinstance(path_or_stream, str | Path):
        return parse_trace(path_or_stream, source=str(getattr(path_or_stream, "name", "trace")))
    path = Path(path_or_stream)
    try:
        with path.open(encoding="utf-8", newline="") as stream:
            return parse_trace(stream, source=path.name)
    except OSError as exc:
        raise ValidationError("trace", f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ValidationError("trace", f"{path.name} is not UTF-8 text") from None
# ----------------------------------------------------------------------------------------


class TraceReplay:
    """An ``ArrivalSource`` replaying a trace from epoch time ``start``.

    ``speedup`` compresses time (2.0 = the trace's hour in 30 minutes);
    ``scale`` multiplies the request count (each row is kept ⌊scale⌋ times
    plus once more with probability frac(scale); extra copies are jittered by
    up to ``jitter_s``), so the per-minute shape is kept. ``repeat`` replays the
    trace again and again, one mean inter-arrival gap after its end.
    """

    def __init__(self, trace: Trace, *, start: float, speedup: float = 1.0, scale: float = 1.0,
                 repeat: bool = False, seed: int = 0, jitter_s: float = 1.0) -> None:
        if not math.isfinite(speedup) or speedup <= 0:
            raise ValidationError("trace.speedup", "must be a number > 0")
        if not math.isfinite(scale) or scale < 0:
            raise ValidationError("trace.scale", "must be a number ≥ 0")
        if not math.isfinite(start):
            raise ValidationError("trace.start", "must be finite epoch seconds")
        offsets, prompt, output = trace.offsets_s, trace.prefill_tokens, trace.decode_tokens
        if scale != 1.0:
            rng = np.random.default_rng([seed, 7])
            copies = np.floor(scale).astype(np.int64) + (rng.random(trace.size) < scale % 1.0)
            index = np.repeat(np.arange(trace.size), copies)
            # Copy number within each row: 0 keeps the original time, later copies jitter.
            first = np.repeat(np.cumsum(copies) - copies, copies)
            nth = np.arange(index.size) - first
            offsets = offsets[index] + np.where(nth > 0, rng.random(index.size) * jitter_s, 0.0)
            order = np.argsort(offsets, kind="stable")
            offsets, index = offsets[order], index[order]
            prompt, output = prompt[index], output[index]
        self._start = float(start)
        self._times = offsets / speedup
        self._prompt = prompt
        self._output = output
        gap = trace.duration_s / max(trace.size - 1, 1)
        self._period = (trace.duration_s + max(gap, 1e-3)) / speedup if repeat else math.inf
        self._repeat = repeat

    @property
    def requests_per_pass(self) -> int:
        return int(self._times.shape[0])

    @property
    def pass_duration_s(self) -> float:
        return float(self._times[-1]) if self._times.size else 0.0

    def arrivals(self, start: float, end: float) -> Arrivals:
        if end <= start or not self._times.size:
            return Arrivals.empty()
        rel0, rel1 = start - self._start, end - self._start
        if not self._repeat:
            return self._slice(rel0, rel1, shift=0.0)
        first = max(0, math.floor(rel0 / self._period))
        last = math.floor(rel1 / self._period)
        return Arrivals.concat([self._slice(rel0 - k * self._period, rel1 - k * self._period,
                                            shift=k * self._period)
                                for k in range(first, last + 1)])

    def _slice(self, rel0: float, rel1: float, *, shift: float) -> Arrivals:
        lo, hi = np.searchsorted(self._times, [rel0, rel1], side="left")
        return Arrivals(self._times[lo:hi] + (self._start + shift), self._prompt[lo:hi],
                        self._output[lo:hi])

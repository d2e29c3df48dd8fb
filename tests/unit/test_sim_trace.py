"""Trace replay: the Azure trace (or any CSV with its columns) drives the twin faithfully."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from core.clock import ManualClock
from core.errors import ValidationError
from core.settings import Settings
from core.sim import Trace, TraceReplay, Twin, parse_trace, read_trace

TRACE_PATH = Path(__file__).resolve().parents[1] / "data" / "azure_llm_inference_2023_code.csv"
TRACE_REQUESTS = 8819


@pytest.fixture(scope="module")
def trace() -> Trace:
    return read_trace(TRACE_PATH)


def _csv_per_minute() -> list[int]:
    """Requests per minute straight from the CSV, minute 0 starting at the first row."""
    with TRACE_PATH.open(newline="") as f:
        stamps = [datetime.fromisoformat(row["TIMESTAMP"][:26]) for row in csv.DictReader(f)]
    first = min(stamps)
    minutes = Counter(int((s - first).total_seconds() // 60) for s in stamps)
    return [minutes.get(m, 0) for m in range(max(minutes) + 1)]


def _requests_total(twin: Twin) -> int:
    return sum(d.counters.requests_total for d in twin.telemetry().deployments if d.counters)


def test_the_azure_trace_is_read_with_its_tokens(trace: Trace) -> None:
    assert trace.size == TRACE_REQUESTS
    assert trace.offsets_s[0] == 0.0 and np.all(np.diff(trace.offsets_s) >= 0)
    assert 55 * 60 < trace.duration_s < 60 * 60
    assert (trace.prefill_tokens[:3].tolist(), trace.decode_tokens[:3].tolist()) == (
        [4808, 3180, 110], [10, 8, 27])


def test_trace_replay_reproduces_the_request_count(settings: Settings, trace: Trace) -> None:
    twin = Twin(settings, clock=ManualClock(0.0), traffic=TraceReplay(trace, start=0.0))
    twin.step(3600)
    telemetry = twin.telemetry()
    assert _requests_total(twin) == TRACE_REQUESTS
    assert telemetry.totals.success_rate == 1.0
    served = sum(d.counters.success_total for d in telemetry.deployments if d.counters)
    assert served == TRACE_REQUESTS


def test_trace_replay_reproduces_the_per_minute_rate(settings: Settings, trace: Trace) -> None:
    expected = _csv_per_minute()
    twin = Twin(settings, clock=ManualClock(0.0), traffic=TraceReplay(trace, start=0.0))
    replayed, before = [], 0
    for _ in expected:
        twin.step(60)
        total = _requests_total(twin)
        replayed.append(total - before)
        before = total
    assert replayed == expected
    assert replayed == trace.per_minute_counts().tolist()


def test_replay_rate_shows_in_qps_windows(settings: Settings, trace: Trace) -> None:
    twin = Twin(settings, clock=ManualClock(0.0), traffic=TraceReplay(trace, start=0.0))
    twin.step(600)
    qps_10min = sum(d.qps_5m for d in twin.telemetry().deployments)
    expected = (trace.offsets_s[(trace.offsets_s >= 300) & (trace.offsets_s < 600)]).size / 300
    assert qps_10min == pytest.approx(expected)


def test_speedup_compresses_time_and_scale_multiplies_requests(trace: Trace) -> None:
    fast = TraceReplay(trace, start=1000.0, speedup=4.0)
    arrivals = fast.arrivals(0.0, 1e6)
    assert len(arrivals) == TRACE_REQUESTS
    assert arrivals.times[0] == 1000.0
    assert arrivals.times[-1] == pytest.approx(1000.0 + trace.duration_s / 4)
    tripled = TraceReplay(trace, start=0.0, scale=3.0).arrivals(0.0, 1e6)
    assert len(tripled) == 3 * TRACE_REQUESTS
    assert np.all(np.diff(tripled.times) >= 0)
    per_minute = np.bincount((tripled.times // 60).astype(int))
    original = trace.per_minute_counts()
    # Extra copies are jittered by up to a second, so a few cross a minute boundary.
    assert np.abs(per_minute[:original.size] - 3 * original).max() <= 0.05 * 3 * original.max()
    half = len(TraceReplay(trace, start=0.0, scale=0.5, seed=2).arrivals(0.0, 1e6))
    assert abs(half - TRACE_REQUESTS / 2) < 200


def test_repeat_replays_the_trace_again_after_its_end(trace: Trace) -> None:
    replay = TraceReplay(trace, start=0.0, repeat=True)
    first = replay.arrivals(0.0, trace.duration_s + 0.1)
    second = replay.arrivals(trace.duration_s + 0.1, 2 * trace.duration_s + 0.5)
    assert len(first) == len(second) == TRACE_REQUESTS
    period = second.times[0] - first.times[0]
    assert trace.duration_s < period < trace.duration_s + 1.0
    assert np.allclose(second.times - period, first.times)
    assert np.array_equal(second.prefill_tokens, first.prefill_tokens)


def test_any_csv_with_the_columns_works_in_any_order_with_extra_columns() -> None:
    text = ("Model,GeneratedTokens,TIMESTAMP,ContextTokens\n"
            "a,5,2024-01-01 00:00:02.5,100\n"
            "b,7,2024-01-01 00:00:00,200\n"
            "\n"
            "c,9,2024-01-01T00:01:00+00:00,300\n")
    t = parse_trace(io.StringIO(text), source="mine.csv")
    assert t.offsets_s.tolist() == [0.0, 2.5, 60.0]  # sorted, relative to the earliest row
    assert t.prefill_tokens.tolist() == [200, 100, 300]
    assert t.decode_tokens.tolist() == [7, 5, 9]


@pytest.mark.parametrize(("text", "field", "where"), [
    ("TIMESTAMP,ContextTokens\n2024-01-01 00:00:00,5\n", "GeneratedTokens", "no GeneratedTokens"),
    ("", "TIMESTAMP", "empty"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "TIMESTAMP", "no requests"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-01-01 00:00:00,5,1\nyesterday,5,1\n",
     "TIMESTAMP", "line 3"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-01-01 00:00:00,five,1\n",
     "ContextTokens", "line 2"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-01-01 00:00:00,5,-1\n",
     "GeneratedTokens", "line 2"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-01-01 00:00:00,5.5,1\n",
     "ContextTokens", "line 2"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-01-01 00:00:00,5\n",
     "GeneratedTokens", "line 2"),
])
def test_a_bad_csv_is_refused_naming_the_column(text: str, field: str, where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_trace(io.StringIO(text), source="bad.csv")
    assert caught.value.field == field
    assert where in caught.value.message


def test_read_trace_takes_a_path_or_a_stream(tmp_path: Path) -> None:
    text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2024-01-01 00:00:00,5,1\n"
    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    assert read_trace(path).size == 1
    assert read_trace(str(path)).source == "t.csv"
    assert read_trace(io.StringIO(text)).size == 1
    with pytest.raises(ValidationError) as caught:
        read_trace(tmp_path / "missing.csv")
    assert caught.value.field == "trace"


def test_replay_arguments_are_validated(trace: Trace) -> None:
    with pytest.raises(ValidationError, match="speedup"):
        TraceReplay(trace, start=0.0, speedup=0.0)
    with pytest.raises(ValidationError, match="scale"):
        TraceReplay(trace, start=0.0, scale=-1.0)

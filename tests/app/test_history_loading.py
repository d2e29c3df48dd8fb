"""AppTest: while the start-up backfill is still writing, the Overview's charts show the
hours written so far and say how far the history has loaded; once it is done they say
nothing more and read the whole range."""

from __future__ import annotations

import re
import threading

import pytest
from sqlalchemy import func, select

from app import services
from app.history import Backfill, BackfillProgress
from db.models import MetricSampleRow
from tests.app.conftest import open_page

LOADING = re.compile(r"history still loading: (\d+) of 2 hours")


def loading_notes(at) -> list[str]:  # type: ignore[no-untyped-def]
    return [i.value for i in at.info if LOADING.search(i.value)]


def test_overview_says_history_still_loading_and_charts_fill_in_as_it_is_written(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GSC_BACKFILL_HOURS", "0")  # the test starts a backfill it can hold
    at = open_page()
    assert not loading_notes(at)
    rt = services.runtime()
    assert rt.backfill is None
    reached, release = threading.Event(), threading.Event()

    def hold(progress: BackfillProgress) -> None:
        if not release.is_set():
            reached.set()
            release.wait(120)

    with rt.factory() as s:  # the live samples begin here; the history ends here
        first_live = s.scalar(select(func.min(MetricSampleRow.ts)))
    assert first_live is not None
    rt.backfill = Backfill(rt.settings, rt.factory, hours=2, interval_s=60, now=first_live,
                           on_batch=hold)
    try:
        assert reached.wait(120), rt.backfill.progress()
        at.run()
        assert not at.exception, at.exception
        notes = loading_notes(at)
        assert len(notes) == 1, [i.value for i in at.info]
        assert int(LOADING.search(notes[0]).group(1)) < 2  # type: ignore[union-attr]
        # What is written so far reads as it is: the backfill's first hour at most, then
        # the live samples, no zeros in between.
        partial = services.fleet_series("power_w", hours=2)
        start = rt.backfill.start
        history = partial[partial["ts"] < first_live - 60]
        assert 0 < len(history) <= 61 and (partial["value"] > 0).all()
        assert history["ts"].max() < start + 3600
    finally:
        release.set()
        rt.backfill.join(timeout=120)
    assert rt.backfill.progress().finished
    at.run()
    assert not at.exception and not loading_notes(at)
    whole = services.fleet_series("power_w", hours=2)
    assert len(whole[whole["ts"] < first_live - 60]) > len(history)
    assert whole[whole["ts"] < first_live - 60]["ts"].max() > start + 3600

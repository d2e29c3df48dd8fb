"""The Evaluation page: the bench's results file charted, or unknown with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.widgets import evaluation

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "evaluation.py")


def results(path: Path) -> Path:
    path.write_text(json.dumps({
        "trace": "t.csv", "scale": 2.0, "window_s": 60.0, "minutes": [0, 1, 2],
        "demand_rps": [1.0, 5.0, 2.0],
        "gpus_held": {"slo, least-work routing": [2.0, 4.0, 3.0], "seed, uniform": [5, 5, 5]},
        "bound_gpus_mean": {"ilp": 1.5, "online": 2.5},
        "bound_gpus": {"online-feasible bound": [1.0, 3.0, 2.0]},
        "rows": [{"label": "slo, least-work routing", "cost_per_1k": 1.2,
                  "slo_attainment": 0.98, "idle_share": 0.05}],
        "summary": {"sla": 0.98, "cost_ratio_vs_bound": 6.1,
                    "cost_ratio_vs_online_bound": 2.9, "cost_ratio_vs_single_type": 1.05}}),
        encoding="utf-8")
    return path


def test_the_results_load_and_chart_gpus_held_against_demand(tmp_path: Path) -> None:
    e, why = evaluation.load(results(tmp_path / "r.json"))
    assert e is not None and why == ""
    fig = evaluation.gpus_figure(e)
    names = [t.name for t in fig.data]
    assert "demand (requests/s)" in names and "slo, least-work routing" in names
    assert "online-feasible bound" in names


def test_a_missing_or_broken_results_file_is_unknown_with_the_reason(tmp_path: Path) -> None:
    e, why = evaluation.load(tmp_path / "none.json")
    assert e is None and "bench.placement_quality" in why
    bad = tmp_path / "bad.json"
    bad.write_text('{"trace": "x"}', encoding="utf-8")
    e, why = evaluation.load(bad)
    assert e is None and "not a placement-quality results file" in why


def test_the_page_renders_the_bench_results(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluation, "RESULTS", results(tmp_path / "r.json"))
    at = AppTest.from_file(PAGE, default_timeout=30).run()
    assert not at.exception
    assert next(m.value for m in at.metric) == "98.00%"

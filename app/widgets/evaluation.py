"""The Evaluation page's data and figure: the placement-quality bench's results file.

``python -m bench.placement_quality`` writes ``bench/results/placement_quality.json``;
this module reads it into a typed value (a file that cannot be read is unknown, with
the reason, never an empty chart) and draws GPUs held against demand.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "placement_quality.json"


@dataclass(frozen=True)
class Evaluation:
    trace: str
    scale: float
    minutes: tuple[int, ...]
    demand_rps: tuple[float, ...]
    gpus_held: dict[str, tuple[float, ...]]
    rows: pd.DataFrame
    summary: dict[str, Any]
    bound_gpus: dict[str, float]
    bound_series: dict[str, tuple[float, ...]]  # per minute; may be empty (older files)


def load(path: Path | None = None) -> tuple[Evaluation | None, str]:
    """The results (``RESULTS`` by default), or None and why they are unknown."""
    path = path or RESULTS
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no results yet: run `python -m bench.placement_quality` ({path.name})"
    except (OSError, ValueError) as exc:
        return None, f"{path.name} cannot be read: {exc}"
    try:
        minutes = tuple(int(m) for m in raw["minutes"])
        demand = tuple(float(x) for x in raw["demand_rps"])
        held = {str(k): tuple(float(x) for x in v) for k, v in raw["gpus_held"].items()}
        rows = pd.DataFrame(raw["rows"])
        if len(demand) != len(minutes) or any(len(v) != len(minutes) for v in held.values()):
            return None, f"{path.name}: its series have different lengths"
        if not all(math.isfinite(x) for x in demand):
            return None, f"{path.name}: demand has values that are not numbers"
        return Evaluation(trace=str(raw["trace"]), scale=float(raw["scale"]), minutes=minutes,
                          demand_rps=demand, gpus_held=held, rows=rows,
                          summary=dict(raw.get("summary", {})),
                          bound_gpus={str(k): float(v)
                                      for k, v in raw.get("bound_gpus_mean", {}).items()},
                          bound_series={str(k): tuple(float(x) for x in v)
                                        for k, v in raw.get("bound_gpus", {}).items()
                                        if len(v) == len(minutes)}), ""
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"{path.name} is not a placement-quality results file ({exc})"


def gpus_figure(e: Evaluation) -> go.Figure:
    """GPUs held per minute by each run on the default fleet, against the demand."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_bar(x=list(e.minutes), y=list(e.demand_rps), name="demand (requests/s)",
                marker_color="rgba(150,150,150,0.45)", secondary_y=True)
    for label, series in e.gpus_held.items():
        fig.add_scatter(x=list(e.minutes), y=list(series), mode="lines", name=label,
                        line={"shape": "hv", "width": 2 if label.startswith("slo,") else 1},
                        secondary_y=False)
    for name, series in e.bound_series.items():
        fig.add_scatter(x=list(e.minutes), y=list(series), mode="lines", name=name,
                        line={"shape": "hv", "width": 1, "dash": "dot"}, secondary_y=False)
    if not e.bound_series:
        for name, gpus in e.bound_gpus.items():
            fig.add_hline(y=gpus, line_dash="dot", annotation_text=f"{name} bound (mean)")
    fig.update_layout(title="GPUs held against demand over the replay", height=420,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend={"orientation": "h"},
                      xaxis_title="minute of the replay")
    fig.update_yaxes(title_text="GPUs held", secondary_y=False)
    fig.update_yaxes(title_text="requests/s", secondary_y=True)
    return fig

"""Widgets of the Rollouts page: the breaker, plan and step tables, per-node progress and
the canary analysis charts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.rollout.breaker import Breaker, BreakerState
from db.rollouts import PlanView

ROLLOUTS_SELECTED = "rollouts.selected"
ROLLOUTS_NOTICE = "rollouts.notice"
_STATE_ICON = {"succeeded": "✅", "failed": "❌", "rolled-back": "↩️", "aborted": "⏹️",
               "running": "▶️", "analyzing": "🔬", "paused": "⏸️",
               "awaiting-approval": "📝", "awaiting-promotion": "⏫", "approved": "👍",
               "rolling-back": "⏪", "draft": "✏️"}


def _when(ts: float | None) -> str:
    return "—" if ts is None else f"{datetime.fromtimestamp(ts, UTC):%Y-%m-%d %H:%M} UTC"


def breaker_panel(b: Breaker) -> None:
    """The circuit breaker (SPEC §4.3): closed, open (no updates) or half-open (one trial)."""
    if b.state is BreakerState.CLOSED:
        st.success(f"**Circuit breaker closed**: updates may run "
                   f"({b.consecutive_failures} of {b.threshold} failures in a row).",
                   icon=":material/electrical_services:")
    elif b.state is BreakerState.OPEN:
        until = None if b.opened_at is None else b.opened_at + b.cooldown_s
        st.error(f"**Circuit breaker open** since {_when(b.opened_at)} after "
                 f"{b.consecutive_failures} failed updates in a row: no update starts until "
                 f"{_when(until)} (then one trial). Last failure: {b.last_failure or '—'}.",
                 icon=":material/power_off:")
    else:
        st.warning(f"**Circuit breaker half-open**: the next update is a trial "
                   f"{'(plan ' + str(b.trial_plan) + ')' if b.trial_plan else ''}; success "
                   f"closes it, failure opens it again. Last failure: {b.last_failure or '—'}.",
                   icon=":material/power:")


def label(p: PlanView) -> str:
    return (f"#{p.id} {_STATE_ICON.get(p.state.value, '')} {p.state.value} · "
            f"{p.plan.strategy.value} · {', '.join(p.plan.nodes)}")


def plans_frame(plans: Sequence[PlanView]) -> pd.DataFrame:
    rows = []
    for p in plans:
        done, total = p.progress
        rows.append({"plan": p.id, "state": p.state.value, "strategy": p.plan.strategy.value,
                     "update type": p.plan.update_type, "nodes": ", ".join(p.plan.nodes),
                     "progress": done / total if total else 0.0,
                     "created by": p.created_by, "created": p.created_at})
    return pd.DataFrame(rows)


def plans_table(plans: Sequence[PlanView]) -> None:
    st.dataframe(plans_frame(plans), hide_index=True, width="stretch",
                 column_config={"progress": st.column_config.ProgressColumn(
                     min_value=0.0, max_value=1.0, format="percent")})


def steps_frame(p: PlanView) -> pd.DataFrame:
    return pd.DataFrame([{
        "#": s.seq, "node": s.spec.node or "—", "step": s.label, "status": s.status,
        "started": s.started_at, "finished": s.finished_at,
        "detail": str(s.details.get("reason") or s.details.get("message") or "")[:200],
    } for s in p.steps])


def node_progress(p: PlanView) -> pd.DataFrame:
    """Per node: steps finished of its steps (forward and rollback separately)."""
    rows: dict[tuple[str, bool], list[int]] = {}
    for s in p.steps:
        key = (s.spec.node or "(plan)", s.spec.rollback)
        done = s.status in ("succeeded", "skipped")
        rows.setdefault(key, [0, 0, 0])
        rows[key][0] += int(done)
        rows[key][1] += 1
        rows[key][2] += int(s.status == "failed")
    return pd.DataFrame([{"node": node, "phase": "rollback" if back else "change",
                          "done": d / t if t else 0.0, "steps": f"{d}/{t}", "failed": f}
                         for (node, back), (d, t, f) in rows.items()])


def progress_panel(p: PlanView) -> None:
    done, total = p.progress
    phase = "Rolling back" if any(s.spec.rollback for s in p.steps) else "Change"
    st.progress(done / total if total else 0.0,
                text=f"{phase}: {done} of {total} steps ({p.state.value})")
    st.dataframe(node_progress(p), hide_index=True, width="stretch",
                 column_config={"done": st.column_config.ProgressColumn(
                     min_value=0.0, max_value=1.0, format="percent")})
    with st.expander("Every step", expanded=p.state.value in ("running", "rolling-back")):
        st.dataframe(steps_frame(p), hide_index=True, width="stretch")


def analysis_figures(samples: Sequence[Mapping[str, Any]], *, max_error_rate: float,
                     max_p99_ms: float) -> tuple[go.Figure, go.Figure]:
    """Canary against baseline over the analysis window: error rate and p99."""
    at = [datetime.fromtimestamp(float(s["at"]), UTC) for s in samples]
    figs = []
    for key, title, limit, scale in (("error_rate", "Error rate", max_error_rate, 100.0),
                                     ("p99_ms", "p99 latency (ms)", max_p99_ms, 1.0)):
        fig = go.Figure()
        for group, color in (("canary", "#d62728"), ("baseline", "#1f77b4")):
            ys = [None if s[group].get(key) is None else float(s[group][key]) * scale
                  for s in samples]
            fig.add_trace(go.Scatter(x=at, y=ys, name=group, mode="lines+markers",
                                     line={"color": color}))
        fig.add_hline(y=limit * scale, line_dash="dash", line_color="gray",
                      annotation_text="fails above")
        fig.update_layout(title=title + (" (%)" if key == "error_rate" else ""), height=280,
                          margin={"l": 10, "r": 10, "t": 40, "b": 10})
        figs.append(fig)
    return figs[0], figs[1]

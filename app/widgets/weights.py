"""Scheduler-weight versions, the evidence behind a proposal and the last feedback run, as
tables and Plotly charts.

Both payloads are read through their typed forms: a version's evidence with
``core.feedback.Evidence.from_json`` and the published run with
``core.feedback.FeedbackRun.from_json``. Empty evidence (the initial version,
a version written by hand) says so; a payload that does not read (garbled, or
from another version) renders as "unknown" with the field that is wrong, never
a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC
from decimal import Decimal
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.errors import ValidationError
from core.feedback import CalibrationRow, Evidence, FeedbackRun, RunOutcome
from core.model import COMPONENTS, SchedulerWeights
from db.flags import Flag
from db.versions import WeightVersion

WEIGHTS_SELECTED = "weights.selected"
WEIGHTS_NOTICE = "weights.notice"

_MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}


def versions_frame(versions: Sequence[WeightVersion]) -> pd.DataFrame:
    """One row per version, newest first, with its weights as columns."""
    return pd.DataFrame([{
        "version": v.version, "status": v.status,
        **v.weights.as_dict(), "author": v.author, "reason": v.reason,
        "parent": v.parent_version, "created": v.created_at, "decided by": v.decided_by or "",
        "decided": v.decided_at,
    } for v in versions])


def version_label(v: WeightVersion) -> str:
    return f"v{v.version} · {v.status} · {v.author} · {v.created_at:%Y-%m-%d %H:%M}"


def weights_figure(active: SchedulerWeights, other: SchedulerWeights | None = None, *,
                   other_name: str = "selected") -> go.Figure:
    """Active weights as bars; another version beside them when given."""
    fig = go.Figure()
    a = active.as_dict()
    fig.add_bar(x=list(COMPONENTS), y=[a[c] for c in COMPONENTS], name="active",
                text=[f"{a[c]:.3f}" for c in COMPONENTS], textposition="outside")
    if other is not None:
        o = other.as_dict()
        fig.add_bar(x=list(COMPONENTS), y=[o[c] for c in COMPONENTS], name=other_name,
                    text=[f"{o[c]:.3f} ({_delta(o[c] - a[c])})" for c in COMPONENTS],
                    textposition="outside")
    top = max([*a.values(), *(other.as_dict().values() if other else ())])
    fig.update_layout(barmode="group", height=300, margin=_MARGIN, title="Weights",
                      yaxis={"range": [0, min(1.0, top * 1.25 + 0.02)], "title": "weight"},
                      legend={"orientation": "h", "y": -0.15})
    return fig


def points_frame(evidence: Evidence) -> pd.DataFrame:
    """One row per observed replica shown in the evidence."""
    return pd.DataFrame([p.to_json() for p in evidence.observations.points])


def prediction_figure(points: pd.DataFrame, *, predicted: str, actual: str, title: str,
                      unit: str) -> go.Figure:
    """Predicted (x) against actual (y), one marker per replica, with the y = x line."""
    fig = go.Figure()
    if {predicted, actual} <= set(points.columns):
        data = points.dropna(subset=[predicted, actual])
    else:
        data = pd.DataFrame()
    if not data.empty:
        groups = data.groupby(["gpu_type", "workload_class"], sort=True)
        for (gpu_type, wc), part in groups:
            fig.add_scatter(
                x=part[predicted], y=part[actual], mode="markers", name=f"{gpu_type} / {wc}",
                marker={"size": 9, "symbol": ["circle" if d else "circle-open"
                                              for d in part.get("decision", [True] * len(part))]},
                customdata=part[["owner", "gpu"]].to_numpy(),
                hovertemplate=("%{customdata[0]} on %{customdata[1]}<br>predicted %{x:.1f}"
                               f" {unit}<br>actual %{{y:.1f}} {unit}<extra></extra>"))
        lo = float(min(data[predicted].min(), data[actual].min())) * 0.9
        hi = float(max(data[predicted].max(), data[actual].max())) * 1.1
        fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="actual = predicted",
                        line={"dash": "dash", "color": "grey"}, hoverinfo="skip")
    fig.update_layout(title=title, height=360, margin=_MARGIN,
                      xaxis_title=f"predicted ({unit})", yaxis_title=f"actual ({unit})",
                      legend={"orientation": "h", "y": -0.2})
    return fig


def candidates_frame(evidence: Evidence) -> pd.DataFrame:
    """The active weights and every candidate the replay scored (without the weights)."""
    frame = pd.DataFrame([{k: v for k, v in r.to_json().items() if k != "weights"}
                          for r in evidence.candidates])
    if not frame.empty and "sla_attainment" in frame:
        frame["sla_attainment_pct"] = frame["sla_attainment"] * 100
    return frame


def candidates_figure(frame: pd.DataFrame) -> go.Figure:
    """Simulated cost per 1k against SLA attainment: the active weights and each candidate."""
    fig = go.Figure()
    if not frame.empty and {"cost_per_1k", "sla_attainment_pct"} <= set(frame.columns):
        kinds = (("active weights", frame["baseline"], "star", 16),
                 ("proposed", frame["chosen"], "diamond", 14),
                 ("clears the margin", frame["eligible"] & ~frame["chosen"], "circle", 9),
                 ("other candidates", ~(frame["baseline"] | frame["chosen"] | frame["eligible"]),
                  "circle-open", 9))
        for name, mask, symbol, size in kinds:
            part = frame[mask]
            if part.empty:
                continue
            fig.add_scatter(x=part["cost_per_1k"], y=part["sla_attainment_pct"], mode="markers",
                            name=name, marker={"symbol": symbol, "size": size},
                            text=part["label"],
                            hovertemplate="%{text}<br>$%{x:.5f} per 1k<br>SLA %{y:.2f} %"
                                          "<extra></extra>")
    fig.update_layout(title="Candidates on the replay: cost against SLA attainment",
                      height=360, margin=_MARGIN, xaxis_title="simulated $ per 1,000 inferences",
                      yaxis_title="SLA attainment (%)", legend={"orientation": "h", "y": -0.2})
    return fig


def calibration_figure(rows: Sequence[CalibrationRow]) -> go.Figure:
    """Actual/predicted ratios per (GPU type, class); 1 means the model was right."""
    fig = go.Figure()
    labels = [f"{r.gpu_type} / {r.workload_class.value}" for r in rows]
    fig.add_bar(x=labels, y=[r.throughput_ratio for r in rows], name="throughput (capacity)",
                text=[f"n={r.throughput_n}" for r in rows], textposition="outside")
    fig.add_bar(x=labels, y=[r.latency_ratio for r in rows], name="latency",
                text=[f"n={r.latency_n}" for r in rows], textposition="outside")
    fig.add_hline(y=1.0, line_dash="dash", line_color="grey")
    fig.update_layout(barmode="group", title="Calibration: actual / predicted", height=320,
                      margin=_MARGIN, yaxis_title="ratio", legend={"orientation": "h", "y": -0.2})
    return fig


def _delta(d: float) -> str:
    return "±0" if abs(d) < 5e-4 else f"{d:+.3f}"


def _money(x: Decimal | None) -> str:
    return "—" if x is None else f"${float(x):.5f}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.2%}"


def render_evidence(evidence: Mapping[str, Any], *, key: str) -> None:
    """The comparison behind a proposal: summary, predicted vs actual, candidates, calibration.

    ``evidence`` is the stored JSON of a weight version.
    """
    if not evidence:
        st.info("No evidence recorded for this version (the initial weights from settings, "
                "or a version written by hand).")
        return
    try:
        ev = Evidence.from_json(evidence)
    except ValidationError as exc:
        st.warning(f"The evidence of this version is **unknown**: it could not be read "
                   f"(`{exc.field}` {exc.message}). It may have been written by another "
                   "version or by hand; judge this version on its reason and weights.",
                   icon=":material/help:")
        return
    summary = ev.summary
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Simulated $/1k, active", _money(summary.baseline_cost_per_1k))
    m2.metric("Simulated $/1k, proposed", _money(summary.proposed_cost_per_1k),
              delta=None if summary.improvement is None else f"{-summary.improvement:+.1%}",
              delta_color="inverse")
    sla_b, sla_n = summary.baseline_sla_attainment, summary.proposed_sla_attainment
    m3.metric("SLA attainment, active", _pct(sla_b))
    m4.metric("SLA attainment, proposed", _pct(sla_n),
              delta=None if sla_n is None or sla_b is None else f"{(sla_n - sla_b) * 100:+.2f} pp")
    obs = ev.observations
    based_on = ("the weights from settings" if ev.based_on_version is None
                else f"version {ev.based_on_version}")
    st.caption(f"Generated {ev.generated_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC against "
               f"{based_on} from {obs.count} observed replicas ({obs.comparable} with a "
               f"comparison). Method: {ev.method}.")

    t_pred, t_cand, t_cal, t_out = st.tabs(
        ["Predicted vs actual", "Candidates", "Calibration", "Observed outcomes"])
    points = points_frame(ev)
    with t_pred:
        if points.empty:
            st.info("No observations recorded.")
        else:
            c1, c2 = st.columns(2)
            c1.plotly_chart(prediction_figure(
                points, predicted="predicted_capacity_rps", actual="actual_capacity_rps",
                title="Throughput capacity per replica", unit="req/s"),
                width="stretch", key=f"{key}.tput")
            c2.plotly_chart(prediction_figure(
                points, predicted="predicted_latency_ms", actual="actual_latency_ms",
                title="Mean latency", unit="ms"), width="stretch", key=f"{key}.latency")
            st.caption("Filled markers: replicas the scheduler placed; open: replicas that "
                       "were already running. Above the dashed line the fleet did worse than "
                       "predicted (latency) or better (capacity).")
            st.dataframe(points, hide_index=True, width="stretch", key=f"{key}.points")
    with t_cand:
        frame = candidates_frame(ev)
        st.plotly_chart(candidates_figure(frame), width="stretch", key=f"{key}.cand")
        if summary.why_not:
            st.caption(summary.why_not)
        if not frame.empty:
            shown = [c for c in ("label", "round", "cost_per_1k", "sla_attainment", "improvement",
                                 "eligible", "chosen", "energy_per_inference_j")
                     if c in frame.columns]
            st.dataframe(frame[shown], hide_index=True, width="stretch", key=f"{key}.candtable",
                         column_config={"improvement": st.column_config.NumberColumn(
                             format="percent")})
    with t_cal:
        rows = ev.calibration
        if not rows:
            st.info("No calibration recorded.")
        else:
            st.plotly_chart(calibration_figure(rows), width="stretch", key=f"{key}.cal")
            st.dataframe(pd.DataFrame([r.to_json() for r in rows]), hide_index=True,
                         width="stretch", key=f"{key}.caltable")
    with t_out:
        outcomes = ev.outcomes
        o1, o2, o3, o4 = st.columns(4)
        o1.metric("Observed $/1k", _money(outcomes.cost_per_1k))
        power = outcomes.power_cost_per_hour
        o2.metric("Power cost", "—" if power is None else f"${power:.3f}/h")
        eff = outcomes.utilization_efficiency
        o3.metric("Utilization efficiency", "—" if eff is None else f"{eff:.1%}",
                  help="Served requests over the capacity of the slices held.")
        o4.metric("Served QPS", f"{outcomes.served_qps or 0:.1f}")
        if outcomes.by_gpu_type:
            st.dataframe(pd.DataFrame([t.to_json() for t in outcomes.by_gpu_type]),
                         hide_index=True, width="stretch", key=f"{key}.bytype")


def scored_frame(run: FeedbackRun) -> pd.DataFrame:
    """A feedback run's candidates against the active weights (the comparison it made)."""
    rows = [{"candidate": "active (baseline)",
             "$ / 1k inferences": _float(run.baseline_cost_per_1k),
             "SLA attainment": run.baseline_sla, "change": 0.0, "clears the margin": False}]
    rows += [{"candidate": r.candidate, "$ / 1k inferences": float(r.cost_per_1k),
              "SLA attainment": r.sla, "change": -r.improvement,
              "clears the margin": r.eligible} for r in run.scored]
    return pd.DataFrame(rows)


def _float(x: Decimal | None) -> float | None:
    return None if x is None else float(x)


_RUN_TITLE = {RunOutcome.PROPOSED: "proposal", RunOutcome.APPLIED: "proposal, auto-applied",
              RunOutcome.NO_CHANGE: "no proposal", RunOutcome.FAILED: "failed"}


def run_summary(run: FeedbackRun) -> str:
    """What the run did, in one line of Markdown."""
    match run.outcome:
        case RunOutcome.PROPOSED:
            return f"proposed **v{run.proposed_version}**"
        case RunOutcome.APPLIED:
            return f"proposed **v{run.proposed_version}** and auto-applied it"
        case RunOutcome.NO_CHANGE:
            return f"no proposal: {run.why_not}"
        case RunOutcome.FAILED:
            return f"failed: {run.why_not}"


def render_last_run(flag: Flag | None) -> None:
    """The controller's latest feedback run (flag ``feedback.last_run``), or why it is unknown."""
    if flag is None:
        st.caption("The controller has not run the feedback loop yet: its first run comes "
                   "a few minutes after it starts leading (`[feedback] first_run_after_s`), "
                   "then every `interval_s`.")
        return
    try:
        run = FeedbackRun.from_json(flag.value)
    except ValidationError as exc:
        st.warning(f"Last feedback run, {flag.updated_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC: "
                   f"**unknown**. Its published result could not be read (`{exc.field}` "
                   f"{exc.message}); it may come from another version of the controller. "
                   "The next run replaces it.", icon=":material/help:")
        return
    with st.expander(f"Last feedback run, {run.started_at:%Y-%m-%d %H:%M} UTC — "
                     f"{_RUN_TITLE[run.outcome]}"):
        if run.outcome is RunOutcome.FAILED:
            st.markdown(f"The run {run_summary(run)}  \nIt is tried again after "
                        "`[feedback] interval_s`; the controller's log has the details.")
            return
        st.markdown(f"{run_summary(run)}.  \n{run.comparable} of {run.observations} replicas "
                    f"compared with the model; {run.deployments} deployments replayed over "
                    f"{run.replay_s / 3600:g} h of recent traffic; {run.candidates} candidates "
                    f"scored in {run.seconds:g} s.")
        if run.scored:
            st.dataframe(scored_frame(run), hide_index=True, width="stretch",
                         key="weights.last_run")

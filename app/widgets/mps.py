"""Widgets of the MPS planner: layout pictures, compiled configs and diffs, lint, impact,
the gate table, the gate-status panel (Overview) and the best update time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.widgets.charts import fleet_layout_figure
from core.cost.formula import usd
from core.mps.layout import GpuLayout
from core.mps.planner import UNKNOWN_CONFIG, PlannerResult, Proposal, proposal_summary
from core.rollout.gates import GateReport
from core.rollout.timing import UpdateTimeAdvice
from core.settings import device_plugin_replicas


def layout_figure(layouts: Sequence[GpuLayout], *, title: str, config: str | None) -> go.Figure:
    """The fleet's layout picture for one node, with the replica slots ``config`` gives
    each GPU drawn as dotted lines (every replica gets ``100 / N`` % of SM threads)."""
    fig = fleet_layout_figure(list(layouts))
    shapes = []
    if config is not None and config != "dra":
        replicas = device_plugin_replicas(config)
        # One layout update for all lines (add_vline rebuilds the layout once per line).
        shapes = [{"type": "line", "xref": "x", "yref": "paper", "x0": 100 * k / replicas,
                   "x1": 100 * k / replicas, "y0": 0, "y1": 1,
                   "line": {"dash": "dot", "color": "#555"}} for k in range(1, replicas)]
    fig.update_layout(title=title, height=90 + 40 * len(layouts),
                      shapes=[*fig.layout.shapes, *shapes])
    return fig


def _money(nusd: int) -> str:
    return f"${float(usd(nusd)):.2f}/h"


def fleet_summary(result: PlannerResult) -> None:
    """The whole plan's predicted impact, in numbers."""
    c = st.columns(5)
    c[0].metric("Nodes to change", len(result.proposals))
    c[1].metric("Config already fits", len(result.fits))
    before, after = result.cost_before, result.cost_after
    delta = float(after.total_per_hour - before.total_per_hour)
    c[2].metric("Fleet $/h before", f"${float(before.total_per_hour):.2f}")
    c[3].metric("Fleet $/h after", f"${float(after.total_per_hour):.2f}",
                delta=f"{delta:+.2f}" if delta else None, delta_color="inverse")
    c[4].metric("Capacity kept (one node at a time)",
                f"{result.capacity_kept_one_at_a_time:.0%}")
    energy = ("GPU-hours and energy at the current reading" if result.energy_known else
              "GPU-hours only: energy unknown without a current metrics reading")
    st.caption(f"Cost from the one cost formula ({energy}); a GPU with no model server costs "
               "nothing. All proposed nodes at once would keep "
               f"{result.capacity_kept_all_at_once:.0%} of the {result.total_gpus} GPUs serving.")
    if result.placed:
        st.caption("Requested workloads placed: " + ", ".join(
            f"{owner} → {key}" for owner, key in result.placed.items()))
    for owner, why in result.unplaced.items():
        st.warning(f"**{owner}** fits nowhere, even with every node reconfigured: {why}")
    for node, gaps in result.unresolved.items():
        st.info(f"**{node}**: {'; '.join(gaps)}. No single device-plugin config serves this "
                "layout better (the config is node-wide, equal replicas): move a client "
                "instead.")


def proposals_table(result: PlannerResult) -> None:
    st.dataframe(pd.DataFrame([proposal_summary(p) for p in result.proposals]),
                 hide_index=True, width="stretch",
                 column_config={"capacity kept": st.column_config.NumberColumn(
                     format="percent")})


def proposal_panel(p: Proposal, *, key: str) -> None:
    """One node's proposal: why, the pictures, the configs with their diff, lint, impact."""
    before = p.config_before or UNKNOWN_CONFIG
    # The layout pictures are drawn only while the panel is open (it reruns the page when
    # opened or closed): ten closed panels of a big fleet cost no Plotly figures.
    panel = st.expander(f"**{p.node}**: {before} → {p.config_after}", expanded=False,
                        key=f"{key}.panel", on_change="rerun")
    with panel:
        st.markdown("**Why**: " + "; ".join(p.why))
        if panel.open:
            left, right = st.columns(2)
            left.plotly_chart(layout_figure(p.layouts_before, title=f"Now ({before})",
                                            config=p.config_before),
                              width="stretch", key=f"{key}.before")
            right.plotly_chart(layout_figure(p.layouts_after,
                                             title=f"Proposed ({p.config_after})",
                                             config=p.config_after),
                               width="stretch", key=f"{key}.after")
        i = p.impact
        c = st.columns(4)
        c[0].metric("Pods to move", len(i.pods_to_move))
        c[1].metric("Room elsewhere", f"{i.room_elsewhere} of {len(i.pods_to_move)}")
        c[2].metric("Capacity kept", f"{i.capacity_kept:.0%}")
        c[3].metric("Node $/h", _money(i.cost_after_nusd_per_h),
                    delta=None if i.cost_after_nusd_per_h == i.cost_before_nusd_per_h
                    else f"{float(usd(i.cost_after_nusd_per_h - i.cost_before_nusd_per_h)):+.2f}",
                    delta_color="inverse")
        if i.pods_to_move:
            st.caption("Moves first (its device-plugin restart takes their GPUs): "
                       + ", ".join(i.pods_to_move))
        if p.placed_requests:
            st.caption("Takes the requested workloads: " + ", ".join(p.placed_requests))
        st.markdown("**Diff against what runs now**")
        st.code(p.diff or "(no difference)", language="diff")
        a, b = st.columns(2)
        a.markdown("**Running**")
        a.code(p.yaml_before, language="yaml")
        b.markdown("**Proposed**")
        b.code(p.yaml_after, language="yaml")
        if p.env:
            st.markdown("**Per-pod MPS environment** (narrows each client to its slice)")
            st.dataframe(pd.DataFrame([{"pod": owner, "env": ", ".join(
                f"{v['name']}={v['value']}" for v in env)} for owner, env in p.env.items()]),
                hide_index=True, width="stretch")
        lint_table(p)


def lint_table(p: Proposal) -> None:
    if not p.findings:
        st.success("Lint: no findings — the backend expresses this layout as it is.")
        return
    st.markdown("**Lint findings**")
    st.dataframe(pd.DataFrame([{"severity": f.severity, "code": f.code, "gpu": f.gpu or "",
                                "message": f.message} for f in p.findings]),
                 hide_index=True, width="stretch")


def gate_table(report: GateReport) -> None:
    """Every gate with its value, threshold, pass / fail and reason."""
    st.dataframe(pd.DataFrame([{"gate": c.name, "value": c.value, "threshold": c.threshold,
                                "result": "pass" if c.passed else "FAIL", "reason": c.reason}
                               for c in report.checks]),
                 hide_index=True, width="stretch", height=36 * (len(report.checks) + 1) + 4)


def gate_status_panel(report: GateReport) -> None:
    """Gate status in a few lines (the Overview): open, or closed with each failing gate."""
    at = datetime.fromtimestamp(report.at, UTC)
    kind = report.update_type.replace("_", " ") or "update"
    if report.passed:
        st.success(f"**Update gates open** for {kind}: {report.summary} ({at:%H:%M} UTC).",
                   icon=":material/lock_open:")
        return
    lines = "\n".join(f"- **{c.name}**: {c.value} (needs {c.threshold}) — {c.reason}"
                      for c in report.checks if not c.passed)
    st.error(f"**Update gates closed** for {kind}: {report.summary} ({at:%H:%M} UTC).\n\n"
             f"{lines}", icon=":material/lock:")


def best_time_panel(advice: UpdateTimeAdvice) -> None:
    e = advice.expected
    if advice.next_window is not None:
        w = advice.next_window
        st.success(f"**Next good window**: {w.label()} ({w.hours} h, about "
                   f"{w.mean_qps:.1f} QPS expected from {advice.history_days:.0f} days of "
                   f"history by {advice.by}; outside every region's business hours).",
                   icon=":material/schedule:")
    else:
        st.warning(f"**Best update time unknown**: {advice.unknown}.",
                   icon=":material/schedule:")
    style = st.warning if e.deviates else st.info
    flag = " — **large deviation**" if e.deviates else ""
    style(f"Expected traffic now: {e.message}{flag}.")
    if advice.windows[1:]:
        st.caption("Later windows: " + "; ".join(w.label() for w in advice.windows[1:6]))
    if advice.quiet_hours:
        st.caption("Recurring quiet hours: " + ", ".join(
            f"{q.label} ({q.mean_qps:.1f} QPS, seen {q.occurrences}×)"
            for q in advice.quiet_hours[:8]))

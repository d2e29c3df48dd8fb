"""Evaluation: what the shipped autoscaler and placement cost on a replayed trace."""

from __future__ import annotations

import streamlit as st

from app.widgets.evaluation import gpus_figure, load

st.title("Evaluation")
st.caption("The placement-quality bench (`python -m bench.placement_quality`) replays a real "
           "trace on the digital twin with the `slo` autoscaler the controller ships, the "
           "`seed` rule, both routings, the placement baselines and single-type fleets. "
           "Cost is the fleet total: every GPU in use, whole, plus energy (SPEC §3.8).")

evaluation, why = load()
if evaluation is None:
    st.info(f"Unknown: {why}.")
    st.stop()
st.caption(f"Trace: {evaluation.trace}, replayed at ×{evaluation.scale:.2f}.")
summary = evaluation.summary


def figure(key: str, spec: str) -> str:
    value = summary.get(key)
    return "unknown" if value is None else format(float(value), spec)


c = st.columns(4)
c[0].metric("SLO attainment (slo)", figure("sla", ".2%"))
c[1].metric("× online-feasible bound", figure("cost_ratio_vs_online_bound", ".2f"))
c[2].metric("× ILP bound (per minute)", figure("cost_ratio_vs_bound", ".2f"))
c[3].metric("× cheaper single-type fleet", figure("cost_ratio_vs_single_type", ".2f"))
st.plotly_chart(gpus_figure(evaluation), width="stretch")
st.dataframe(evaluation.rows, hide_index=True, width="stretch", column_config={
    "slo_attainment": st.column_config.NumberColumn("SLO %", format="percent"),
    "idle_share": st.column_config.NumberColumn("idle share", format="percent"),
    "cost_per_1k": st.column_config.NumberColumn("$/1k", format="$%.4f"),
    "slo_cost_per_1k": st.column_config.NumberColumn("$/1k within SLO", format="$%.4f"),
})

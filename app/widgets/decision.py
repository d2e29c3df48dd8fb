"""Renders one placement decision: verdict, metrics, matrix, layout, compiled config."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.widgets.placement import layout_bars, matrix_frame, score_heatmap
from core.placement import Decision
from core.placement.matrix import DecisionMatrix
from core.placement.preview import preview


def render_matrix(matrix: DecisionMatrix, *, key: str) -> None:
    if any(r.fits for r in matrix.rows):
        st.plotly_chart(score_heatmap(matrix), width="stretch", key=f"{key}.heatmap")
    st.dataframe(matrix_frame(matrix), hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.2f")
                                for c in (*matrix.components, "total")},
                 key=f"{key}.table")
    version = "" if matrix.weight_version is None else f" (version {matrix.weight_version})"
    st.caption(f"Weights{version}: "
               + ", ".join(f"{k} {v:.2f}" for k, v in matrix.weights.items()))


def render_decision(decision: Decision) -> None:
    if decision.placed:
        st.success(decision.summary, icon=":material/check_circle:")
    else:
        st.error(decision.summary, icon=":material/block:")
        st.markdown("**What would make it fit**")
        st.markdown("\n".join(f"- {r}" for r in decision.recommendations))

    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Chosen GPU",
              f"{decision.node}/gpu{decision.gpu_index}" if decision.placed else "—")
    m2.metric("GPU type", decision.gpu_type or "—")
    m3.metric("Class / MPS share", f"{decision.workload_class.value} / {decision.share_pct} %")
    m4.metric("Score", f"{decision.score:.2f}" if decision.score is not None else "—")

    tab_matrix, tab_layout, tab_config, tab_lint = st.tabs(
        ["Score matrix", "MPS layout", "Compiled config", "Lint"])
    with tab_matrix:
        render_matrix(decision.matrix(), key="whatif")

    pv = preview(decision)
    with tab_layout:
        if pv is None:
            st.info("No GPU was chosen, so no layout changes.")
        else:
            st.plotly_chart(layout_bars(pv.before, pv.after, new_owner=decision.owner),
                            width="stretch")
            st.dataframe(pd.DataFrame(
                [{"owner": s.owner, "model": s.model, "threads %": s.thread_pct,
                  "memory GiB": round(s.memory_mib / 1024, 2),
                  "class": s.workload_class.value if s.workload_class else ""}
                 for s in pv.after.slices]), hide_index=True, width="stretch")
    with tab_config:
        if pv is None:
            st.info("No GPU was chosen, so there is nothing to compile.")
        else:
            changed = pv.plugin_config_before != pv.plugin_config_after
            st.markdown(
                f"**Device-plugin config for {decision.node}**: `{pv.plugin_config_after}`"
                + (f" (today `{pv.plugin_config_before}`: the node's label changes, which "
                   "restarts its MPS daemon; apply it through a rollout)" if changed
                   else " (unchanged)"))
            st.code(pv.plugin_yaml, language="yaml")
            st.markdown("**Node label**")
            st.code("\n".join(f"{k}: {v}" for k, v in pv.node_label.items()), language="yaml")
            st.markdown("**Pod manifest** (MPS limits in the environment)")
            st.code(pv.pod_yaml, language="yaml")
            st.markdown("**DRA ResourceClaimTemplate** (for clusters that use the NVIDIA DRA "
                        "driver)")
            st.code(pv.dra_yaml, language="yaml")
    with tab_lint:
        if pv is None or not pv.findings:
            st.success("No findings: every backend can express this layout.")
        else:
            st.dataframe(pd.DataFrame([{"backend": f.backend, "severity": f.severity,
                                        "gpu": f.gpu or f.node, "code": f.code,
                                        "message": f.message} for f in pv.findings]),
                         hide_index=True, width="stretch")

"""Placement what-if: where would a model server land, and why."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import services
from app.state import PLACEMENT_LAST_REQUEST
from app.widgets.placement import layout_bars, matrix_frame, score_heatmap
from core.errors import ValidationError
from core.model import Priority
from core.placement.preview import preview

st.title("Placement what-if")
st.caption("Preview where a model-server replica would be placed, the filter reasons, the "
           "score matrix and the MPS layout it would create. Nothing is reserved or deployed.")

with st.form("placement.form"):
    c1, c2, c3 = st.columns(3)
    model_name = c1.text_input("Model name", value="llama-2-13b", key="placement.model_name")
    memory_gb = c2.number_input("Model memory (GB)", min_value=0.0, max_value=1000.0,
                                value=13.0, step=0.5, key="placement.memory_gb")
    priority = c3.selectbox("Priority", [p.value for p in Priority], index=1,
                            key="placement.priority")
    c4, c5, c6 = st.columns(3)
    sla_ms = c4.number_input("Latency SLA (ms)", min_value=0.0, value=200.0, step=10.0,
                             key="placement.sla_ms")
    qps = c5.number_input("Expected QPS", min_value=0.0, value=10.0, step=1.0,
                          key="placement.qps")
    namespace = c6.text_input("Namespace", value="inference", key="placement.namespace")
    if st.form_submit_button("Preview placement", type="primary"):
        st.session_state[PLACEMENT_LAST_REQUEST] = {
            "model_name": model_name, "model_memory_gb": memory_gb, "priority": priority,
            "latency_sla_ms": sla_ms, "expected_qps": qps, "namespace": namespace,
        }

raw = st.session_state.get(PLACEMENT_LAST_REQUEST)
if raw is None:
    st.info("Fill in the request and press **Preview placement**.")
    st.stop()

try:
    request = services.parse_request(raw)
except ValidationError as exc:
    st.error(f"**{exc.field}**: {exc.message}. Correct the field and preview again.")
    st.stop()

decision = services.what_if(request)
matrix = decision.matrix()

if decision.placed:
    st.success(decision.summary, icon=":material/check_circle:")
else:
    st.error(decision.summary, icon=":material/block:")
    st.markdown("**What would make it fit**")
    st.markdown("\n".join(f"- {r}" for r in decision.recommendations))

m1, m2, m3, m4 = st.columns(4)
m1.metric("Chosen GPU", f"{decision.node}/gpu{decision.gpu_index}" if decision.placed else "—")
m2.metric("GPU type", decision.gpu_type or "—")
m3.metric("Class / MPS share", f"{decision.workload_class.value} / {decision.share_pct} %")
m4.metric("Score", f"{decision.score:.2f}" if decision.score is not None else "—")

tab_matrix, tab_layout, tab_config, tab_lint = st.tabs(
    ["Score matrix", "MPS layout", "Compiled config", "Lint"])

with tab_matrix:
    if decision.placed:
        st.plotly_chart(score_heatmap(matrix), width="stretch")
    frame = matrix_frame(matrix)
    st.dataframe(
        frame, hide_index=True, width="stretch",
        column_config={c: st.column_config.NumberColumn(format="%.2f")
                       for c in (*matrix.components, "total")},
    )
    st.caption("Weights: " + ", ".join(f"{k} {v:.2f}" for k, v in matrix.weights.items()))

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
        st.markdown("**DRA ResourceClaimTemplate** (for clusters that use the NVIDIA DRA driver)")
        st.code(pv.dra_yaml, language="yaml")

with tab_lint:
    if pv is None or not pv.findings:
        st.success("No findings: every backend can express this layout.")
    else:
        st.dataframe(pd.DataFrame([{"backend": f.backend, "severity": f.severity,
                                    "gpu": f.gpu or f.node, "code": f.code,
                                    "message": f.message} for f in pv.findings]),
                     hide_index=True, width="stretch")

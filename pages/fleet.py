"""Fleet: every node and GPU with its health, load and MPS layout; cordon and uncordon."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import auth, services
from app.widgets.charts import fleet_layout_figure
from app.widgets.problems import show_refused, show_unavailable
from core.auth import Forbidden, Role
from core.mps.layout import GpuLayout

st.title("Fleet")


@st.fragment(run_every=5)
def live_fleet() -> None:
    try:
        nodes = services.fleet_nodes()
    except services.Unavailable as exc:
        show_unavailable(exc, doing="read the fleet's nodes")
        return
    rows, layouts = [], []
    for node in nodes:
        for gpu in node.gpus:
            layouts.append(GpuLayout.from_gpu(node.name, gpu))
            rows.append({
                "node": node.name, "gpu": gpu.index, "type": gpu.gpu_type,
                "ready": node.ready, "schedulable": node.schedulable, "healthy": gpu.healthy,
                "utilization": gpu.utilization, "power W": gpu.power_w,
                "memory used GiB": round(gpu.memory_used_mib / 1024, 1),
                "memory total GiB": round(gpu.memory_total_mib / 1024, 1),
                "MPS clients": len(gpu.slices), "threads used %": gpu.share_used_pct,
                "models": ", ".join(s.model or s.owner for s in gpu.slices),
            })
    frame = pd.DataFrame(rows)
    c = st.columns(4)
    c[0].metric("Nodes", len(nodes))
    c[1].metric("GPUs", len(rows))
    c[2].metric("Cordoned", int((~frame["schedulable"]).sum()) if rows else 0)
    c[3].metric("Unhealthy GPUs", int((~frame["healthy"]).sum()) if rows else 0)
    st.dataframe(frame, hide_index=True, width="stretch", height=36 * (len(rows) + 1) + 4,
                 column_config={
        "utilization": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0,
                                                       format="percent"),
        "power W": st.column_config.NumberColumn(format="%.0f"),
    })
    st.plotly_chart(fleet_layout_figure(layouts), width="stretch", key="fleet.layouts")


live_fleet()

st.subheader("Cordon or uncordon a node")
try:
    names = [n.name for n in services.fleet_nodes()]
except services.Unavailable:  # live_fleet above says why
    st.info("Cordoning needs the cluster's nodes; the form returns once the cluster answers.")
    st.stop()
with st.form("fleet.cordon"):
    node = st.selectbox("Node", names, key="fleet.node")
    reason = st.text_input("Reason (kept in the audit trail)", key="fleet.reason")
    b1, b2, _ = st.columns([1, 1, 4])
    locked = not auth.can(Role.OPERATOR)
    tip = auth.needs(Role.OPERATOR) if locked else None
    cordon = b1.form_submit_button("Cordon", disabled=locked, help=tip)
    uncordon = b2.form_submit_button("Uncordon", disabled=locked, help=tip)
if cordon or uncordon:
    if not reason.strip():
        st.error("**reason**: say why, for the audit trail, then try again.")
    else:
        try:
            services.set_schedulable(auth.actor(), node, bool(uncordon), reason=reason.strip())
        except Forbidden as exc:
            show_refused(exc)
        except services.Unavailable as exc:
            show_unavailable(exc, doing=f"{'uncordon' if uncordon else 'cordon'} {node}")
        else:
            st.success(f"{node} {'uncordoned' if uncordon else 'cordoned'}.")

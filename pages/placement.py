"""Placement: what-if preview, submit to the queue, batch upload, queue, decision history."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import auth, services
from app.state import PLACEMENT_LAST_REQUEST, PLACEMENT_NOTICE
from app.widgets.decision import render_decision, render_matrix
from app.widgets.problems import show_refused, show_unavailable
from core.auth import Forbidden, Role
from core.errors import ValidationError
from core.model import Priority
from core.placement.matrix import DecisionMatrix

st.title("Placement")
st.caption("Preview where a model-server replica would land and why, then submit it to the "
           "placement queue. A preview reserves nothing.")

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
    b1, b2, _ = st.columns([1, 1, 4])
    preview_clicked = b1.form_submit_button("Preview placement", type="primary")
    locked = not auth.can(Role.OPERATOR)
    submit_clicked = b2.form_submit_button(
        "Submit to queue", disabled=locked, help=auth.needs(Role.OPERATOR) if locked else None)
    if preview_clicked or submit_clicked:
        st.session_state[PLACEMENT_LAST_REQUEST] = {
            "model_name": model_name, "model_memory_gb": memory_gb, "priority": priority,
            "latency_sla_ms": sla_ms, "expected_qps": qps, "namespace": namespace,
        }

raw = st.session_state.get(PLACEMENT_LAST_REQUEST)
request = None
if raw is not None:
    try:
        request = services.parse_request(raw)
    except ValidationError as exc:
        st.error(f"**{exc.field}**: {exc.message}. Correct the field and try again.")

if request is not None and submit_clicked:
    try:
        ids = services.submit(auth.actor(), [request], source="ui",
                              reason="submitted from the Placement page")
    except Forbidden as exc:
        show_refused(exc)
    except services.Unavailable as exc:
        show_unavailable(exc, doing="queue the request (nothing was saved)")
    else:
        st.session_state[PLACEMENT_NOTICE] = f"Queued {ids[0]} ({request.model_name})."

notice = st.session_state.pop(PLACEMENT_NOTICE, None)
if notice:
    st.toast(notice, icon=":material/queue:")
    st.info(notice)

tab_whatif, tab_queue, tab_history, tab_batch = st.tabs(
    ["What-if", "Queue", "Decision history", "Batch upload"])

with tab_whatif:
    if request is None:
        st.info("Fill in the request and press **Preview placement**.")
    else:
        try:
            decision = services.what_if(request)
        except services.Unavailable as exc:
            show_unavailable(exc, doing="preview the placement")
        else:
            render_decision(decision)


def queue_tab() -> None:
    try:
        counts, frame = services.queue_frame()
    except services.Unavailable as exc:
        show_unavailable(exc, doing="read the placement queue")
        return
    cols = st.columns(5)
    for col, state in zip(cols, ("queued", "claimed", "placing", "bound", "failed"),
                          strict=True):
        col.metric(state.capitalize(), counts.get(state, 0))
    st.caption("The controller places queued requests continuously (in embedded mode it "
               "runs inside the console). The button runs one pass right away.")
    locked = not auth.can(Role.OPERATOR)
    if st.button("Place queued requests now", key="placement.place_now", disabled=locked,
                 help=auth.needs(Role.OPERATOR) if locked else
                 "Runs one placement pass: claim, decide, reserve, bind, record."):
        try:
            result = services.place_queued(auth.actor(), reason="Place now (Placement page)")
        except Forbidden as exc:
            show_refused(exc)
            return
        except services.Unavailable as exc:
            show_unavailable(exc, doing="run a placement pass (every request stays queued)")
        else:
            st.session_state[PLACEMENT_NOTICE] = (
                f"The controller ({result.delegated_to}) leads and places queued requests "
                "on every iteration; this tab placed nothing."
                if result.delegated_to else
                f"Placement pass: {len(result.placed)} placed, {len(result.requeued)} "
                f"requeued, {len(result.failed)} failed.")
            st.rerun()
    if frame.empty:
        st.caption("The queue is empty.")
    else:
        st.dataframe(frame, hide_index=True, width="stretch", key="placement.queue_table")


with tab_queue:
    queue_tab()


def history_tab() -> None:
    try:
        history = services.decision_history()
    except services.Unavailable as exc:
        show_unavailable(exc, doing="read the decision history")
        return
    if not history:
        st.caption("No decisions yet. Submit a request and run a placement pass.")
        return
    st.dataframe(pd.DataFrame([{
        "decision": d.id, "at": d.created_at, "request": d.request_id,
        "model": d.model_name, "placed": d.placed,
        "gpu": f"{d.node}/gpu{d.gpu_index}" if d.placed else "—", "type": d.gpu_type,
        "class": d.workload_class, "share %": d.share_pct, "score": d.score,
        "weights v": d.weight_version, "summary": d.summary,
    } for d in history]), hide_index=True, width="stretch", key="placement.history")
    by_id = {d.id: d for d in history}
    chosen = st.selectbox("Show the matrix of decision", list(by_id),
                          format_func=lambda i: f"#{i} {by_id[i].model_name} "
                                                f"({by_id[i].request_id})",
                          key="placement.history_pick")
    render_matrix(DecisionMatrix.from_dict(by_id[chosen].matrix), key="history")


with tab_history:
    history_tab()

with tab_batch:
    st.markdown("Upload a YAML list (or `{requests: [...]}`) or a CSV with the columns "
                "`model_name, model_memory_gb, priority, latency_sla_ms` and optionally "
                "`expected_qps, batch_size, namespace, request_id, label.<key>`. The whole "
                "batch is validated first: one bad row refuses all of it.")
    upload = st.file_uploader("Batch of requests", type=["yaml", "yml", "csv"],
                              key="placement.upload")
    locked = not auth.can(Role.OPERATOR)
    if upload is not None and st.button("Enqueue batch", key="placement.enqueue_batch",
                                        disabled=locked,
                                        help=auth.needs(Role.OPERATOR) if locked else None):
        kind = "csv" if upload.name.lower().endswith(".csv") else "yaml"
        try:
            with st.spinner("Validating…"):
                batch = services.parse_upload(upload.getvalue(), kind=kind)
            with st.spinner(f"Enqueuing {len(batch)} requests…"):
                ids = services.submit(auth.actor(), batch, source=f"upload:{upload.name}",
                                      reason=f"batch upload {upload.name}")
        except Forbidden as exc:
            show_refused(exc)
        except ValidationError as exc:
            st.error(f"**{exc.field}**: {exc.message}. Nothing was enqueued; fix the file "
                     "and upload again.")
        except services.Unavailable as exc:
            show_unavailable(exc, doing="enqueue the batch (nothing was enqueued)")
        else:
            st.success(f"Enqueued {len(ids)} requests from {upload.name}.")

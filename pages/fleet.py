"""Fleet: a summary per pool and GPU type, a utilization heat map, the busiest GPUs, a
paged and filtered table of GPUs, MPS layouts of chosen nodes; cordon and uncordon.

Sized for 5,000 GPUs: the small summary refreshes every 5 s, the detailed part less often
as the fleet grows (see ``fleet_view.refresh_interval_s``), and no figure covers every GPU.
"""

from __future__ import annotations

import streamlit as st

from app import auth, services
from app import fleet_view as fv
from app.widgets import fleet as fw
from app.widgets.problems import show_refused, show_unavailable
from core.auth import Forbidden, Role

st.title("Fleet")
# A whole run of the page asks the cluster again; its parts (and fragment reruns within a
# second) share that one read.
fw.forget_read()


@st.fragment(run_every=5)
def live_summary() -> None:
    try:
        _, frame = fw.read_fleet()
    except services.Unavailable as exc:
        show_unavailable(exc, doing="read the fleet's nodes")
        return
    fw.fleet_metrics(frame)
    st.subheader("By pool and GPU type")
    fw.summary_table(frame)


def details(interval_s: float | None) -> None:
    try:
        nodes, frame = fw.read_fleet()
    except services.Unavailable:  # live_summary above says why
        return
    st.subheader("GPUs")
    if interval_s is None:
        c = st.columns([5, 1])
        c[0].caption(f"{len(frame)} GPUs: this part is redrawn when you change it or press "
                     "Refresh; the summary above refreshes every 5 s.")
        c[1].button("Refresh", key=fw.REFRESH_KEY)
    else:
        st.caption(f"Refreshes every {interval_s:.0f} s.")
    flt = fw.filter_controls(frame)
    shown = fv.filter_gpus(frame, flt)
    fw.matches_caption(shown, flt)
    fw.heatmap(shown)
    st.subheader("Busiest GPUs")
    fw.busiest_table(shown)
    st.subheader("Table")
    fw.paged_table(shown)
    st.subheader("MPS layout")
    fw.layout_pictures(nodes, fv.node_names(shown), searched=bool(flt.search.strip()))


live_summary()
try:
    fleet, _ = fw.read_fleet()
except services.Unavailable:  # live_summary above says why
    fleet = ()
names = [n.name for n in fleet]
interval = fv.refresh_interval_s(sum(len(n.gpus) for n in fleet)) if fleet else None
# The same function each run, so Streamlit keeps the fragment (and its widgets' state).
st.fragment(run_every=interval)(details)(interval)

st.subheader("Cordon or uncordon a node")
if not names:
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
            fw.forget_read()
            st.success(f"{node} {'uncordoned' if uncordon else 'cordoned'}.")

"""Audit: every decision and human action — who, when, what, on which object, why, and
what they were shown — filterable, with a CSV export that is itself audited."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import streamlit as st

from app import audit_services, auth, cost_services, services
from app.widgets.problems import show_unavailable
from core.errors import ValidationError

st.title("Audit")
st.caption("Every human action (done or refused, with the figures the person was shown), "
           "every controller action, and every placement and autoscaling decision.")

RANGES = {"1 h": timedelta(hours=1), "24 h": timedelta(days=1), "7 d": timedelta(days=7),
          "30 d": timedelta(days=30), "all": None}
try:
    actors, actions = audit_services.facets()
except services.Unavailable as exc:
    show_unavailable(exc, doing="read the audit trail")
    st.stop()

c1, c2, c3, c4 = st.columns([1, 1, 1, 2])
span = c1.selectbox("Range", list(RANGES), index=1, key="audit.range")
actor = c2.selectbox("Actor", ["(anyone)", *actors], key="audit.actor")
action = c3.selectbox("Action", ["(any)", *actions], key="audit.action")
object_text = c4.text_input("Object contains", max_chars=audit_services.MAX_OBJECT_FILTER,
                            key="audit.object", placeholder="node, plan, request id…")
now = datetime.now(UTC)
delta = RANGES[span]
flt = audit_services.TrailFilter(
    since=None if delta is None else now - delta, until=None,
    actor="" if actor == "(anyone)" else actor, action="" if action == "(any)" else action,
    object_text=object_text.strip())
try:
    entries = audit_services.trail(flt)
except ValidationError as exc:
    st.error(f"**{exc.field}**: {exc.message}.")
    st.stop()
except services.Unavailable as exc:
    show_unavailable(exc, doing="read the audit trail")
    st.stop()

if not entries:
    st.info("Nothing in the audit trail matches these filters.")
    st.stop()

refused = sum(1 for e in entries if e.outcome == "refused")
m1, m2, m3 = st.columns(3)
m1.metric("Entries", len(entries))
m2.metric("Human actions", sum(1 for e in entries if e.source == "action"
                               and e.actor != "controller"))
m3.metric("Refused", refused)
if len(entries) >= flt.limit:
    st.caption(f"Showing the newest {flt.limit}; narrow the filters to see older entries.")

frame = audit_services.frame(entries)
st.dataframe(frame, hide_index=True, width="stretch", key="audit.table",
             column_config={"shown": st.column_config.TextColumn("shown", width="large")})

with_shown = [e for e in entries if e.shown]
if with_shown:
    with st.expander("What a person was shown when they acted"):
        labels = [f"{e.at:%Y-%m-%d %H:%M:%S} {e.actor} {e.action} {e.object_id}"
                  for e in with_shown[:200]]
        pick = st.selectbox("Entry", range(len(labels)), format_func=labels.__getitem__,
                            key="audit.shown_pick")
        st.code(json.dumps(with_shown[pick].shown, indent=2, sort_keys=True, default=str),
                language="json")

who = auth.actor()
csv_text = audit_services.csv_text(entries)
st.download_button(
    "Export CSV", mime="text/csv", icon=":material/download:", key="audit.export",
    file_name=f"audit_{now:%Y%m%dT%H%M%SZ}.csv",
    # Run on the server at the click: the export is audited when it happens.
    data=lambda: cost_services.export_csv(who, "audit", csv_text=csv_text, rows=len(entries),
                                     filters=flt.as_dict()))

"""Console entrypoint: page config, navigation, shared sidebar."""

from __future__ import annotations

import streamlit as st

from app import services
from app.state import init_session_state

st.set_page_config(page_title="GPU Scheduler Console", page_icon=":material/memory:",
                   layout="wide")
init_session_state()

pages = [
    st.Page("../pages/overview.py", title="Overview", icon=":material/monitoring:",
            default=True),
    st.Page("../pages/fleet.py", title="Fleet", icon=":material/dns:", url_path="fleet"),
    st.Page("../pages/placement.py", title="Placement", icon=":material/hub:",
            url_path="placement"),
    st.Page("../pages/costs.py", title="Cost reports", icon=":material/payments:",
            url_path="costs"),
    st.Page("../pages/weights.py", title="Scheduler weights", icon=":material/tune:",
            url_path="weights"),
    st.Page("../pages/autoscaling.py", title="Autoscaling", icon=":material/open_in_full:",
            url_path="autoscaling"),
]
page = st.navigation(pages)

rt = services.runtime()
with st.sidebar:
    st.markdown("**GPU Scheduler Console**")
    st.caption(f"Fleet: {services.fleet_source()}")
    st.caption(f"Metrics: {rt.metrics_source}")
    st.caption(f"Store: {services.store_display_url()}")
    s = services.settings()
    st.caption(f"Prices as of {s.prices_as_of}: "
               + ", ".join(f"{t.name} ${t.price_per_gpu_hour}/GPU-h"
                           for t in s.catalog.types.values())
               + f"; electricity ${s.catalog.electricity_per_kwh}/kWh")

page.run()

"""Session-state keys, one constant each, prefixed by the page that owns them."""

from __future__ import annotations

import streamlit as st

PLACEMENT_LAST_REQUEST = "placement.last_request"
PLACEMENT_NOTICE = "placement.notice"

_DEFAULTS: dict[str, object] = {
    PLACEMENT_LAST_REQUEST: None,
}


def init_session_state() -> None:
    for key, value in _DEFAULTS.items():
        st.session_state.setdefault(key, value)

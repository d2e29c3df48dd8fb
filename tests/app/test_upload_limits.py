"""The Placement page's batch upload through services.parse_upload and the [uploads] settings."""

from __future__ import annotations

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.app.conftest import open_page
from tests.unit.test_safe_parsing import alias_bomb

HEADER = b"model_name,model_memory_gb,priority,latency_sla_ms\n"


def upload(name: str, content: bytes) -> AppTest:
    at = open_page("placement")
    at.file_uploader(key="placement.upload").upload(name, content, "text/plain")
    at.run()
    at.button(key="placement.enqueue_batch").click()
    at.run()
    assert not at.exception, at.exception
    return at


def test_an_excel_csv_with_a_byte_order_mark_is_enqueued() -> None:
    body = HEADER + b"mistral-7b,8,MEDIUM,300\nphi-2,2,LOW,900\n"
    at = upload("batch.csv", b"\xef\xbb\xbf" + body)
    assert any("Enqueued 2 requests" in s.value for s in at.success)


def test_the_alias_bomb_is_refused_on_the_page() -> None:
    at = upload("bomb.yaml", alias_bomb().encode())
    assert any("anchors and aliases" in e.value for e in at.error)


@pytest.mark.parametrize(("env", "content", "setting"), [
    ({"GSC__UPLOADS__MAX_ROWS": "1"}, HEADER + b"a,8,MEDIUM,300\nb,2,LOW,900\n",
     "uploads.max_rows"),
    ({"GSC__UPLOADS__MAX_BYTES": "100"}, b"x" * 101, "uploads.max_bytes"),
])
def test_uploads_over_the_settings_limits_are_refused(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], content: bytes, setting: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    st.cache_resource.clear()
    at = upload("batch.csv", content)
    assert any(setting in e.value for e in at.error)

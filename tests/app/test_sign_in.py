"""Sign-in with local accounts, throttling, expiry, sign-out, and the role each page
enforces; with no sign-in, the loopback-only rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import auth, services
from core.auth import hash_password
from db.audit import list_audit
from tests.app.conftest import ENTRY

ROOT = Path(__file__).resolve().parents[2]
PASSWORDS = {"vic": "viewer-pw-1", "otto": "operator-pw-1", "ada": "approver-pw-1"}
ROLES = {"vic": "viewer", "otto": "operator", "ada": "approver"}


def write_settings(path: Path, *, ttl_s: int = 3600, max_failures: int = 3) -> Path:
    lines = ["[auth]", 'mode = "local"', f"session_ttl_s = {ttl_s}",
             f"max_failures = {max_failures}", "failure_window_s = 600", "lockout_s = 600"]
    for name, password in PASSWORDS.items():
        lines += [f"[auth.accounts.{name}]", f'role = "{ROLES[name]}"',
                  f'password_hash = "{hash_password(password, salt=name.encode() * 8)}"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def accounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_settings(tmp_path / "settings.toml")
    monkeypatch.setenv("GSC_SETTINGS_FILE", str(path))
    return path


def console() -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input[0].set_value(name)
    at.text_input[1].set_value(password)
    at.button[0].click()
    at.run()
    assert not at.exception, at.exception
    return at


def signed_in(name: str, page: str | None = None) -> AppTest:
    at = sign_in(console(), name, PASSWORDS[name])
    assert at.title and at.title[0].value != "GPU Scheduler Console", [e.value for e in at.error]
    if page:
        at.switch_page(f"../pages/{page}.py")
        at.run()
        assert not at.exception, at.exception
    return at


def audit_actions(action: str) -> list:
    with services.runtime().factory() as s:
        return list_audit(s, action=action)


def test_nobody_sees_a_page_before_signing_in(accounts: Path) -> None:
    at = console()
    assert [t.value for t in at.title] == ["GPU Scheduler Console"]
    assert not at.dataframe and not at.metric
    assert [b.label for b in at.button] == ["Sign in"]


def test_a_correct_password_signs_in_with_the_accounts_role(accounts: Path) -> None:
    at = signed_in("otto")
    assert any("Signed in as **otto** (operator" in c.value for c in at.caption)
    (entry,) = audit_actions("sign-in")
    assert entry.actor == "otto"


def test_a_wrong_password_is_refused_without_saying_which_part_was_wrong(
        accounts: Path) -> None:
    at = sign_in(console(), "otto", "nope")
    assert any("Wrong account name or password" in e.value for e in at.error)
    at = sign_in(console(), "nobody", "nope")
    assert any("Wrong account name or password" in e.value for e in at.error)
    assert len(audit_actions("sign-in-failed")) == 2


def test_repeated_failures_lock_the_account_even_for_the_right_password(
        accounts: Path) -> None:
    for _ in range(3):
        sign_in(console(), "ada", "guess")
    at = sign_in(console(), "ada", PASSWORDS["ada"])
    assert any("Too many failed sign-ins" in e.value for e in at.error)
    assert [t.value for t in at.title] == ["GPU Scheduler Console"]
    assert audit_actions("sign-in-locked")
    # Another account is not locked by ada's failures (the client limit is higher).
    assert signed_in("vic")


def test_a_locked_account_is_audited_once_however_often_it_is_tried(accounts: Path) -> None:
    for _ in range(3):
        sign_in(console(), "ada", "guess")
    for _ in range(6):  # hammering a locked account does not grow the trail
        at = sign_in(console(), "ada", "guess")
        assert any("Too many failed sign-ins" in e.value for e in at.error)
    assert len(audit_actions("sign-in-locked")) == 1
    assert len(audit_actions("sign-in-failed")) == 3


def test_an_expired_session_asks_to_sign_in_again(accounts: Path) -> None:
    at = signed_in("vic")
    held = at.session_state[auth.SESSION_KEY]
    at.session_state[auth.SESSION_KEY] = auth.SignedIn(held.actor, held.signed_in_at - 7200,
                                                       held.signed_in_at - 1)
    at.run()
    assert [t.value for t in at.title] == ["GPU Scheduler Console"]
    assert any("session expired" in i.value for i in at.info)
    assert audit_actions("session-expired")


def test_sign_out_ends_the_session(accounts: Path) -> None:
    at = signed_in("vic")
    at.button(key="auth.sign_out").click()
    at.run()
    assert [t.value for t in at.title] == ["GPU Scheduler Console"]
    assert audit_actions("sign-out")


def test_a_viewer_sees_every_action_disabled(accounts: Path) -> None:
    for page in ("fleet", "placement", "autoscaling"):
        at = signed_in("vic", page)
        actions = [b for b in at.button if b.label not in ("Sign out", "Preview placement")]
        assert actions, page
        assert all(b.disabled for b in actions), [(b.label, b.disabled) for b in actions]


def test_an_operator_may_cordon_and_the_audit_names_them(accounts: Path) -> None:
    at = signed_in("otto", "fleet")
    node = at.selectbox(key="fleet.node").value
    at.text_input(key="fleet.reason").set_value("maintenance")
    next(b for b in at.button if b.label == "Cordon").click()
    at.run()
    assert any(f"{node} cordoned" in s.value for s in at.success)
    (entry,) = audit_actions("cordon")
    assert (entry.actor, entry.object_id, entry.details["role"]) == ("otto", node, "operator")


def test_without_sign_in_every_visitor_is_the_local_approver_with_a_banner() -> None:
    at = console()
    assert any("No sign-in configured" in w.value for w in at.warning)
    assert at.title[0].value == "Overview"


def test_without_sign_in_the_console_refuses_to_serve_another_address() -> None:
    done = subprocess.run([sys.executable, "-m", "app.serve", "--host", "0.0.0.0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "refusing to serve on '0.0.0.0'" in done.stderr and "[auth]" in done.stderr


class FakeUser:
    """What ``st.user`` holds after Streamlit's OIDC sign-in (the ID token's claims)."""

    def __init__(self, claims: dict | None) -> None:
        self.claims = claims

    @property
    def is_logged_in(self) -> bool:
        return self.claims is not None

    def to_dict(self) -> dict:
        return dict(self.claims or {})


@pytest.fixture()
def oidc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    path = tmp_path / "settings.toml"
    path.write_text('[auth]\nmode = "oidc"\n[auth.oidc]\nclaim = "groups"\n'
                    '[auth.oidc.roles]\napprover = ["sre-leads"]\nviewer = ["eng"]\n',
                    encoding="utf-8")
    monkeypatch.setenv("GSC_SETTINGS_FILE", str(path))
    return monkeypatch


def test_oidc_signs_in_with_the_role_its_claim_maps_to(oidc: pytest.MonkeyPatch) -> None:
    import streamlit as st

    oidc.setattr(st, "user", FakeUser({"email": "ana@example.com", "groups": ["eng",
                                                                            "sre-leads"]}))
    at = console()
    assert any("Signed in as **ana@example.com** (approver, OIDC)" in c.value
               for c in at.caption)


def test_oidc_without_a_mapped_role_gets_no_page(oidc: pytest.MonkeyPatch) -> None:
    import streamlit as st

    oidc.setattr(st, "user", FakeUser({"email": "bo@example.com", "groups": ["sales"]}))
    at = console()
    assert any("has no role in this console" in e.value for e in at.error)
    assert [b.label for b in at.button] == ["Sign out"]


def test_oidc_before_sign_in_offers_the_providers_sign_in(oidc: pytest.MonkeyPatch) -> None:
    import streamlit as st

    oidc.setattr(st, "user", FakeUser(None))
    at = console()
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.dataframe

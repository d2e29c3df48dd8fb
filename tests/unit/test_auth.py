"""Roles, password hashes, throttling and the [auth] settings (pure)."""

from __future__ import annotations

import pytest

from app.serve import bind_problem
from core.auth import (
    DUMMY_HASH,
    PasswordHash,
    Role,
    ThrottlePolicy,
    allows,
    hash_password,
    locked_until,
)
from core.auth_settings import AuthSettings
from core.errors import ValidationError

SALT = b"s" * 16


def test_roles_are_ordered_viewer_operator_approver() -> None:
    assert allows(Role.APPROVER, Role.OPERATOR) and allows(Role.OPERATOR, Role.VIEWER)
    assert not allows(Role.VIEWER, Role.OPERATOR)
    assert not allows(Role.OPERATOR, Role.APPROVER)


def test_a_hash_verifies_its_password_only() -> None:
    encoded = hash_password("correct horse", salt=SALT)
    parsed = PasswordHash.parse(encoded, field="h")
    assert parsed.verify("correct horse")
    assert not parsed.verify("correct hors")
    assert not parsed.verify("")
    assert "correct horse" not in encoded


def test_two_accounts_with_one_password_have_different_hashes() -> None:
    assert hash_password("pw-12345", salt=b"a" * 16) != hash_password("pw-12345", salt=b"b" * 16)


def test_the_dummy_hash_matches_no_password() -> None:
    assert not DUMMY_HASH.verify("anything")


@pytest.mark.parametrize("bad", ["", "plain", "scrypt$1$8$1$AAAA$AAAA", "md5$x$y$z$a$b",
                                 "scrypt$16384$8$1$!!$AAAA"])
def test_a_malformed_hash_is_refused_naming_the_key(bad: str) -> None:
    with pytest.raises(ValidationError) as err:
        PasswordHash.parse(bad, field="auth.accounts.bob.password_hash")
    assert err.value.field == "auth.accounts.bob.password_hash"


def test_five_failures_within_the_window_lock_until_the_lockout_after_the_last() -> None:
    policy = ThrottlePolicy(max_failures=5, window_s=900, lockout_s=600)
    times = [0.0, 100.0, 200.0, 300.0, 400.0]
    assert locked_until(times[:4], now=401, limit=5, policy=policy) is None
    assert locked_until(times, now=401, limit=5, policy=policy) == 1000.0
    assert locked_until(times, now=1000.5, limit=5, policy=policy) is None


def test_failures_spread_wider_than_the_window_do_not_lock() -> None:
    policy = ThrottlePolicy(max_failures=3, window_s=100, lockout_s=600)
    assert locked_until([0.0, 150.0, 300.0], now=301, limit=3, policy=policy) is None


def _account(role: str = "operator") -> dict[str, str]:
    return {"role": role, "password_hash": hash_password("secret-pw", salt=SALT)}


def test_local_mode_reads_accounts_with_case_folded_names() -> None:
    cfg = AuthSettings.from_mapping({"mode": "local", "accounts": {"Alice": _account()}})
    assert cfg.sign_in_configured
    assert cfg.accounts["alice"].role is Role.OPERATOR


@pytest.mark.parametrize(("raw", "field"), [
    ({"mode": "local"}, "auth.accounts"),
    ({"mode": "none", "accounts": {"a": _account()}}, "auth.mode"),
    ({"mode": "ldap"}, "auth.mode"),
    ({"mode": "local", "accounts": {"a": {"role": "root", "password_hash": "x"}}},
     "auth.accounts.a.role"),
    ({"mode": "local", "accounts": {"a": {"role": "viewer"}}}, "auth.accounts.a.password_hash"),
    ({"mode": "local", "accounts": {"bad name!": _account()}}, "auth.accounts.bad name!"),
    ({"session_ttl_s": 5}, "auth.session_ttl_s"),
    ({"colour": "blue"}, "auth.colour"),
    ({"oidc": {"roles": {"approver": ["g"], "viewer": ["g"]}}}, "auth.oidc.roles.viewer"),
])
def test_bad_auth_settings_are_refused_naming_the_key(raw: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        AuthSettings.from_mapping(raw)
    assert err.value.field == field


def test_oidc_maps_the_highest_role_of_the_claim_values() -> None:
    cfg = AuthSettings.from_mapping({"mode": "oidc", "oidc": {
        "claim": "groups", "roles": {"approver": ["sre-leads"], "operator": ["sre"],
                                     "viewer": ["eng"]}}})
    assert cfg.oidc.role_for({"groups": ["eng", "sre"]}) is Role.OPERATOR
    assert cfg.oidc.role_for({"groups": ["sre-leads", "eng"]}) is Role.APPROVER
    assert cfg.oidc.role_for({"groups": "eng"}) is Role.VIEWER
    assert cfg.oidc.role_for({"groups": ["other"]}) is None
    assert cfg.oidc.role_for({}) is None


def test_oidc_by_email_with_a_default_role() -> None:
    cfg = AuthSettings.from_mapping({"mode": "oidc", "oidc": {
        "claim": "email", "default_role": "viewer",
        "roles": {"approver": ["ana@example.com"]}}})
    assert cfg.oidc.role_for({"email": "ana@example.com"}) is Role.APPROVER
    assert cfg.oidc.role_for({"email": "bo@example.com"}) is Role.VIEWER


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.5"])
def test_without_sign_in_the_console_may_serve_loopback(host: str) -> None:
    assert bind_problem(host, sign_in_configured=False) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "console.example.com"])
def test_without_sign_in_any_other_address_is_refused_saying_how_to_configure(host: str) -> None:
    problem = bind_problem(host, sign_in_configured=False)
    assert problem is not None and "[auth]" in problem and "python -m app.auth hash" in problem
    assert bind_problem(host, sign_in_configured=True) is None

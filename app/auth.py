"""Who is signed in to this browser session, and the sign-in page (SPEC §6).

Three modes (settings ``[auth] mode``):
- ``none``: no sign-in; the console serves on loopback only (``app.serve`` refuses any
  other address, and a visitor from another address is turned away here too), and
  every visitor is the local approver, with a banner saying so;
- ``local``: accounts from the settings file (scrypt hashes, ``python -m app.auth hash``),
  failed sign-ins throttled per account and per client address in the store, so every
  console process sees the same lock-out;
- ``oidc``: Streamlit's native ``st.login`` / ``st.user``, the role mapped from a claim.

A session ends ``session_ttl_s`` after sign-in; there is a sign-out. Sign-ins, failures,
lock-outs, expiries and sign-outs are audited. Pages ask ``actor()`` who acts and ``can``
what to show; the check that counts is each service action's (``app.actions``).
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import streamlit as st

from core.auth import (
    DUMMY_HASH,
    LOCAL_APPROVER,
    Actor,
    Role,
    allows,
    hash_password,
    locked_until,
)
from core.auth_settings import AuthSettings

SESSION_KEY = "auth.session"
NOTICE_KEY = "auth.notice"
OIDC_SINCE_KEY = "auth.oidc_since"
MAX_NAME_CHARS = 64


class SignInRefused(Exception):
    """A sign-in was refused; the message is safe to show (it never says which part of
    the name/password pair was wrong)."""


@dataclass(frozen=True)
class SignedIn:
    actor: Actor
    signed_in_at: float
    expires_at: float


def _settings() -> AuthSettings:
    from app import services

    return services.settings().auth


def client_address() -> str:
    """The visitor's address ("local" from loopback); not proof of anything, but a key
    for throttling."""
    try:
        ip = st.context.ip_address
    except Exception:  # outside a script run (tests calling services directly)
        ip = None
    return ip if isinstance(ip, str) and ip else "local"


def _is_loopback(ip: object) -> bool:
    if not isinstance(ip, str):  # Streamlit reports loopback visitors as None
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _audit(*, actor: str, action: str, reason: str, details: dict[str, Any]) -> None:
    from app import services
    from db import audit

    with services.runtime().factory.begin() as s:
        audit.record_audit(s, actor=actor[:MAX_NAME_CHARS], action=action, object_type="session",
                          object_id=details.get("client", "")[:128], reason=reason,
                          now=datetime.now(UTC), details=details)


def sign_in(name: str, password: str, *, client: str, now: float | None = None) -> Actor:
    """Check a local account's password, with throttling; raises ``SignInRefused``."""
    from app import services
    from db import signin

    cfg = _settings()
    if cfg.mode != "local":
        raise SignInRefused("local accounts are not enabled ([auth] mode is not \"local\")")
    at = time.time() if now is None else now
    account = name.strip().lower()[:MAX_NAME_CHARS]
    policy = cfg.throttle
    since = at - policy.window_s - policy.lockout_s
    with services.runtime().factory() as s:
        by_account = signin.failures(s, account=account, since=since)
        by_client = signin.failures(s, client=client, since=since)
    lock = max((t for t in (
        locked_until(by_account, now=at, limit=policy.max_failures, policy=policy),
        locked_until(by_client, now=at, limit=policy.max_client_failures, policy=policy),
    ) if t is not None), default=None)
    details = {"client": client, "account": account}
    if lock is not None:
        # Audited once per lock-out (per account and per client): a client hammering a
        # locked account must not grow the trail one row per attempt.
        from db import audit

        started = datetime.fromtimestamp(lock - policy.lockout_s, UTC)
        with services.runtime().factory() as s:
            seen = audit.recorded_since(s, action="sign-in-locked", since=started,
                                        actor=(account or "?")[:MAX_NAME_CHARS],
                                        object_id=client[:128])
        if not seen:
            _audit(actor=account or "?", action="sign-in-locked",
                   reason="too many failed sign-ins", details={**details, "locked_until": lock})
        minutes = max(1, round((lock - at) / 60))
        raise SignInRefused(f"Too many failed sign-ins: try again in about {minutes} min.")
    known = cfg.accounts.get(account)
    ok = (known.password if known else DUMMY_HASH).verify(password) and known is not None
    if not ok or known is None:
        with services.runtime().factory.begin() as s:
            signin.record_failure(s, account=account, client=client, now=at, policy=policy)
        _audit(actor=account or "?", action="sign-in-failed", reason="wrong name or password",
               details=details)
        raise SignInRefused("Wrong account name or password.")
    with services.runtime().factory.begin() as s:
        signin.clear_account(s, account=account)
    actor = Actor(known.name, known.role, "local account")
    _audit(actor=actor.name, action="sign-in", reason="", details={**details,
                                                                   "role": actor.role.value})
    return actor


def _oidc_actor(cfg: AuthSettings, now: float) -> Actor | None:
    user = st.user
    if not user.is_logged_in:
        return None
    claims = user.to_dict()
    since = st.session_state.setdefault(OIDC_SINCE_KEY, float(claims.get("iat") or now))
    if now - since > cfg.session_ttl_s:
        st.session_state.pop(OIDC_SINCE_KEY, None)
        st.session_state[NOTICE_KEY] = "Your session expired: sign in again."
        st.logout()
        return None
    name = str(claims.get("email") or claims.get("preferred_username") or claims.get("sub")
               or "?")[:MAX_NAME_CHARS]
    role = cfg.oidc.role_for(claims)
    if role is None:
        st.error(f"**{name} has no role in this console.** Ask an administrator to add your "
                 f"`{cfg.oidc.claim}` to `[auth.oidc.roles]`.", icon=":material/block:")
        st.button("Sign out", on_click=st.logout)
        st.stop()
    return Actor(name, role, "OIDC")


def current(now: float | None = None) -> Actor | None:
    """The signed-in actor of this session; ``None`` when nobody is (or the session ended)."""
    cfg = _settings()
    at = time.time() if now is None else now
    if cfg.mode == "none":
        return LOCAL_APPROVER
    if cfg.mode == "oidc":
        return _oidc_actor(cfg, at)
    held: SignedIn | None = st.session_state.get(SESSION_KEY)
    if held is None:
        return None
    if at >= held.expires_at:
        st.session_state.pop(SESSION_KEY, None)
        st.session_state[NOTICE_KEY] = "Your session expired: sign in again."
        _audit(actor=held.actor.name, action="session-expired", reason="",
               details={"client": client_address(), "signed_in_at": held.signed_in_at})
        return None
    return held.actor


def actor() -> Actor:
    """Who acts in this script run (the entrypoint has made sure somebody is signed in)."""
    who = current()
    if who is None:
        st.stop()
    return who


def can(role: Role) -> bool:
    who = current()
    return who is not None and allows(who.role, role)


def needs(role: Role) -> str:
    """The tooltip of an action the signed-in role cannot take."""
    return f"Needs the {role.value} role."


def sign_out() -> None:
    held: SignedIn | None = st.session_state.pop(SESSION_KEY, None)
    if held is not None:
        _audit(actor=held.actor.name, action="sign-out", reason="",
               details={"client": client_address()})
    if _settings().mode == "oidc":
        st.session_state.pop(OIDC_SINCE_KEY, None)
        st.logout()


def gate() -> Actor:
    """Make sure somebody may use the console in this run, or show why not and stop."""
    cfg = _settings()
    if cfg.mode == "none" and not _is_loopback(st.context.ip_address):
        st.error("**This console has no sign-in configured, so it serves loopback visitors "
                 "only.** Configure `[auth]` (local accounts or OIDC; see the README) to "
                 "serve other addresses.", icon=":material/block:")
        st.stop()
    who = current()
    if who is not None:
        return who
    _sign_in_page(cfg)
    st.stop()
    raise AssertionError("unreachable")


def _sign_in_page(cfg: AuthSettings) -> None:
    st.title("GPU Scheduler Console")
    notice = st.session_state.pop(NOTICE_KEY, None)
    if notice:
        st.info(notice, icon=":material/schedule:")
    if cfg.mode == "oidc":
        st.button("Sign in", type="primary", icon=":material/login:",
                  on_click=st.login, args=(cfg.oidc.provider or None,) if cfg.oidc.provider
                  else ())
        return
    with st.form("auth.sign_in"):
        name = st.text_input("Account", max_chars=MAX_NAME_CHARS)
        password = st.text_input("Password", type="password", max_chars=1024)
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        try:
            who = sign_in(name, password, client=client_address())
        except SignInRefused as exc:
            st.error(str(exc), icon=":material/lock:")
            return
        at = time.time()
        st.session_state[SESSION_KEY] = SignedIn(who, at, at + cfg.session_ttl_s)
        st.rerun()


def sidebar(who: Actor) -> None:
    """Who is signed in, and the sign-out; or the banner of a console without sign-in."""
    cfg = _settings()
    if cfg.mode == "none":
        st.warning("**No sign-in configured.** This console serves loopback only and every "
                   "visitor is the local approver. Configure `[auth]` to require sign-in.",
                   icon=":material/lock_open:")
        return
    st.caption(f"Signed in as **{who.name}** ({who.role.value}, {who.via})")
    held: SignedIn | None = st.session_state.get(SESSION_KEY)
    if held is not None:
        left = max(0, int((held.expires_at - time.time()) / 60))
        st.caption(f"Session ends in {left} min")
    st.button("Sign out", key="auth.sign_out", on_click=sign_out, icon=":material/logout:")


def main(argv: list[str] | None = None) -> int:
    """``python -m app.auth hash``: print a password hash for a new ``[auth.accounts]`` entry."""
    parser = argparse.ArgumentParser(prog="python -m app.auth")
    sub = parser.add_subparsers(dest="command", required=True)
    hashing = sub.add_parser("hash", help="print the password_hash of a new local account")
    hashing.add_argument("--stdin", action="store_true",
                         help="read the password from standard input (one line)")
    args = parser.parse_args(argv)
    if args.command == "hash":
        if args.stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass("Password: ")
            if getpass.getpass("Again: ") != password:
                print("The two passwords differ.", file=sys.stderr)
                return 2
        if len(password) < 8:
            print("Use at least 8 characters.", file=sys.stderr)
            return 2
        print(hash_password(password, salt=os.urandom(16)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

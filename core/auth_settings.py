"""How people sign in to the console (settings section ``[auth]``).

Why: SPEC §6 — OIDC through Streamlit's native login when configured, otherwise
local accounts with salted password hashes from the settings file; with neither,
the console serves on loopback only and every visitor is the local approver.

Invariants (a bad file is refused at start-up, naming the key):
- ``mode`` is ``none``, ``local`` or ``oidc``; ``local`` needs at least one account
  and every account a role and a password hash made by ``python -m app.auth hash``;
  accounts are never configured with ``mode = "none"`` (they would be ignored);
- an OIDC claim value maps to at most one role; a signed-in person whose claim maps
  to none gets ``default_role`` (empty: no access);
- account names are short, printable and case-folded (they are audit actors).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from core.auth import PasswordHash, Role, ThrottlePolicy, parse_role
from core.errors import ValidationError
from core.validate import integer, number

SECTION = "auth"
MODES = ("none", "local", "oidc")
KEYS = ("mode", "session_ttl_s", "max_failures", "max_client_failures", "failure_window_s",
        "lockout_s", "accounts", "oidc")
ACCOUNT_KEYS = ("role", "password_hash")
OIDC_KEYS = ("provider", "claim", "default_role", "roles")
_ACCOUNT = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
_CLAIM = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
MAX_ACCOUNTS = 1000
MAX_CLAIM_VALUES = 1000


@dataclass(frozen=True)
class Account:
    name: str
    role: Role
    password: PasswordHash


@dataclass(frozen=True)
class OidcSettings:
    """Streamlit's ``st.login(provider)`` (credentials live in ``.streamlit/secrets.toml``);
    the role comes from ``claim`` (for example ``groups`` or ``email``)."""

    provider: str = ""  # "" = the default [auth] provider of secrets.toml
    claim: str = "groups"
    default_role: Role | None = None
    roles: Mapping[str, Role] = field(default_factory=lambda: MappingProxyType({}))

    def role_for(self, claims: Mapping[str, Any]) -> Role | None:
        """The highest role any of the person's claim values maps to."""
        raw = claims.get(self.claim)
        values = raw if isinstance(raw, list | tuple) else [] if raw is None else [raw]
        found = [self.roles[v] for v in (str(x) for x in values[:MAX_CLAIM_VALUES])
                 if v in self.roles]
        order = list(Role)
        return max(found, key=order.index) if found else self.default_role


@dataclass(frozen=True)
class AuthSettings:
    mode: str = "none"
    session_ttl_s: float = 8 * 3600.0
    throttle: ThrottlePolicy = field(default_factory=ThrottlePolicy)
    accounts: Mapping[str, Account] = field(default_factory=lambda: MappingProxyType({}))
    oidc: OidcSettings = field(default_factory=OidcSettings)

    @property
    def sign_in_configured(self) -> bool:
        return self.mode != "none"

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> AuthSettings:
        if not isinstance(raw, Mapping):
            raise ValidationError(SECTION, "must be a table")
        _only(raw, KEYS, SECTION)
        mode = str(raw.get("mode", "none")).strip().lower()
        if mode not in MODES:
            raise ValidationError(f"{SECTION}.mode",
                                  f"{mode!r}: expected one of {', '.join(MODES)}")
        ttl = number(f"{SECTION}.session_ttl_s", raw.get("session_ttl_s", cls.session_ttl_s))
        if not 60 <= ttl <= 30 * 86400:
            raise ValidationError(f"{SECTION}.session_ttl_s", "must be within 60..2592000")
        default = ThrottlePolicy()
        throttle = ThrottlePolicy(
            max_failures=_whole(raw, "max_failures", default.max_failures, 1, 1000),
            max_client_failures=_whole(raw, "max_client_failures", default.max_client_failures,
                                       1, 100_000),
            window_s=_num(raw, "failure_window_s", default.window_s, 1, 86400),
            lockout_s=_num(raw, "lockout_s", default.lockout_s, 1, 7 * 86400))
        accounts = _accounts(raw.get("accounts", {}))
        if mode == "local" and not accounts:
            raise ValidationError(f"{SECTION}.accounts", "mode = \"local\" needs at least one "
                                  "account ([auth.accounts.<name>] role, password_hash)")
        if mode == "none" and accounts:
            raise ValidationError(f"{SECTION}.mode", "accounts are configured but mode is "
                                  "\"none\": set mode = \"local\" to use them")
        oidc = _oidc(raw.get("oidc", {}))
        return cls(mode=mode, session_ttl_s=ttl, throttle=throttle,
                   accounts=MappingProxyType(accounts), oidc=oidc)


def _only(table: Mapping[Any, Any], known: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in known:
            raise ValidationError(f"{where}.{str(key)[:64]}",
                                  f"unknown setting; expected one of {', '.join(known)}")


def _whole(raw: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = integer(f"{SECTION}.{key}", raw.get(key, default))
    if not lo <= value <= hi:
        raise ValidationError(f"{SECTION}.{key}", f"must be within {lo}..{hi}")
    return value


def _num(raw: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = number(f"{SECTION}.{key}", raw.get(key, default))
    if not lo <= value <= hi:
        raise ValidationError(f"{SECTION}.{key}", f"must be within {lo:g}..{hi:g}")
    return value


def _accounts(raw: Any) -> dict[str, Account]:
    where = f"{SECTION}.accounts"
    if not isinstance(raw, Mapping):
        raise ValidationError(where, "must be a table of accounts")
    if len(raw) > MAX_ACCOUNTS:
        raise ValidationError(where, f"at most {MAX_ACCOUNTS} accounts")
    out: dict[str, Account] = {}
    for name, spec in raw.items():
        key = str(name).strip().lower()
        if not _ACCOUNT.fullmatch(key):
            raise ValidationError(f"{where}.{str(name)[:64]}", "an account name is 1 to 64 of "
                                  "a-z 0-9 . _ @ - (starting with a letter or digit)")
        if key in out:
            raise ValidationError(f"{where}.{key}", "is configured twice (names ignore case)")
        if not isinstance(spec, Mapping):
            raise ValidationError(f"{where}.{key}", "must be a table with role and password_hash")
        _only(spec, ACCOUNT_KEYS, f"{where}.{key}")
        for needed in ACCOUNT_KEYS:
            if needed not in spec:
                raise ValidationError(f"{where}.{key}.{needed}", "is required")
        out[key] = Account(name=key, role=parse_role(spec["role"], field=f"{where}.{key}.role"),
                           password=PasswordHash.parse(spec["password_hash"],
                                                       field=f"{where}.{key}.password_hash"))
    return out


def _oidc(raw: Any) -> OidcSettings:
    where = f"{SECTION}.oidc"
    if not isinstance(raw, Mapping):
        raise ValidationError(where, "must be a table")
    _only(raw, OIDC_KEYS, where)
    provider = str(raw.get("provider", "")).strip()
    if provider and not _CLAIM.fullmatch(provider):
        raise ValidationError(f"{where}.provider", "must name a provider table of "
                              "[auth] in .streamlit/secrets.toml")
    claim = str(raw.get("claim", "groups")).strip()
    if not _CLAIM.fullmatch(claim):
        raise ValidationError(f"{where}.claim", "must be a claim name such as groups or email")
    default_raw = raw.get("default_role", "")
    default = parse_role(default_raw, field=f"{where}.default_role") if default_raw else None
    roles_raw = raw.get("roles", {})
    if not isinstance(roles_raw, Mapping):
        raise ValidationError(f"{where}.roles", "must map a role to a list of claim values")
    roles: dict[str, Role] = {}
    for role_name, values in roles_raw.items():
        role = parse_role(role_name, field=f"{where}.roles.{str(role_name)[:32]}")
        if isinstance(values, str) or not isinstance(values, list):
            raise ValidationError(f"{where}.roles.{role}", "must be a list of claim values")
        if len(values) > MAX_CLAIM_VALUES:
            raise ValidationError(f"{where}.roles.{role}", f"at most {MAX_CLAIM_VALUES} values")
        for value in values:
            text = str(value)
            if not 0 < len(text) <= 256:
                raise ValidationError(f"{where}.roles.{role}", "values are 1..256 characters")
            if text in roles and roles[text] is not role:
                raise ValidationError(f"{where}.roles.{role}", f"{text!r} already maps to "
                                      f"{roles[text].value}")
            roles[text] = role
    return OidcSettings(provider=provider, claim=claim, default_role=default,
                        roles=MappingProxyType(roles))

"""Who may do what in the console: roles, actors, password hashes and sign-in throttling.

Why: an approval means something only if it is known who pressed it and that they
were allowed to. Every human action is a service function that asks ``allows`` for
the signed-in ``Actor`` before it changes anything (``app.actions``); this module is
the one place that says which role is enough.

Invariants:
- roles are ordered: viewer < operator < approver; a role allows everything a lower
  one does (SPEC §6);
- a password hash is scrypt with a per-account random salt; verification compares in
  constant time, and an unknown account is checked against a dummy hash so a wrong
  name takes as long as a wrong password;
- throttling is a pure function of the failure times it is given (the store keeps
  them, so every console process sees the same lock-out).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from core.errors import SchedulerError, ValidationError


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    APPROVER = "approver"


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.APPROVER: 2}


def allows(role: Role, needed: Role) -> bool:
    """Whether ``role`` may do what needs ``needed``."""
    return _RANK[role] >= _RANK[needed]


def parse_role(value: object, *, field: str) -> Role:
    try:
        return Role(str(value).strip().lower())
    except ValueError:
        raise ValidationError(field, f"{value!r} is not a role; expected one of "
                                     f"{', '.join(r.value for r in Role)}") from None


@dataclass(frozen=True, slots=True)
class Actor:
    """Someone (or something) acting: the name recorded in the audit, the role checked."""

    name: str
    role: Role
    via: str  # how they are known: "local account", "OIDC", "no sign-in (loopback)", …


# With no sign-in configured the console serves on loopback only and every visitor is
# this approver (SPEC §6); the controller acts as itself.
LOCAL_APPROVER = Actor("local-approver", Role.APPROVER, "no sign-in configured (loopback only)")
CONTROLLER = Actor("controller", Role.APPROVER, "controller")


class Forbidden(SchedulerError):
    """An actor tried an action its role does not allow; nothing was changed."""

    def __init__(self, *, actor: Actor, action: str, needed: Role) -> None:
        self.actor, self.action, self.needed = actor, action, needed
        super().__init__(f"{actor.name} ({actor.role.value}) may not {action}: it needs the "
                         f"{needed.value} role")


# ---- password hashes: scrypt$<n>$<r>$<p>$<salt>$<key>, base64 without padding
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_KEY_BYTES = 32
MAX_PASSWORD_BYTES = 1024  # scrypt's cost grows with input; a sign-in form is no upload


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: str, *, salt: bytes, n: int, r: int, p: int,
            dklen: int = _KEY_BYTES) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=dklen,
                          maxmem=256 * 1024 * 1024)


def hash_password(password: str, *, salt: bytes) -> str:
    """The stored form of ``password`` (the caller supplies ≥ 16 random bytes of salt)."""
    if len(salt) < 16:
        raise ValidationError("salt", "needs at least 16 random bytes")
    if not password or len(password.encode()) > MAX_PASSWORD_BYTES:
        raise ValidationError("password", f"must be 1..{MAX_PASSWORD_BYTES} bytes")
    key = _scrypt(password, salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


@dataclass(frozen=True, slots=True)
class PasswordHash:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @classmethod
    def parse(cls, encoded: str, *, field: str) -> PasswordHash:
        parts = encoded.split("$") if isinstance(encoded, str) else []
        try:
            if len(parts) != 6 or parts[0] != "scrypt":
                raise ValueError
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, key = _unb64(parts[4]), _unb64(parts[5])
        except ValueError:
            raise ValidationError(field, "is not a password hash made by "
                                         "`python -m app.auth hash`") from None
        if not (2**10 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16
                and len(salt) >= 16 and 16 <= len(key) <= 64):
            raise ValidationError(field, "has scrypt parameters out of range")
        return cls(n, r, p, salt, key)

    def verify(self, password: str) -> bool:
        if not password or len(password.encode()) > MAX_PASSWORD_BYTES:
            return False
        got = _scrypt(password, salt=self.salt, n=self.n, r=self.r, p=self.p,
                      dklen=len(self.key))
        return hmac.compare_digest(got, self.key)


# Checked when the account does not exist, so a wrong name costs what a wrong password does.
DUMMY_HASH = PasswordHash(SCRYPT_N, SCRYPT_R, SCRYPT_P, b"\0" * 16, b"\0" * _KEY_BYTES)


# ---- throttling
@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """``max_failures`` within ``window_s`` lock the account (or the client) until
    ``lockout_s`` after the last of them."""

    max_failures: int = 5
    max_client_failures: int = 20
    window_s: float = 900.0
    lockout_s: float = 900.0


def locked_until(failures: Sequence[float], *, now: float, limit: int,
                 policy: ThrottlePolicy) -> float | None:
    """When the lock-out that ``failures`` (their times) cause ends; ``None``: not locked.

    Any ``limit`` failures within ``window_s`` of each other lock until ``lockout_s``
    after the last of them (a correct password does not lift a lock-out)."""
    times = sorted(t for t in failures if t <= now)
    until = None
    for i in range(limit - 1, len(times)):
        if times[i] - times[i - limit + 1] <= policy.window_s:
            end = times[i] + policy.lockout_s
            until = end if until is None else max(until, end)
    return until if until is not None and until > now else None
